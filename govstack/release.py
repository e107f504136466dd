"""Which app color serves and which version it runs, as recorded on the host.

``<stack_root>/state/release.json`` is the source of truth for the serving
release; blue/green deploys and rollbacks rewrite it after the switch, and
`govstack up` keeps whatever it names running.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Literal

from pyinfra.api import FactBase

from govstack import images
from govstack.settings import Settings

Color = Literal["blue", "green"]
COLORS: tuple[Color, Color] = ("blue", "green")


@dataclass(frozen=True)
class Release:
    color: Color
    version: str
    # What served before this release: where `govstack rollback` goes.
    previous: Release | None = None
    # The settings it was deployed with (Settings.config_hash): a rollback
    # restarts its kept containers only under the same settings.
    config_hash: str | None = None

    def without_previous(self) -> Release:
        return Release(self.color, self.version, config_hash=self.config_hash)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict) -> Release:
        previous = data.get("previous")
        return cls(
            color=data["color"],
            version=data["version"],
            previous=cls.from_dict(previous) if previous else None,
            config_hash=data.get("config_hash"),
        )


def other_color(color: Color) -> Color:
    return "green" if color == "blue" else "blue"


def source_version() -> str:
    """The version of the app source in this checkout: its content hash."""
    return "src-" + images.context_hash(images.APP_DIR, {}, "")[:12]


def first_release(settings: Settings) -> Release:
    return Release(color="blue", version=settings.app.version or source_version(),
                   config_hash=settings.config_hash())


def release_path(settings: Settings) -> str:
    return settings.paths.release_file


class ReleaseState(FactBase):
    """The release recorded on the host, None before the first deploy."""

    def command(self, path: str) -> str:
        return f"cat {path} 2>/dev/null || echo null"

    def process(self, output):
        data = json.loads("".join(output) or "null")
        return Release.from_dict(data) if data else None


def kept_color_unusable(target, settings: Settings, project: str, compose_file: str, image: str,
                        release: Release) -> str | None:
    """Why the containers a release left of ``release``'s color (stopped, for
    a rollback) cannot simply be started again on ``target``; None when they can.

    They can when ``release`` was recorded under the settings in force now,
    the color's api and worker containers still exist, each made from the
    compose file on the host as it is (Compose's config-hash label), and from
    the image ``image`` names now."""
    from govstack.facts import ComposeProject, ContainerImageIds, ImageIds

    if release.config_hash is None:
        return f"the record of {release.version} names no settings hash (recorded by an older govstack)"
    if release.config_hash != settings.config_hash():
        return f"the settings changed since {release.version} served"
    state = target.get_fact(ComposeProject, project=project, compose_file=compose_file)
    if state["desired"] is None:
        return f"the compose file {compose_file} is gone or invalid"
    image_id = target.get_fact(ImageIds, images=(image,))[image]
    if image_id is None:
        return f"the image {image} is gone"
    containers = {c["service"]: c for c in state["containers"]}
    made_from = target.get_fact(ContainerImageIds, container_ids=tuple(sorted(c["id"] for c in containers.values())))
    for service in KEPT_SERVICES:
        container = containers.get(service)
        if container is None:
            return f"the {service} container of {project} was removed"
        if container["image"] != image:
            return f"the {service} container of {project} runs {container['image']}, not {image}"
        if container["config_hash"] != state["desired"].get(service):
            return f"the {service} container of {project} was made from another definition"
        if made_from.get(container["id"]) != image_id:
            return f"the {service} container of {project} was made from another image than {image}"
    return None


# The long-running services of a color, which a release stops and keeps.
KEPT_SERVICES = ("api", "worker")
