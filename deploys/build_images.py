"""Build the offline images once, on the controller's own engine, for
`images.ship_from_controller` (hosts then load them over SSH and need no
mirror, registry or internet access):

    pyinfra -y inventories/controller.py deploys/build_images.py

with an inventory of the controller alone and a scratch build root, e.g.
``controller = [("@local", {"govstack": {"stack_root": "/var/lib/govstack-build"}})]``
and the same image settings (lane, versions) as the site. A no-op when the
images are current.
"""

from pyinfra import host

from deploys import images
from govstack.facts import HostResourcesFact
from govstack.plan import StackPlan
from govstack.settings import settings_for_host

settings = settings_for_host(host)
plan = StackPlan(settings, host.get_fact(HostResourcesFact))
images.build_offline_images(plan)
