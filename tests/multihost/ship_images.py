"""pyinfra deploy of the multi-host lane: start each host's engine (the real
engine deploy) and ship the images it needs from the controller's engine.

`pyinfra -y INVENTORY tests/multihost/ship_images.py`; each host's image list
is its host data ``multihost_images`` (the harness writes it), else every
image of the all-in-one stack.
"""

from pyinfra import host

from deploys import engine
from govstack.facts import HostResourcesFact
from govstack.plan import StackPlan
from govstack.release import ReleaseState, release_path
from govstack.settings import settings_for_host
from govstack.shipping import images_shipped
from tests.multihost.images import all_in_one_images

settings = settings_for_host(host)
plan = StackPlan(
    settings,
    host.get_fact(HostResourcesFact),
    recorded_release=host.get_fact(ReleaseState, path=release_path(settings)),
)
engine.install_docker_engine(plan)
wanted = host.data.get("multihost_images") or all_in_one_images(settings, plan.release.version)
images_shipped(name=f"{len(wanted)} images from the controller's engine", images=wanted)
