"""Ship images built once on the controller's engine to hosts over SSH
(``docker save`` → upload → ``docker load``), only those whose id differs.

An image id is the digest of the image's config, which names every layer,
so equal ids mean equal content; ``docker save``/``docker load`` keep it.
Hosts need no registry and no internet access.

    images_shipped(
        name="Images from the controller",
        images=("govstack/base:bookworm", "govstack/postgres:15", ...),
    )

Put it after the engine is running and before the offline builds: a shipped
image carries its ``org.govstack.context-hash`` label, so ``image_built``
then finds it current and builds nothing.
"""

from __future__ import annotations

import hashlib
import io
import shlex
import subprocess

from pyinfra import host
from pyinfra.api import FileUploadCommand, OperationError, operation

from govstack.facts import ImageIds

# On the host: a disk-backed directory (/tmp may be a small tmpfs).
REMOTE_DIR = "/var/tmp"
ARCHIVE_PREFIX = "govstack-ship-"


def local_image_ids(images: tuple[str, ...] | list[str]) -> dict[str, str | None]:
    """Image reference -> id on the controller's engine (DOCKER_HOST is honoured), None when absent."""
    ids: dict[str, str | None] = {}
    for image in images:
        result = subprocess.run(
            ["docker", "image", "inspect", "--format", "{{.Id}}", image],
            capture_output=True, text=True, timeout=60,
        )
        ids[image] = result.stdout.strip() if result.returncode == 0 and result.stdout.strip() else None
    return ids


def images_to_ship(wanted: dict[str, str], on_host: dict[str, str | None]) -> list[str]:
    """The references whose id on the host differs from the controller's, in a stable order."""
    return sorted(image for image, image_id in wanted.items() if on_host.get(image) != image_id)


def archive_digest(wanted: dict[str, str], images: list[str]) -> str:
    return hashlib.sha256("\n".join(f"{image}={wanted[image]}" for image in images).encode()).hexdigest()[:16]


class DockerSaveStream(io.RawIOBase):
    """``docker save IMAGES`` on the controller as a readable stream.

    Started on the first read, so building the operation (``--dry``, change
    detection) never runs it, and the upload overlaps the save: no archive
    is written on the controller. Not seekable except to the start before
    reading (pyinfra rewinds every upload source), so a retried upload fails
    loudly instead of sending half an archive.
    """

    def __init__(self, images: list[str], timeout_s: int):
        super().__init__()
        self.images = images
        self.timeout_s = timeout_s
        self._proc: subprocess.Popen | None = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if offset == 0 and whence == io.SEEK_SET and self._proc is None:
            return 0
        raise OSError("govstack: an image archive stream cannot be rewound; run the deploy again")

    def _start(self) -> subprocess.Popen:
        if self._proc is None:
            self._proc = subprocess.Popen(
                ["timeout", str(self.timeout_s), "docker", "save", *self.images],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )
        return self._proc

    def read(self, size: int = -1) -> bytes:
        proc = self._start()
        assert proc.stdout is not None and proc.stderr is not None
        data = proc.stdout.read(size) if size and size > 0 else proc.stdout.read()
        if not data:
            code = proc.wait()
            if code != 0:
                last = (proc.stderr.read().decode(errors="replace").strip().splitlines() or [f"exit {code}"])[-1]
                raise OSError(f"govstack: docker save on the controller failed: {last}")
        return data

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        super().close()


@operation()
def images_shipped(images: tuple[str, ...] | list[str], timeout_s: int = 1800):
    """
    Copy images from the controller's Docker engine to the host's engine.

    + images: image references (tags); each must exist on the controller
    + timeout_s: limit for ``docker save`` on the controller and ``docker load``
      on the host

    The host's image ids are read first (a fact); only images whose id
    differs are saved, as one archive (shared layers once), streamed from
    ``docker save`` over the host's own connection (SFTP for SSH hosts) to a
    file on the host, loaded, checked by id and removed. A re-run is a no-op.
    """
    images = tuple(images)
    if not images:
        host.noop("no images to ship")
        return
    wanted_or_absent = local_image_ids(images)
    missing = [image for image, image_id in wanted_or_absent.items() if image_id is None]
    if missing:
        raise OperationError(
            f"govstack: image {missing[0]} is not on the controller's engine; build it there first"
        )
    wanted = {image: image_id for image, image_id in wanted_or_absent.items() if image_id}
    on_host = host.get_fact(ImageIds, images=images)
    to_ship = images_to_ship(wanted, on_host)
    if not to_ship:
        host.noop(f"{len(images)} images are present with the controller's ids")
        return

    remote = f"{REMOTE_DIR}/{ARCHIVE_PREFIX}{archive_digest(wanted, to_ship)}.tar"
    checks = " && ".join(
        f"test \"$(docker image inspect --format '{{{{.Id}}}}' {shlex.quote(image)})\" = {wanted[image]}"
        for image in to_ship
    )
    # Archives a failed upload left behind.
    yield f"rm -f {REMOTE_DIR}/{ARCHIVE_PREFIX}*.tar {REMOTE_DIR}/{ARCHIVE_PREFIX}*.tar.err"
    yield FileUploadCommand(DockerSaveStream(to_ship, timeout_s), remote)
    yield (
        f"timeout {timeout_s} docker load -q -i {remote} >/dev/null 2>{remote}.err; rc=$?; rm -f {remote}; "
        f"if [ $rc -ne 0 ]; then echo \"govstack: docker load failed: $(tail -n 1 {remote}.err)\" >&2; "
        f"rm -f {remote}.err; exit 1; fi; rm -f {remote}.err; "
        f"{checks} || {{ echo 'govstack: a shipped image has another id on the host than on the controller' >&2; "
        "exit 1; }"
    )
