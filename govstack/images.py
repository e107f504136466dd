"""Which image each service runs, per lane, and how offline images are built.

One place per image tag. The offline lane builds every image on the target
host from the debootstrap base (no registry); the upstream lane pins official
images. The app image is built from `app/` in both lanes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from govstack.settings import Settings

REPO_ROOT = Path(__file__).resolve().parent.parent
IMAGE_TEMPLATES = REPO_ROOT / "templates" / "images"
APP_DIR = REPO_ROOT / "app"

UPSTREAM_IMAGES = {
    "postgres": "postgres:17.6-bookworm",
    "seaweedfs": "chrislusf/seaweedfs:{seaweedfs_version}",
    "chroma": "chromadb/chroma:{chroma_version}",
    "nginx": "nginx:1.28.0",
}


@dataclass(frozen=True)
class OfflineImage:
    """An image the offline lane builds on the host."""

    service: str
    tag: str
    context: Path
    dockerfile: str = "Dockerfile"
    build_args: dict[str, str] = field(default_factory=dict)
    # Needs pip in a build stage, hence the host's extra CA certificates.
    needs_ca_certs: bool = False


def base_image_tag(settings: Settings) -> str:
    return f"govstack/base:{settings.images.debian_suite}"


def offline_images(settings: Settings) -> list[OfflineImage]:
    """Build order matters only in that all depend on the base image."""
    cfg = settings.images
    return [
        OfflineImage("postgres", "govstack/postgres:15", IMAGE_TEMPLATES / "postgres"),
        OfflineImage(
            "seaweedfs",
            f"govstack/seaweedfs:{cfg.seaweedfs_version}",
            IMAGE_TEMPLATES / "seaweedfs",
            build_args={"SEAWEEDFS_VERSION": cfg.seaweedfs_version},
            needs_ca_certs=True,
        ),
        OfflineImage(
            "chroma",
            f"govstack/chroma:{cfg.chroma_version}",
            IMAGE_TEMPLATES / "chroma",
            build_args={"CHROMA_VERSION": cfg.chroma_version},
            needs_ca_certs=True,
        ),
        OfflineImage("nginx", "govstack/nginx:1.22", IMAGE_TEMPLATES / "nginx"),
    ]


def app_image(settings: Settings, version: str) -> OfflineImage:
    """The app image of one version; built from app/ in both lanes."""
    lane = settings.images.lane
    return OfflineImage(
        "app",
        f"govstack/app:{version}",
        APP_DIR,
        dockerfile=f"Dockerfile.{lane}",
        needs_ca_certs=True,
    )


def service_image(settings: Settings, service: str) -> str:
    if settings.images.lane == "upstream":
        return UPSTREAM_IMAGES[service].format(**settings.images.model_dump())
    for image in offline_images(settings):
        if image.service == service:
            return image.tag
    raise KeyError(service)


# Never part of a build context: caches, packaging leftovers, the host's certs.
EXCLUDED_PARTS = {"__pycache__", "certs", ".pytest_cache"}


def context_files(context: Path) -> list[Path]:
    """Files of a build context, in a stable order (certs/ is added on the host)."""
    return sorted(
        path
        for path in context.rglob("*")
        if path.is_file()
        and not EXCLUDED_PARTS.intersection(path.relative_to(context).parts)
        and not any(part.endswith(".egg-info") for part in path.parts)
        and path.suffix != ".pyc"
    )


def context_hash(context: Path, build_args: dict[str, str], parent_hash: str) -> str:
    """Digest of everything that decides an image's content."""
    digest = hashlib.sha256()
    digest.update(parent_hash.encode())
    for key in sorted(build_args):
        digest.update(f"\0arg {key}={build_args[key]}".encode())
    for path in context_files(context):
        digest.update(f"\0file {path.relative_to(context).as_posix()}\0".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:24]


def base_context_hash(settings: Settings) -> str:
    script = IMAGE_TEMPLATES / "base" / "build-rootfs.sh"
    digest = hashlib.sha256(script.read_bytes())
    digest.update(f"{settings.images.debian_suite} {settings.images.debian_mirror}".encode())
    return digest.hexdigest()[:24]
