"""Blue/green release of the app: `govstack deploy --version V` / `govstack rollback`.

Run by the CLI (which holds the deploy lock and writes the ledger) as
`pyinfra -y INVENTORY deploys/release.py` with GOVSTACK_RELEASE_VERSION set.
The data tier and the edge stay up; the app moves to the idle color:

  1. build (or find) image V          4. nginx: render, nginx -t, reload
  2. pg_dump, then migrations         5. hand indexing to the new color
  3. start V in the idle color and    6. drain, stop the old color (kept
     wait until api + worker ready       stopped with its image for rollback)

A failure before step 4 leaves traffic on the old color: nothing before it
touches nginx or the serving color's containers.
"""

import os
from io import StringIO

from pyinfra import host, inventory, logger
from pyinfra.operations import files

from deploys import app, images
from govstack.facts import DockerAppArmor, HostResourcesFact
from govstack.operations import (
    app_migrated,
    indexing_color_set,
    nginx_config_applied,
    old_color_retired,
    postgres_dumped,
)
from govstack.plan import StackPlan
from govstack.release import Release, ReleaseState, other_color, release_path
from govstack.render import (
    nginx_candidate_path,
    nginx_live_path,
    render_app_compose,
    render_app_target_files,
    render_nginx_conf,
)
from govstack.role_operations import all_hosts_reached, app_color_stopped, edge_drained
from govstack.roles import TopologyError, is_first_app_host, plan_fields
from govstack.settings import SettingsError, settings_for_host

try:
    settings = settings_for_host(host)
except SettingsError as error:
    logger.error(str(error))
    raise SystemExit(2) from None

version = os.environ["GOVSTACK_RELEASE_VERSION"]
resources = host.get_fact(HostResourcesFact)
current = host.get_fact(ReleaseState, path=release_path(settings))
if current is None:
    logger.error(f"govstack: {host.name}: no release yet; run `govstack up` first")
    raise SystemExit(2)

new = Release(color=other_color(current.color), version=version, previous=current.without_previous())
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


def step(done: str) -> None:
    """Split inventory: everything above, on every host, before anything below."""
    if after.split:
        all_hosts_reached(name=f"Every host: {done}", step=done)


# 1. The image.
if is_app:
    images.build_app_image(after, version)

# 2. A database backup, then the new version's migrations (one app host runs them).
if is_app:
    files.put(
        name=f"Compose file of {new.color} ({version})",
        src=StringIO(render_app_compose(after, new.color, version)),
        dest=after.app_compose_file(new.color),
        mode="644",
    )
if is_data:
    postgres_dumped(
        name="Pre-deploy Postgres backup",
        project=s.project,
        compose_file=s.compose_file,
        database=s.postgres.database,
        dest_dir=s.paths.pre_deploy_dumps,
        label=version,
    )
step("pre-deploy backup")
if is_app and is_first_app_host(after, host.name):
    app_migrated(
        name=f"Migrations of {version}",
        project=after.app_project(new.color),
        compose_file=after.app_compose_file(new.color),
    )

step("migrations")

# 3. The new color, ready (on every app host).
if is_app:
    app.start_app_color(after, new.color, version)
step(f"{new.color} ready on every app host")

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

# 5. Indexing follows traffic.
if is_data:
    indexing_color_set(
        name=f"Indexing by {new.color}",
        project=s.project,
        compose_file=s.compose_file,
        database=s.postgres.database,
        color=new.color,
    )

# 6. Retire the old color, and record the release.
if not after.split:
    old_color_retired(
        name=f"Drain and stop {current.color} ({current.version})",
        edge_project=s.project,
        edge_compose_file=s.compose_file,
        project=before.app_project(current.color),
        compose_file=before.app_compose_file(current.color),
    )
else:
    if is_edge:
        edge_drained(name=f"Edge drained of {current.color}", project=s.project, compose_file=s.compose_file)
    step(f"edge drained of {current.color}")
    if is_app:
        app_color_stopped(
            name=f"Stop {current.color} ({current.version})",
            project=before.app_project(current.color),
            compose_file=before.app_compose_file(current.color),
        )
if s.monitoring.enabled and after.has_role("monitoring"):
    # Prometheus re-reads its file_sd target lists: scrape (and label as
    # serving) only the color that now runs.
    for name, content in render_app_target_files(after, (new.color,), new.color).items():
        files.put(
            name=f"Scrape targets {name}: {new.color}",
            src=StringIO(content),
            dest=f"{s.config_dir}/prometheus/targets/{name}",
            mode="644",
        )
files.put(
    name=f"Release record: {new.color} {version}",
    src=StringIO(new.to_json()),
    dest=release_path(s),
    mode="600",
)
