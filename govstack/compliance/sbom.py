"""What ``govstack report sbom [--image NAME] [--summary] [-o FILE]`` reads (the command is in
govstack/compliance/cli.py): the SBOMs of the images the stack's containers run, on each host.

Each image's SBOM is read from the image itself (govstack/sbom.py puts it there at build
time) without running anything in it: ``docker create`` makes a container that never
starts, ``docker cp`` copies the file out, the container is removed. The text is checked
against the sha256 the image is labelled with. Without ``--image`` the result is one
CycloneDX document holding every image (each a container component with its id,
build-inputs hash, base image id and the hosts that run it; an image without an SBOM is
there too, marked missing, and named on stderr); with ``--image`` it is that image's SBOM
byte for byte as stored. ``--summary`` prints ``image<TAB>type:name@version`` lines
instead. All of them are sorted and carry no timestamp: two releases diff line by line.
"""

from __future__ import annotations

import json

from govstack import sbom
from govstack.commands import q
from govstack.compliance.ops import ComplianceError, ComplianceHost
from govstack.release import COLORS


def stack_images(shell: ComplianceHost) -> dict[str, str]:
    """image id -> the image name its containers were made from, for every container of the
    host's stack (the data tier, the edge and monitoring, both app colors, stopped ones too)."""
    projects = [shell.settings.project, *(shell.plan.app_project(color) for color in COLORS)]
    listing = " ; ".join(f"docker ps -aq --filter label=com.docker.compose.project={q(p)}" for p in projects)
    fmt = "{{.Image}} {{.Config.Image}}"
    out = shell.out(f"{{ {listing} ; }} | xargs -r docker inspect --format {q(fmt)}", timeout=120)
    return dict(sorted(line.split(" ", 1) for line in out.splitlines() if line.strip()))


def collect(shell: ComplianceHost, only: str | None = None) -> list[tuple[str, str, dict, str | None]]:
    """(name, image id, labels, SBOM text or None when the image has none) of the stack's images."""
    if shell.settings.images.lane != "offline":
        raise ComplianceError(f"{shell.name}: SBOMs are made by the offline lane's builds; this inventory uses "
                              f"the {shell.settings.images.lane} lane (its official images publish their own)")
    running = stack_images(shell)
    if not running:
        raise ComplianceError(f"{shell.name}: no container of {shell.settings.project} exists (`govstack up`)")
    if only is not None:
        known = sorted(set(running.values()))
        running = {image_id: tag for image_id, tag in running.items() if tag == only}
        if not running:
            raise ComplianceError(f"{shell.name}: no container of the stack runs {only!r}; "
                                  f"the stack's images: {', '.join(known)}")
    found = []
    for image_id, tag in running.items():
        fmt = "{{json .Config.Labels}}"
        labels = json.loads(shell.out(f"docker image inspect --format {q(fmt)} {q(image_id)}", timeout=60)) or {}
        text = shell.out(sbom.read_command(image_id), timeout=120) if sbom.SBOM_SHA_LABEL in labels else None
        found.append((tag, image_id, labels, text or None))
    return found
