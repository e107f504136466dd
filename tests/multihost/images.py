"""Which images each test host gets from the controller (built once there)."""

from __future__ import annotations

from govstack import catalog, images
from govstack.settings import Settings


def all_in_one_images(settings: Settings, app_version: str) -> list[str]:
    """Every offline image of the all-in-one stack (what deploys/images.py builds)."""
    tags = [images.base_image_tag(settings)]
    # The backup job's image is not among them (built where it runs).
    tags += [image.tag for image in catalog.offline_builds(settings) if image.service != "backup"]
    tags.append(images.app_image(settings, app_version).tag)
    return tags


def images_for_groups(settings: Settings, groups: tuple[str, ...], app_version: str) -> list[str]:
    """What the deploy ships a host of these groups (StackPlan.host_images)."""
    from govstack.plan import StackPlan
    from govstack.release import Release
    from govstack.roles import ROLES, Member, Topology, roles_of
    from govstack.tuning import HostResources

    # Any split topology: the images depend on this host's roles only.
    topology = Topology(tuple(Member(role, frozenset({role}), "10.0.0.1") for role in ROLES))
    plan = StackPlan(settings, HostResources(4096, 2, None), recorded_release=Release("blue", app_version),
                     roles=roles_of(groups), topology=topology, address="10.0.0.1")
    return plan.host_images
