"""Only the Docker engine: `pyinfra -y INVENTORY deploys/engine_only.py`.

`make test` runs it first, so the quick tier's promtool/amtool checks (run
in the offline Prometheus image) have an engine on a fresh machine too.
"""

from pyinfra import host, logger

from deploys import engine
from govstack.facts import HostResourcesFact
from govstack.plan import StackPlan
from govstack.settings import SettingsError, settings_for_host

try:
    settings = settings_for_host(host)
except SettingsError as error:
    logger.error(str(error))
    raise SystemExit(2) from None

engine.install_docker_engine(StackPlan(settings, host.get_fact(HostResourcesFact)))
