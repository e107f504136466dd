"""Entry point: `pyinfra -y inventories/local.py deploys/site.py`.

Builds the host's settings (validated before any operation runs), reads the
host's resources, and runs one small deploy per concern.
"""

from pyinfra import host, inventory, logger

from deploys import app, engine, images, stack
from govstack import faults, gate, secret_store
from govstack.backup import deploy as backup
from govstack.catalog import require_wheel_locks
from govstack.facts import DockerAppArmor, HostResourcesFact
from govstack.monitoring import deploy as monitoring
from govstack.plan import StackPlan
from govstack.release import ReleaseState, release_path
from govstack.role_operations import all_hosts_reached, published_ports_firewalled
from govstack.roles import TopologyError, is_first_app_host, plan_fields
from govstack.settings import SettingsError, settings_for_host
from govstack.shipping import images_shipped

faults.die_with_controller()
# `govstack up` started this deploy before taking the stack lock: nothing
# below runs until the CLI holds it (govstack/gate.py).
gate.wait_at_gate(inventory)
try:
    settings = settings_for_host(host)
    require_wheel_locks(settings)
except SettingsError as error:
    logger.error(str(error))
    raise SystemExit(2) from None

try:
    role_fields = plan_fields(host, inventory, settings)
except TopologyError as error:
    logger.error(f"govstack: {error}")
    raise SystemExit(2) from None

plan = StackPlan(
    settings,
    host.get_fact(HostResourcesFact),
    recorded_release=host.get_fact(ReleaseState, path=release_path(settings)),
    apparmor=host.get_fact(DockerAppArmor),
    **role_fields,
)

# Decided for every host before any operation runs anywhere: a deploy that
# would change a secret a host holds (or lose one that data needs) stops here.
try:
    secret_values = secret_store.secret_values(host, inventory, plan)
except secret_store.SecretConflict as error:
    logger.error(f"govstack: {error}")
    raise SystemExit(2) from None

# In a split inventory each host runs its groups' part (govstack/roles.py);
# a host in no group runs all of it. Operations run in this order across
# all hosts, so the data host is up before the app hosts start.
engine.install_docker_engine(plan)
if plan.split and settings.firewall and plan.firewall_openings:
    published_ports_firewalled(
        name="Published ports open only to the hosts that use them",
        address=plan.address,
        openings=plan.firewall_openings,
    )
if settings.images.lane == "offline":
    if settings.images.ship_from_controller:
        # Built once on the controller (deploys/build_images.py); a shipped
        # image carries its context-hash label, so the builds below find it current.
        images_shipped(name="Images from the controller's engine", images=plan.host_images)
    images.build_offline_images(plan)
stack.create_stack_directories(plan)
stack.ensure_secrets(plan, secret_values)
certificate_renewed = plan.has_role("edge") and stack.ensure_edge_certificate(plan)
stack.render_stack_files(plan)
if settings.backup.enabled and plan.has_role("data"):
    backup.prepare_backup(plan)
if plan.has_role("edge"):
    stack.apply_edge_config(plan, certificate_renewed)
if plan.services:
    stack.start_stack(plan)
roles_split = app.serving_image_splits_roles(inventory, plan)
if not roles_split:
    logger.warning(f"note: the serving version {plan.release.version} is from before the app's role owned "
                   "nothing: it keeps owning the schema until `govstack deploy` of a newer version")
if plan.has_role("data"):
    if "seaweedfs" in plan.services:
        stack.ensure_object_store_bucket(plan)
    roles = app.app_database_roles(plan, roles_split)
    if settings.backup.enabled:
        roles.append(backup.backup_role(plan))
    roles += [role for role in (monitoring.monitor_role(plan), app.analytics_role(plan)) if role is not None]
    app.ensure_database_roles(plan, roles, roles_split)
    if settings.pitr_enabled:
        backup.ensure_pitr(plan)
if plan.split:
    all_hosts_reached(name="Data tier and edge up on their hosts", step="data tier and edge up")
if roles_split and plan.has_role("app") and is_first_app_host(plan, host.name):
    app.ensure_app_schema(plan)
if plan.split:
    all_hosts_reached(name="App schema current", step="app schema current")
if plan.has_role("app"):
    app.start_app_color(plan, plan.release.color, plan.release.version)
    app.stop_idle_color(plan)
app.record_first_release(plan)
