"""Entry point: `pyinfra -y inventories/local.py deploys/site.py`.

Builds the host's settings (validated before any operation runs), reads the
host's resources, and runs one small deploy per concern.
"""

from pyinfra import host, logger

from deploys import app, engine, images, stack
from govstack.backup import deploy as backup
from govstack.facts import HostResourcesFact
from govstack.plan import StackPlan
from govstack.release import ReleaseState, release_path
from govstack.settings import SettingsError, settings_for_host

try:
    settings = settings_for_host(host)
except SettingsError as error:
    logger.error(str(error))
    raise SystemExit(2) from None

plan = StackPlan(
    settings,
    host.get_fact(HostResourcesFact),
    recorded_release=host.get_fact(ReleaseState, path=release_path(settings)),
)

engine.install_docker_engine(plan)
if settings.images.lane == "offline":
    images.build_offline_images(plan)
stack.create_stack_directories(plan)
stack.ensure_secrets(plan)
stack.ensure_edge_certificate(plan)
stack.render_stack_files(plan)
if settings.backup.enabled:
    backup.prepare_backup(plan)
stack.apply_edge_config(plan)
stack.start_stack(plan)
app.ensure_app_database(plan)
if settings.backup.enabled:
    backup.ensure_backup_role(plan)
app.ensure_monitor_role(plan)
app.start_app_color(plan, plan.release.color, plan.release.version)
app.record_first_release(plan)
