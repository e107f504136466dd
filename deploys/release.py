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

from pyinfra import host, logger
from pyinfra.operations import files

from deploys import app, images
from govstack import monitoring
from govstack.facts import HostResourcesFact
from govstack.operations import (
    app_migrated,
    indexing_color_set,
    nginx_config_applied,
    old_color_retired,
    postgres_dumped,
)
from govstack.plan import StackPlan
from govstack.release import Release, ReleaseState, other_color, release_path
from govstack.render import nginx_candidate_path, nginx_live_path, render_app_compose, render_nginx_conf
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
before = StackPlan(settings, resources, recorded_release=current)
after = StackPlan(settings, resources, recorded_release=new)
s = settings

# 1. The image.
images.build_app_image(after, version)

# 2. A database backup, then the new version's migrations.
files.put(
    name=f"Compose file of {new.color} ({version})",
    src=StringIO(render_app_compose(after, new.color, version)),
    dest=after.app_compose_file(new.color),
    mode="644",
)
postgres_dumped(
    name="Pre-deploy Postgres backup",
    project=s.project,
    compose_file=s.compose_file,
    database=s.postgres.database,
    dest_dir=f"{s.stack_root}/backups/pre-deploy",
    label=version,
)
app_migrated(
    name=f"Migrations of {version}",
    project=after.app_project(new.color),
    compose_file=after.app_compose_file(new.color),
)

# 3. The new color, ready.
app.start_app_color(after, new.color, version)

# 4. Traffic.
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
)

# 5. Indexing follows traffic.
indexing_color_set(
    name=f"Indexing by {new.color}",
    project=s.project,
    compose_file=s.compose_file,
    database=s.postgres.database,
    color=new.color,
)

# 6. Retire the old color, and record the release.
old_color_retired(
    name=f"Drain and stop {current.color} ({current.version})",
    edge_project=s.project,
    edge_compose_file=s.compose_file,
    project=before.app_project(current.color),
    compose_file=before.app_compose_file(current.color),
)
if s.monitoring.enabled:
    # Prometheus re-reads its file_sd target lists: scrape (and label as
    # serving) only the color that now runs.
    for name, content in monitoring.render_app_targets((new.color,), new.color).items():
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
