"""SBOMs of the offline images: made when an image is built, read back for auditors.

Every image the offline lane builds on a host gets, right after its own build,
a CycloneDX SBOM of its Debian and Python packages (jobs/sbom: dpkg-query and
cyclonedx-py in a stage of the SBOM tool image) at :data:`SBOM_PATH`, and the
labels :data:`SBOM_SHA_LABEL` (the SBOM file's sha256), :data:`BASE_ID_LABEL`
(the debootstrap base image's id) and the build-inputs hash
(``images.CONTEXT_HASH_LABEL``). The tag moves to the new image only once all of
that succeeded, and the build-inputs label is set last, so a build that stops
half-way is redone by the next deploy (never an image without its SBOM).

``govstack report sbom`` reads them back from each host's images, checks each
against its label, and writes one CycloneDX document whose images are nested
components, in a stable order and without timestamps (two releases diff line by
line), or one image's own SBOM as it is stored (``--image``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from govstack import images
from govstack.commands import q
from govstack.settings import Settings

SBOM_PATH = "/usr/share/govstack/sbom.cdx.json"
SBOM_SHA_LABEL = "org.govstack.sbom.sha256"
BASE_ID_LABEL = "org.govstack.base-image.id"
# The SBOM tool's version is cyclonedx-bom's, hash-pinned per version in jobs/sbom/requirements/.
CYCLONEDX_BOM_VERSION = "7.5.0"
TOOL_CONTEXT = images.REPO_ROOT / "jobs" / "sbom"
STAGE_DOCKERFILE = "Dockerfile.stage"
SPEC_VERSION = "1.6"


def sbom_tool_image(settings: Settings) -> images.OfflineImage:
    """The tool image, built on the base before every other offline image (a build stage only;
    the settings decide its base, hence its hash)."""
    return images.versioned("sbom", "sbom", CYCLONEDX_BOM_VERSION, TOOL_CONTEXT, "CYCLONEDX_BOM_VERSION",
                            needs_ca_certs=True)


def tool_context_hash(settings: Settings) -> str:
    tool = sbom_tool_image(settings)
    return images.context_hash(tool.context, tool.build_args, images.base_context_hash(settings))


def with_sbom(parent_hash: str, settings: Settings) -> str:
    """The parent hash of an image built with its SBOM: a new SBOM tool rebuilds every image."""
    return f"{parent_hash}+sbom-{tool_context_hash(settings)}"


def gets_sbom(settings: Settings, image: images.OfflineImage) -> bool:
    """Offline lane: every image built on the debootstrap base (directly or, the backup job,
    through postgres') gets its SBOM, except the tool itself."""
    return settings.images.lane == "offline" and image.service != "sbom"


def build_inputs_hash(settings: Settings, image: images.OfflineImage) -> str:
    """The build-inputs hash a deploy labels ``image`` with (its context, its build-args,
    the base's hash, and the SBOM tool's where the image gets an SBOM)."""
    base_hash = images.base_context_hash(settings)
    parent = with_sbom(base_hash, settings) if gets_sbom(settings, image) else base_hash
    return images.context_hash(image.context, image.build_args, parent)


@dataclass(frozen=True)
class SbomStage:
    """How one image gets its SBOM on the host: the tool's tag, the directory holding
    Dockerfile.stage (the tool's build context) and the base image whose id is labelled."""

    tool_tag: str
    stage_dir: str
    base_tag: str


def build_commands(*, tag: str, context_dir: str, dockerfile: str, build_args: dict[str, str],
                   context_hash: str, stage: SbomStage, components: tuple[str, ...] = (),
                   timeout_s: int = 1800) -> list[str]:
    """The shell commands (run in order, each must succeed) that build ``tag`` with its SBOM.

    1. the image's own build, by id only (``--iidfile``; the tag does not move yet);
    2. Dockerfile.stage on top of it: the SBOM at SBOM_PATH;
    3. the SBOM's sha256 (the file copied out of a container that never starts, see
       :func:`read_command`) and the base's id become labels, with the build-inputs hash, in a
       label-only build that finally tags the image.
    """
    log = f"{context_dir}.build.log"
    image_id = f"{context_dir}.iid"
    sbom_id = f"{context_dir}.sbom.iid"

    def failed(step: str) -> str:
        return (f'|| {{ echo "govstack: {step} of {tag} failed; last lines of {log}:" >&2; '
                f"tail -n 15 {q(log)} >&2; exit 1; }}")

    args = " ".join(f"--build-arg {q(f'{key}={value}')}" for key, value in sorted(build_args.items()))
    stage_args = {"SBOM_TOOL": stage.tool_tag, "IMAGE_NAME": tag, "COMPONENTS": " ".join(components)}
    stage_flags = " ".join(f"--build-arg {q(f'{key}={value}')}" for key, value in sorted(stage_args.items()))
    sbom_file = f"{context_dir}.sbom.cdx.json"
    return [
        f"rm -f {q(image_id)} {q(sbom_id)} && "
        f"timeout {timeout_s} docker build -q --iidfile {q(image_id)} "
        f"-f {q(context_dir + '/' + dockerfile)} {args} {q(context_dir)} >{q(log)} 2>&1 {failed('the image build')}",
        f"timeout {timeout_s} docker build -q --iidfile {q(sbom_id)} -f {q(stage.stage_dir + '/' + STAGE_DOCKERFILE)} "
        f"--build-arg IMAGE=\"$(cat {q(image_id)})\" {stage_flags} {q(stage.stage_dir)} >>{q(log)} 2>&1 "
        f"{failed('the SBOM stage')}",
        f"{{ {read_command(f'$(cat {q(sbom_id)})', quote=False)} ; }} >{q(sbom_file)} && test -s {q(sbom_file)} "
        f"&& sha=$(sha256sum <{q(sbom_file)} | cut -d' ' -f1) "
        f"&& base=$(docker image inspect -f '{{{{.Id}}}}' {q(stage.base_tag)}) "
        f"&& printf 'FROM %s\\n' \"$(cat {q(sbom_id)})\" | docker build -q "
        f"--label {SBOM_SHA_LABEL}=$sha --label {BASE_ID_LABEL}=$base "
        f"--label {images.CONTEXT_HASH_LABEL}={context_hash} -t {q(tag)} - >>{q(log)} 2>&1 "
        f"{failed('labelling')}",
    ]


def read_command(image: str, quote: bool = True) -> str:
    """The SBOM file of an image on stdout, copied out of a container that is created and never
    started (nothing runs in the image; ``-v``: the anonymous volumes its VOLUMEs made go with
    it); no output when the image has no such file.
    ``quote=False``: ``image`` is already a shell expression (``"$(cat FILE)"``)."""
    ref = q(image) if quote else f'"{image}"'
    return (f"cid=$(docker create --network none --log-driver none {ref}) && "
            f"{{ docker cp \"$cid:{SBOM_PATH}\" - 2>/dev/null | tar -xO 2>/dev/null; "
            f"docker rm -f -v \"$cid\" >/dev/null; }}")


# == reading them back (govstack report sbom) ====================================================

class SbomError(RuntimeError):
    pass


def checked_sbom(tag: str, labels: dict[str, str] | None, text: str) -> dict[str, Any]:
    """The SBOM of ``tag``, refused when it does not match the sha256 its image is labelled with."""
    expected = (labels or {}).get(SBOM_SHA_LABEL)
    if not expected:
        raise SbomError(f"{tag} has no {SBOM_SHA_LABEL} label (not built by this version of the deploy)")
    actual = hashlib.sha256(text.encode()).hexdigest()
    if actual != expected:
        raise SbomError(f"{tag}: the SBOM in the image (sha256 {actual[:12]}…) is not the one it is "
                        f"labelled with ({expected[:12]}…)")
    return json.loads(text)


@dataclass
class ImageSbom:
    tag: str
    image_id: str
    labels: dict[str, str]
    sbom: dict[str, Any]
    hosts: list[str]


def _prefixed(items: list[dict], prefix: str) -> list[dict]:
    """Components with bom-refs made unique in a document of several images."""
    out = []
    for item in items:
        item = dict(item)
        if "bom-ref" in item:
            item["bom-ref"] = f"{prefix}#{item['bom-ref']}"
        out.append(item)
    return out


def combined_document(project: str, collected: list[ImageSbom],
                      missing: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """One CycloneDX document: each image a container component (its id, labels and hosts as
    properties) holding its SBOM's components; an image without an SBOM (``missing``: name ->
    hosts) is a container component marked so; sorted, no timestamps."""
    tags = [entry.tag for entry in collected]
    components, dependencies = [], []
    for tag, hosts in sorted((missing or {}).items()):
        name, _, version = tag.rpartition(":")
        components.append({
            "type": "container", "bom-ref": f"{tag}@missing", "name": name, "version": version,
            "properties": [{"name": "govstack:hosts", "value": " ".join(sorted(hosts))},
                           {"name": "govstack:sbom", "value": "missing"}],
        })
    for entry in sorted(collected, key=lambda e: (e.tag, e.image_id)):
        ref = entry.tag if tags.count(entry.tag) == 1 else f"{entry.tag}@{entry.image_id}"
        name, _, version = entry.tag.rpartition(":")
        properties = [
            {"name": "govstack:image-id", "value": entry.image_id},
            {"name": "govstack:hosts", "value": " ".join(sorted(entry.hosts))},
            {"name": "govstack:build-inputs-hash", "value": entry.labels.get(images.CONTEXT_HASH_LABEL, "")},
            {"name": "govstack:base-image-id", "value": entry.labels.get(BASE_ID_LABEL, "")},
            {"name": "govstack:sbom-sha256", "value": entry.labels.get(SBOM_SHA_LABEL, "")},
        ]
        components.append({
            "type": "container", "bom-ref": ref, "name": name, "version": version,
            "properties": properties,
            "components": _prefixed(entry.sbom.get("components", []), ref),
        })
        for dependency in entry.sbom.get("dependencies", []):
            item = {"ref": f"{ref}#{dependency['ref']}"}
            if dependency.get("dependsOn"):
                item["dependsOn"] = [f"{ref}#{d}" for d in dependency["dependsOn"]]
            dependencies.append(item)
    return {
        "$schema": f"http://cyclonedx.org/schema/bom-{SPEC_VERSION}.schema.json",
        "bomFormat": "CycloneDX",
        "specVersion": SPEC_VERSION,
        "version": 1,
        "metadata": {
            "component": {"type": "platform", "bom-ref": project, "name": project},
            "properties": [{"name": "cdx:reproducible", "value": "true"}],
        },
        "components": sorted(components, key=lambda c: c["bom-ref"]),
        "dependencies": dependencies,
    }


def summary(collected: list[ImageSbom], missing: list[str] = ()) -> str:
    """``image<TAB>type:name@version`` lines (the purl's type; Python packages also name their
    environment), sorted: what changed between two releases, for a plain diff."""
    lines = set()
    for entry in collected:
        for component in entry.sbom.get("components", []):
            purl = component.get("purl", "")
            kind = purl[4:].split("/", 1)[0] if purl.startswith("pkg:") else component.get("type", "?")
            where = next((p["value"] for p in component.get("properties", [])
                          if p["name"] == "govstack:python-environment"), "")
            lines.add(f"{entry.tag}\t{kind}:{component['name']}@{component.get('version', '')}"
                      + (f"\t{where}" if where else ""))
    lines.update(f"{tag}\t(no SBOM)" for tag in missing)
    return "".join(f"{line}\n" for line in sorted(lines))


def dumps(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
