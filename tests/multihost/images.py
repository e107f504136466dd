"""Which images each test host gets from the controller (built once there)."""

from __future__ import annotations

from govstack import images, monitoring
from govstack.settings import Settings

# The images a host of each group needs (the services govstack.plan gives
# each role in a split inventory). The base image goes everywhere (app releases and
# any image the deploy still builds on the host start from it).
GROUP_SERVICES = {
    "edge": ("nginx",),
    "app": (),
    "data": ("postgres", "seaweedfs", "chroma"),
    "monitoring": tuple(monitoring.MONITORING_IMAGES),
}


def all_in_one_images(settings: Settings, app_version: str) -> list[str]:
    """Every offline image of the all-in-one stack (what deploys/images.py builds)."""
    tags = [images.base_image_tag(settings)]
    tags += [image.tag for image in images.offline_images(settings)]
    if settings.monitoring.enabled:
        tags += [image.tag for image in monitoring.offline_images()]
    tags.append(images.app_image(settings, app_version).tag)
    return tags


def images_for_groups(settings: Settings, groups: tuple[str, ...], app_version: str) -> list[str]:
    offline = {image.service: image.tag for image in images.offline_images(settings)}
    offline.update({image.service: image.tag for image in monitoring.offline_images()})
    tags = [images.base_image_tag(settings)]
    for group in groups:
        tags += [offline[service] for service in GROUP_SERVICES.get(group, ())]
    if "data" in groups and settings.backup.enabled:
        from govstack.backup.plan import backup_image

        tags.append(backup_image(settings).tag)
    if "app" in groups:
        tags.append(images.app_image(settings, app_version).tag)
    return sorted(set(tags), key=tags.index)
