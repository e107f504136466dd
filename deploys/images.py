"""Images: the offline lane builds every one on the host; the upstream lane
uses pinned official images (pulled by Compose)."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import files

from govstack import catalog, images, sbom
from govstack.facts import ImageLabels
from govstack.images import CONTEXT_HASH_LABEL
from govstack.operations import base_image_built, files_mirrored, files_rendered, image_built
from govstack.plan import StackPlan

HOST_CA_CERTS = "/usr/local/share/ca-certificates/*.crt"


def _ca_cert_pattern(plan: StackPlan) -> str:
    extra = plan.settings.images.extra_ca_certs
    return HOST_CA_CERTS if extra is None else " ".join(extra) or "/nonexistent"


@deploy("Offline images")
def build_offline_images(plan: StackPlan):
    s = plan.settings
    build_dir = s.build_dir
    files.directory(name="Build directory", path=build_dir, mode="700")

    base_tag = images.base_image_tag(s)
    base_hash = images.base_context_hash(s)
    script = f"{build_dir}/build-rootfs.sh"
    files_rendered(
        name="Base rootfs build script",
        files={script: (images.IMAGE_TEMPLATES / "base" / "build-rootfs.sh").read_text()},
        mode="755",
    )
    base_image_built(
        name=f"Base image {base_tag} (debootstrap {s.images.debian_suite}, slim)",
        tag=base_tag,
        context_hash=base_hash,
        script=script,
        suite=s.images.debian_suite,
        mirror=s.images.debian_mirror,
    )

    # Only what this host's part of the stack runs (in a split inventory the
    # others were built once and shipped, or are built where they run).
    wanted = list(catalog.offline_builds(s, plan.services))
    # The SBOM tool first: every other image built here gets its SBOM in a stage of it.
    tool = [sbom.sbom_tool_image(s)] if s.images.lane == "offline" else []
    # Their context-hash labels, read in one command before anything runs:
    # an image labelled with the hash of its inputs now is current.
    labels = host.get_fact(ImageLabels, images=tuple(sorted({image.tag for image in tool + wanted})),
                           label=CONTEXT_HASH_LABEL)
    for image in tool + wanted:
        build_offline_image(plan, image, base_tag, base_hash, built_with=labels.get(image.tag))
    if plan.has_role("app"):
        build_app_image(plan, plan.release.version, tool_checked=True)


def build_app_image(plan: StackPlan, version: str, tool_checked: bool = False):
    """The app image of one version (offline lane: on the debootstrap base, with its SBOM;
    the SBOM tool is built first unless ``tool_checked``)."""
    s = plan.settings
    image = images.app_image(s, version)
    base_tag = images.base_image_tag(s)
    tags = (image.tag,) if tool_checked or s.images.lane != "offline" else (image.tag, sbom.sbom_tool_image(s).tag)
    labels = host.get_fact(ImageLabels, images=tags, label=CONTEXT_HASH_LABEL)
    if image.tag not in labels and len(tags) > 1:
        tool = sbom.sbom_tool_image(s)
        build_offline_image(plan, tool, base_tag, images.base_context_hash(s), built_with=labels.get(tool.tag))
    build_offline_image(
        plan, image, base_tag, images.base_context_hash(s), context_name="app", only_if_missing=True,
        built_with=labels.get(image.tag),
    )


def sbom_stage(plan: StackPlan, image: images.OfflineImage, base_tag: str) -> sbom.SbomStage | None:
    """How ``image`` gets its SBOM here (None: it gets none: the upstream lane, the tool itself)."""
    s = plan.settings
    if not sbom.gets_sbom(s, image):
        return None
    return sbom.SbomStage(tool_tag=sbom.sbom_tool_image(s).tag, stage_dir=f"{s.build_dir}/sbom-stage",
                          base_tag=base_tag)


def build_offline_image(
    plan: StackPlan,
    image: images.OfflineImage,
    base_tag: str,
    base_hash: str,
    context_name: str | None = None,
    only_if_missing: bool = False,
    built_with: str | None = None,
):
    """``built_with``: the context-hash label the image has now (None: absent).
    An image built from the inputs it would be built from now, or an
    immutable version's tag that exists (``only_if_missing``: that version,
    whatever built it), is left alone without mirroring its build context:
    syncing thirteen contexts file by file was most of a no-op `up`."""
    s = plan.settings
    context = f"{s.build_dir}/{context_name or image.service}"
    stage = sbom_stage(plan, image, base_tag)
    context_hash = images.context_hash(image.context, image.build_args,
                                       sbom.with_sbom(base_hash, s) if stage else base_hash)
    if built_with == context_hash or (only_if_missing and built_with is not None):
        return
    files.sync(
        name=f"Build context of {image.tag}",
        src=str(image.context),
        dest=context,
        delete=True,
        # certs/ is filled on the host (below); keep sync from deleting it.
        exclude=[f"{context}/certs/*", "*.pyc"],
        exclude_dir=["certs", "__pycache__", "*/__pycache__", "*.egg-info"],
    )
    # Build stages that run pip must trust this site's TLS interception
    # certificates; the final stages never copy them.
    files_mirrored(
        name=f"Extra CA certificates for {image.tag} build stages",
        source_pattern=_ca_cert_pattern(plan) if image.needs_ca_certs else "/nonexistent/*",
        dest_dir=f"{context}/certs",
    )
    if stage is not None:
        # Its own context: the stage's Dockerfile only (the tool image is current, or was built above).
        files.directory(name="SBOM stage context", path=stage.stage_dir, mode="700")
        files.put(
            name="SBOM stage Dockerfile",
            src=str(sbom.TOOL_CONTEXT / sbom.STAGE_DOCKERFILE),
            dest=f"{stage.stage_dir}/{sbom.STAGE_DOCKERFILE}",
            mode="644",
        )
    image_built(
        name=f"Image {image.tag}" + (" with its SBOM" if stage else ""),
        tag=image.tag,
        context_dir=context,
        context_hash=context_hash,
        dockerfile=image.dockerfile,
        build_args=image.docker_build_args(base_tag),
        timeout_s=s.images.build_timeout_s,
        only_if_missing=only_if_missing,
        sbom=stage,
        sbom_components=image.sbom_components,
    )
