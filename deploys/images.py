"""Images: the offline lane builds every one on the host; the upstream lane
uses pinned official images (pulled by Compose)."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import files

from govstack import catalog, images
from govstack.facts import ImageLabels
from govstack.images import CONTEXT_HASH_LABEL
from govstack.operations import base_image_built, files_mirrored, image_built
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
    files.put(
        name="Base rootfs build script",
        src=str(images.IMAGE_TEMPLATES / "base" / "build-rootfs.sh"),
        dest=script,
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
    # Their context-hash labels, read in one command before anything runs:
    # an image labelled with the hash of its inputs now is current.
    labels = host.get_fact(ImageLabels, images=tuple(sorted({image.tag for image in wanted})),
                           label=CONTEXT_HASH_LABEL)
    for image in wanted:
        build_offline_image(plan, image, base_tag, base_hash, built_with=labels.get(image.tag))
    if plan.has_role("app"):
        build_app_image(plan, plan.release.version)


def build_app_image(plan: StackPlan, version: str):
    """The app image of one version (offline lane: on the debootstrap base)."""
    s = plan.settings
    image = images.app_image(s, version)
    base_tag = images.base_image_tag(s)
    built_with = host.get_fact(ImageLabels, images=(image.tag,), label=CONTEXT_HASH_LABEL).get(image.tag)
    build_offline_image(
        plan, image, base_tag, images.base_context_hash(s), context_name="app", only_if_missing=True,
        built_with=built_with,
    )


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
    context_hash = images.context_hash(image.context, image.build_args, base_hash)
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
    image_built(
        name=f"Image {image.tag}",
        tag=image.tag,
        context_dir=context,
        context_hash=context_hash,
        dockerfile=image.dockerfile,
        build_args=image.docker_build_args(base_tag),
        timeout_s=s.images.build_timeout_s,
        only_if_missing=only_if_missing,
    )
