"""Blue/green release of the app: `govstack deploy --version V` / `govstack rollback`.

Run by the CLI (which holds the stack lock and writes the ledger) as
`pyinfra -y INVENTORY deploys/release.py` with GOVSTACK_RELEASE_VERSION set.
The data tier and the edge stay up; the app moves to the idle color:

  1. build (or find) image V           5. the release record, indexing and
  2. safety copy of Postgres (restic),    scrape targets follow the traffic
     then migrations                   6. drain the edge of the old color
  3. start V in the idle color and     7. stop the old color (kept stopped,
     wait until api + worker ready        with its image, for rollback)
  4. nginx: render, nginx -t, reload

A failure before step 4 leaves traffic on the old color: nothing before it
touches nginx or the serving color's containers. The release record is
written right after the switch, so at every point the record names the
color that serves: a crash (tests inject one per step with GOVSTACK_FAULT,
govstack/faults.py) leaves either the old release serving and recorded, or
the new one; the next command finds the attempt interrupted (ledger.py).
"""

import json
import os
from io import StringIO

from pyinfra import host, inventory, logger
from pyinfra.facts.files import File
from pyinfra.operations import files, python

from deploys import app, images
from govstack import faults
from govstack.facts import DockerAppArmor, HostResourcesFact
from govstack.monitoring.render import render_app_target_files
from govstack.operations import (
    app_migrated,
    compose_project_healthy,
    indexing_color_set,
    nginx_config_applied,
    postgres_safety_copy,
)
from govstack.plan import StackPlan
from govstack.release import Release, ReleaseState, kept_color_unusable, other_color, release_path
from govstack.render import (
    nginx_candidate_path,
    nginx_live_path,
    render_app_compose,
    render_nginx_conf,
)
from govstack.role_operations import all_hosts_reached, app_color_stopped, edge_drained
from govstack.roles import TopologyError, is_first_app_host, plan_fields
from govstack.secrets import secret_path
from govstack.settings import SettingsError, settings_for_host

faults.die_with_controller()
try:
    settings = settings_for_host(host)
    fault = faults.wanted_fault()
except (SettingsError, faults.FaultError) as error:
    logger.error(f"govstack: {error}")
    raise SystemExit(2) from None

version = os.environ["GOVSTACK_RELEASE_VERSION"]
is_rollback = os.environ.get("GOVSTACK_RELEASE_ACTION") == "rollback"
resources = host.get_fact(HostResourcesFact)
current = host.get_fact(ReleaseState, path=release_path(settings))
if current is None:
    logger.error(f"govstack: {host.name}: no release yet; run `govstack up` first")
    raise SystemExit(2)

new = Release(color=other_color(current.color), version=version, previous=current.without_previous(),
              config_hash=settings.config_hash())
try:
    role_fields = plan_fields(host, inventory, settings)
except TopologyError as error:
    logger.error(f"govstack: {error}")
    raise SystemExit(2) from None
apparmor = host.get_fact(DockerAppArmor)
before = StackPlan(settings, resources, recorded_release=current, apparmor=apparmor, **role_fields)
after = StackPlan(settings, resources, recorded_release=new, apparmor=apparmor, **role_fields)
s = settings
# In a split inventory each step runs on the hosts of its role; pyinfra runs
# each operation on every host before the next (and --fail-percent 0 stops
# all of them at the first failure), so every app host is ready before the
# edge switches, once.
is_app, is_edge, is_data = (after.has_role(role) for role in ("app", "edge", "data"))

# A release renders and migrates with this bundle's secrets but, unlike `up`,
# creates none: on a stack set up by an older bundle (before the schema owner
# role, say) it would move ownership and then fail at migrations, leaving the
# serving color unable to restart. Stop before any change instead.
missing_secrets = [name for name in after.secret_names
                   if host.get_fact(File, path=secret_path(s, name)) is None]
if missing_secrets:
    logger.error(f"govstack: {host.name}: secret {', '.join(missing_secrets)} missing under {s.secrets_dir} "
                 "(this stack predates this version of govstack); run `govstack up` first, then deploy")
    raise SystemExit(2)


def step(done: str) -> None:
    """Split inventory: everything above, on every host, before anything below."""
    if after.split:
        all_hosts_reached(name=f"Every host: {done}", step=done)


def fault_point(point: str) -> None:
    """The injected crash (tests only): nothing at all unless GOVSTACK_FAULT names this point."""
    if fault == point:
        python.call(name=f"Injected crash: {point}", function=faults.crash_controller)




def kept_containers_unusable() -> str | None:
    """Why this rollback cannot just start the containers the last release
    kept (stopped) of the color it returns to; None when it can, on every
    app host (each host decides the same way, so all take the same path)."""
    app_hosts = [inventory.get_host(h.name) for h in after.topology.with_role("app")] if after.split else [host]
    for app_host in app_hosts:
        recorded = app_host.get_fact(ReleaseState, path=release_path(s)) if app_host is not host else current
        why = kept_color_unusable(
            app_host, settings_for_host(app_host) if app_host is not host else s,
            after.app_project(new.color), after.app_compose_file(new.color), after.app_image(version),
            recorded.previous if recorded and recorded.previous else new,
        )
        if why:
            return f"{app_host.name}: {why}" if after.split else why
    return None


# A rollback to the color the last release stopped: its containers, kept
# with their image, were serving this very version under these settings,
# against a schema its successor only extended. So nothing is built, copied
# or migrated: they are started, gated on health and switched to, as Kamal
# does. Otherwise (they were removed, or the image or the settings changed)
# the rollback takes a deploy's full path, and says why.
fallback = kept_containers_unusable() if is_rollback else None
kept = is_rollback and fallback is None
if is_rollback:
    files.put(
        name=f"Rollback path: {'kept containers of ' + new.color if kept else 'full release'}",
        src=StringIO(json.dumps({"path": "kept" if kept else "full", "reason": fallback}) + "\n"),
        dest=s.paths.rollback_path_file,
        mode="600",
    )
    if fallback:
        logger.warning(f"note: {host.name}: rollback takes the full release path: {fallback}")

# 1. The image.
if is_app and not kept:
    images.build_app_image(after, version)

# 2. A safety copy of the database, then the new version's migrations (one app host runs them).
if is_app and not kept:
    files.put(
        name=f"Compose file of {new.color} ({version})",
        src=StringIO(render_app_compose(after, new.color, version)),
        dest=after.app_compose_file(new.color),
        mode="644",
    )
if is_data and not kept:
    # The roles first: a stack upgraded from before the owner role existed
    # gets it here, so the new version's migrations run as the owner.
    splits = app.serving_image_splits_roles(inventory, after)
    app.ensure_database_roles(after, app.app_database_roles(after, splits), splits)
    if s.backup.enabled:
        postgres_safety_copy(
            name="Pre-deploy copy of Postgres (restic)",
            project=s.project,
            compose_file=s.compose_file,
            label=version,
            record=s.paths.pre_deploy_copy_file,
        )
    else:
        logger.warning(f"govstack: {host.name}: backups are disabled (backup.enabled): no pre-deploy copy of Postgres")
step("pre-deploy copy")
if is_app and not kept and is_first_app_host(after, host.name):
    app_migrated(
        name=f"Migrations of {version}",
        project=after.app_project(new.color),
        compose_file=after.app_compose_file(new.color),
        stamp=app.schema_stamp_of(after, new.color, version),
    )

step("migrations")
fault_point("before_start")

# 3. The new color, started, then ready (on every app host).
if is_app:
    app.start_app_color(after, new.color, version, wait=False)
fault_point("after_start")
if is_app:
    compose_project_healthy(
        name=f"App {new.color} ({version}) healthy",
        project=after.app_project(new.color),
        timeout_s=s.healthy_timeout_s,
    )
step(f"{new.color} ready on every app host")
fault_point("after_health")

# 4. Traffic.
if is_edge:
    files.put(
        name=f"Edge config pointing at {new.color}",
        src=StringIO(render_nginx_conf(after)),
        dest=nginx_candidate_path(after),
        mode="644",
    )
    nginx_config_applied(
        name=f"Switch the edge to {new.color}",
        project=s.project,
        compose_file=s.compose_file,
        candidate=nginx_candidate_path(after),
        live=nginx_live_path(after),
        test_in_running=True,
    )

step(f"edge switched to {new.color}")

# 5. What serves is recorded at once; indexing and scraping follow the traffic.
files.put(
    name=f"Release record: {new.color} {version}",
    src=StringIO(new.to_json()),
    dest=release_path(s),
    mode="600",
)
if is_data:
    indexing_color_set(
        name=f"Indexing by {new.color}",
        project=s.project,
        compose_file=s.compose_file,
        database=s.postgres.database,
        color=new.color,
    )
if s.monitoring.enabled and after.has_role("monitoring"):
    # Prometheus re-reads its file_sd target lists: scrape (and label as
    # serving) only the color that now runs.
    for name, content in render_app_target_files(after, (new.color,), new.color).items():
        files.put(
            name=f"Scrape targets {name}: {new.color}",
            src=StringIO(content),
            dest=f"{s.paths.config.prometheus_targets_dir}/{name}",
            mode="644",
        )
fault_point("after_switch")

# 6. The old color gets no more requests...
if is_edge:
    edge_drained(name=f"Edge drained of {current.color}", project=s.project, compose_file=s.compose_file)
step(f"edge drained of {current.color}")
fault_point("after_drain")

# 7. ...and stops, kept with its image for a rollback.
if is_app:
    app_color_stopped(
        name=f"Stop {current.color} ({current.version})",
        project=before.app_project(current.color),
        compose_file=before.app_compose_file(current.color),
    )
fault_point("after_stop")
