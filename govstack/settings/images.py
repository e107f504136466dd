"""``govstack.images``: the image lane and the versions it builds or pulls."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from govstack.settings.base import Section


class ImageSettings(Section):
    lane: Literal["offline", "upstream"] = Field(
        "offline", description="offline: build every image on the host; upstream: pinned official images"
    )
    debian_suite: str = "bookworm"
    debian_mirror: str = "http://deb.debian.org/debian"
    # CA certificates trusted by *build stages only* (TLS-intercepting networks).
    # None means: whatever the host has in /usr/local/share/ca-certificates.
    extra_ca_certs: tuple[str, ...] | None = Field(
        None, description="CA certs for build stages only; null = the host's /usr/local/share/ca-certificates/*.crt"
    )
    seaweedfs_version: str = "4.48"
    chroma_version: str = "1.5.9"
    build_timeout_s: int = Field(1800, ge=60)
    ship_from_controller: bool = Field(
        False,
        description="offline lane: load each host's images from the controller's engine over SSH "
        "(docker save | docker load, when the id differs) before building; see deploys/build_images.py",
    )
