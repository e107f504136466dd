"""Issue 18 §2 on the 4-host lane: runbooks that work on a split site.

`govstack runbook run` executes each block on a host of the group the block
names (``on=data``, ``on=every-app`` …), over the inventory's SSH, and the
controller's blocks reach the hosts through govstack and the helpers. Runs
last on the deployed lane (after test_secrets.py; pytest keeps file order):

1. restore-postgres from the controller, rollback included: no ``--host``
   anywhere, the writers stop and start on both app hosts, the database is
   swapped on the data host;
2. a restore that dies after stopping the app leaves it stopped on every app
   host; the runbook's "If the restore fails" section starts it again and
   the ledger records the interrupted restore;
3. add-app-host: the lane without one app host, then the runbook adds it
   (the edge's upstream lists it again);
4. lost-data-host: the data host's repository is copied off the host, its
   whole stack root and containers are destroyed, and the runbook deploys
   and restores it; every document is back.
"""

from __future__ import annotations

import json
import pprint
import re
import runpy
import shlex
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from govstack.remote import APP_SERVICES
from tests.multihost.conftest import Lane, govstack, tail
from tests.multihost.harness import REPO_ROOT
from tests.multihost.test_multihost import api

pytestmark = pytest.mark.filterwarnings("ignore:Unknown ssh-:UserWarning")

RUNBOOKS = REPO_ROOT / "runbooks"
RUNBOOK_TIMEOUT_S = 1800
RESTORE_FAILS = "If the restore fails"


def run_runbook(lane: Lane, name: str, *, inventory: Path | None = None, section: str | None = None,
                env: dict[str, str] | None = None, **variables: str):
    args = ["runbook", "run", "-i", str(inventory or lane.inventory)]
    for key, value in variables.items():
        args += ["--set", f"{key}={value}"]
    if section:
        args += ["--section", section]
    log = lane.workdir / f"runbook-{name}{'-' + section.split()[-1] if section else ''}.log"
    return govstack(*args, str(RUNBOOKS / f"{name}.md"), timeout=RUNBOOK_TIMEOUT_S, env=env, log=log)


def settings_of(lane: Lane, host_name: str):
    from govstack.inventory import load_inventory

    return next(entry.settings for entry in load_inventory(str(lane.inventory)) if entry.name == host_name)


def ran_on(output: str) -> set[str]:
    """The hosts (and groups) the runner says it ran blocks on."""
    return {line.split(" running on ", 1)[1].split(" (timeout")[0] for line in output.splitlines()
            if " running on " in line}


def running_writers(lane: Lane) -> dict[str, int]:
    listing = "docker ps -q --filter label=com.docker.compose.service={}"
    return {host.name: sum(len(lane.ssh(host, listing.format(service)).stdout.split()) for service in APP_SERVICES)
            for host in lane.group("app")}


def documents(lane: Lane) -> int:
    data = lane.group("data")[0]
    database = settings_of(lane, data.name).postgres.database
    out = lane.ssh(data, "docker exec $(docker ps -q --filter label=com.docker.compose.service=postgres) "
                         f"psql -X -U postgres -d {shlex.quote(database)} -tAc 'select count(*) from documents'")
    return int(out.stdout.strip())


def fresh_backup(lane: Lane) -> str:
    # No --host: on a split inventory the backup runs on the data host.
    result = govstack("backup", "--json", "-i", str(lane.inventory), timeout=900, log=lane.workdir / "rb-backup.log")
    assert result.returncode == 0, tail(result)
    return json.loads(result.stdout)["run"]


def test_restore_postgres_runs_each_block_on_its_hosts(deployed, edge_ca, admin_api_key):
    before = documents(deployed)
    # Its point-in-time path goes back to this moment (after the WAL holding `before` is written).
    moment = time.strftime("%Y-%m-%d %H:%M:%S+00", time.gmtime(time.time() - 1))
    run = fresh_backup(deployed)
    result = run_runbook(deployed, "restore-postgres", SNAPSHOT=run, CONFIRM_ROLLBACK="yes", RESTORE_TO=moment)
    assert result.returncode == 0, tail(result, 6000)
    data, apps = deployed.group("data")[0], deployed.group("app")
    assert ran_on(result.stdout) == {"controller", f"{data.name} (data)",
                                     *(f"{host.name} (every-app)" for host in apps)}, ran_on(result.stdout)
    # The rollback stopped the app on each app host and swapped the databases on the data host.
    for host in apps:
        assert re.search(rf"^{host.name}: stopped [1-9][0-9]* app containers$", result.stdout, re.M), tail(result, 6000)
    assert "rolled back:" in result.stdout
    assert running_writers(deployed) == {host.name: len(APP_SERVICES) for host in apps}
    assert documents(deployed) == before
    assert api(deployed, edge_ca, admin_api_key, "GET", "/ready").status_code == 200


def test_a_restore_that_dies_leaves_the_app_stopped_and_the_runbook_starts_it(deployed, edge_ca, admin_api_key):
    run = fresh_backup(deployed)
    # The restore command is killed once the writers are stopped, as a lost controller would leave it.
    failed = run_runbook(deployed, "restore-postgres", SNAPSHOT=run, env={"GOVSTACK_FAULT": "restore_after_stop"})
    assert failed.returncode != 0, tail(failed)
    assert "govstack restore" in failed.stderr and "failed" in failed.stderr, tail(failed)
    assert "If a step fails" in failed.stderr, tail(failed)
    assert running_writers(deployed) == {host.name: 0 for host in deployed.group("app")}
    recovered = run_runbook(deployed, "restore-postgres", section=RESTORE_FAILS)
    assert recovered.returncode == 0, tail(recovered, 6000)
    assert running_writers(deployed) == {host.name: len(APP_SERVICES) for host in deployed.group("app")}
    assert api(deployed, edge_ca, admin_api_key, "GET", "/ready").status_code == 200
    history = govstack("history", "--json", "-i", str(deployed.inventory), timeout=300)
    records = [json.loads(line) for line in history.stdout.splitlines()]
    assert any(r["action"] == "restore" and r["result"] == "interrupted" for r in records), records[-8:]
    # Cleanup stayed paused (the restore paused it before stopping anything): resume it.
    resumed = govstack("cleanup", "resume", "--yes", "-i", str(deployed.inventory), timeout=300)
    assert resumed.returncode == 0, tail(resumed)


def inventory_without(lane: Lane, host_name: str, path: Path) -> Path:
    """The lane's inventory file with one host left out (as before it was added)."""
    groups = runpy.run_path(str(lane.inventory))
    hosts, shared = groups["all"]
    lines = ['"""The lane\'s inventory without one host (tests/multihost/test_site_runbooks.py)."""', "",
             f"all = ({pprint.pformat([h for h in hosts if h[0] != host_name], width=110)},",
             f"       {pprint.pformat(shared, width=110)})"]
    for group in ("edge", "app", "data", "monitoring"):
        value = groups.get(group)
        if value is None:
            continue
        if isinstance(value, tuple):
            value = ([name for name in value[0] if name != host_name], value[1])
        else:
            value = [name for name in value if name != host_name]
        lines.append(f"{group} = {pprint.pformat(value, width=110)}")
    path.write_text("\n".join(lines) + "\n")
    return path


def upstream(lane: Lane) -> str:
    config = settings_of(lane, lane.edge.name).config_dir
    return lane.read(lane.edge, f"{config}/nginx/nginx.conf")


def test_add_app_host_adds_the_host_the_inventory_lacked(deployed, edge_ca, admin_api_key):
    added = deployed.group("app")[-1]
    smaller = inventory_without(deployed, added.name, deployed.workdir / "without-app-host.py")
    removed = govstack("up", "-i", str(smaller), log=deployed.workdir / "up-without-app-host.log")
    assert removed.returncode == 0, tail(removed)
    assert f"server {added.ip}:" not in upstream(deployed)
    result = run_runbook(deployed, "add-app-host", inventory=smaller, APP_INVENTORY=str(deployed.inventory))
    assert result.returncode == 0, tail(result, 6000)
    assert f"server {added.ip}:" in upstream(deployed)
    assert f"upstream: server {added.ip}:" in result.stdout, tail(result, 6000)
    assert "not rolling back" in result.stdout
    assert api(deployed, edge_ca, admin_api_key, "GET", "/ready").status_code == 200


def test_lost_data_host_is_rebuilt_and_restored_by_the_runbook(deployed, edge_ca, admin_api_key):
    data = deployed.group("data")[0]
    settings = settings_of(deployed, data.name)
    # A document of its own, so that the rebuild has something to bring back whatever ran before.
    upload = api(deployed, edge_ca, admin_api_key, "POST", f"/api/v1/collections/lost-{uuid.uuid4().hex[:6]}/documents",
                 files={"file": ("kept.txt", f"kept through the loss {uuid.uuid4().hex}".encode())})
    assert upload.status_code == 201, upload.text
    before = documents(deployed)
    assert before > 0
    run = fresh_backup(deployed)
    # The copy of the repository taken off the host before it was lost.
    copy = deployed.workdir / "repository-copy.tar"
    repository = shlex.quote(f"{settings.paths.backups_dir}/restic")
    with copy.open("wb") as out:
        taken = subprocess.run([*deployed.harness.ssh_args(data), f"tar -C {repository} --numeric-owner -cf - ."],
                               stdout=out, stderr=subprocess.PIPE, timeout=600)
    assert taken.returncode == 0 and copy.stat().st_size > 0, taken.stderr[-500:]
    # The host is lost: every container, the stack root (data, backups, secrets, configuration).
    deployed.ssh(data, f"docker ps -aq | xargs -r docker rm -f -v > /dev/null; "
                       f"rm -rf {shlex.quote(settings.stack_root)}; docker network prune -f > /dev/null", timeout=300)
    started = time.monotonic()
    result = run_runbook(deployed, "lost-data-host", CONFIRM_REPLACEMENT="yes", REPOSITORY_COPY=str(copy),
                         RESTORE_FROM="local", SNAPSHOT=run)
    print(f"\nlost-data-host: rebuilt and restored in {time.monotonic() - started:.0f} s")
    assert result.returncode == 0, tail(result, 6000)
    assert f"{data.name} (data)" in ran_on(result.stdout)
    assert documents(deployed) == before
    assert running_writers(deployed) == {host.name: len(APP_SERVICES) for host in deployed.group("app")}
    assert api(deployed, edge_ca, admin_api_key, "GET", "/ready").status_code == 200
