"""pyinfra deploy: build the offline images once, on the controller's own
engine (`pyinfra -y @local tests/multihost/build_images.py` with an inventory
whose stack_root is a scratch build root). A no-op when they are current,
e.g. after `make test-full` built the same tags on the same engine.
"""

from pyinfra import host

from deploys import images
from govstack.facts import HostResourcesFact
from govstack.plan import StackPlan
from govstack.settings import settings_for_host

settings = settings_for_host(host)
plan = StackPlan(settings, host.get_fact(HostResourcesFact))
images.build_offline_images(plan)
