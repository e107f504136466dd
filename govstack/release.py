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

    def without_previous(self) -> Release:
        return Release(self.color, self.version)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict) -> Release:
        previous = data.get("previous")
        return cls(
            color=data["color"],
            version=data["version"],
            previous=cls.from_dict(previous) if previous else None,
        )


def other_color(color: Color) -> Color:
    return "green" if color == "blue" else "blue"


def source_version() -> str:
    """The version of the app source in this checkout: its content hash."""
    return "src-" + images.context_hash(images.APP_DIR, {}, "")[:12]


def first_release(settings: Settings) -> Release:
    return Release(color="blue", version=settings.app.version or source_version())


def release_path(settings: Settings) -> str:
    return settings.paths.release_file


class ReleaseState(FactBase):
    """The release recorded on the host, None before the first deploy."""

    def command(self, path: str) -> str:
        return f"cat {path} 2>/dev/null || echo null"

    def process(self, output):
        data = json.loads("".join(output) or "null")
        return Release.from_dict(data) if data else None
