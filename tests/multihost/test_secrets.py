"""Issue 12 §1 on the 4-host lane: a fresh controller never changes a host's
secrets, and `govstack secret rotate` replaces one with no downtime.

Runs after test_multihost.py on the same deployed lane (pytest keeps file
order; `make test-multihost` runs the directory):

1. with a backup taken and GOVSTACK_SECRETS_HOME pointing at an empty
   directory (a new CI runner), `govstack up` under load changes nothing,
   the controller ends with the hosts' values (0600), the earlier backup
   restores, and no request fails;
2. a deploy stops before changing anything, naming the secret and the hosts,
   when two hosts disagree or the restic password is gone while the
   repository exists;
3. `secret rotate` of a Postgres role, the restic password and the S3 key
   pair, each under load with 0 failed requests; the new value is on every
   host that reads it and on the controller, the old one no longer opens
   anything, the earlier backup still restores after the restic rotation,
   and every host's ledger records the rotation.
"""

from __future__ import annotations

import json
import shlex
import stat
import uuid
from pathlib import Path

import pytest
import requests

from govstack.secret_sources import digest
from govstack.secrets import rotated_with
from tests.multihost.conftest import Lane, govstack, secrets_home, tail
from tests.multihost.test_multihost import (  # noqa: F401 - fixture
    BACKUP_RUN_TIMEOUT_S,
    api,
    changed_operations,
    load,
    release_on,
    searchable,
)

pytestmark = pytest.mark.filterwarnings("ignore:Unknown ssh-:UserWarning")


def entries(lane: Lane):
    from govstack.inventory import load_inventory

    return {entry.name: entry for entry in load_inventory(str(lane.inventory))}


def secret_digests(lane: Lane) -> dict[str, dict[str, str]]:
    """host -> name -> sha256 of every secret file the host holds."""
    found = {}
    for name, entry in entries(lane).items():
        listing = lane.ssh(name, f"cd {shlex.quote(entry.settings.secrets_dir)} && sha256sum *").stdout
        found[name] = {line.split()[1]: line.split()[0] for line in listing.splitlines()}
    return found


def controller_dir(lane: Lane, home: Path) -> Path:
    data = lane.group("data")[0].name
    return home / f"{entries(lane)[data].settings.project}-{data}"


def backup_run(lane: Lane) -> str:
    data = lane.group("data")[0]
    result = lane.ssh(data, "docker exec $(docker ps -q -f label=com.docker.compose.service=backup) "
                            "govstack-backup run --json", timeout=BACKUP_RUN_TIMEOUT_S, check=False)
    assert result.returncode == 0, tail(result)
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["ok"], summary
    return summary["run"]


def assert_restorable(lane: Lane, run: str) -> None:
    """The run's Postgres dump, read from the repository with the current
    password, restores into a scratch database that matches the run's manifest."""
    from govstack.backup.cli import stack_for

    stack = stack_for(str(lane.inventory), lane.group("data")[0].name)
    scratch = "govstack_restore_check"
    postgres = stack.require_service("postgres")
    stack.psql(f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)')
    stack.psql(f'CREATE DATABASE "{scratch}"; GRANT CONNECT ON DATABASE "{scratch}" TO govstack_backup')
    try:
        restored = stack.sh(f"{stack.job('dump', run, 'postgres')} | docker exec -i {postgres} "
                            f"pg_restore -U postgres -d {scratch} --single-transaction --no-password", timeout=600)
        assert restored.ok, restored.tail()
        check = stack.job_json("verify-postgres", run, "--database", scratch)
        assert check.get("ok"), check
    finally:
        stack.psql(f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)', check=False)


def app_connects(lane: Lane) -> None:
    """Each app host's serving API opens a *new* Postgres connection with its settings' password file."""
    probe = ("import psycopg; from govstack_app.settings import Settings; "
             "psycopg.connect(Settings().conninfo()).close(); print('connected')")
    for host in lane.group("app"):
        color = release_on(lane, host.name)["color"]
        out = lane.ssh(host, f"docker exec $(docker ps -q -f label=com.docker.compose.project=govstack-{color} "
                             f"-f label=com.docker.compose.service=api) python3 -c {shlex.quote(probe)}", check=False)
        assert out.stdout.strip() == "connected", (host.name, out.stderr[-800:])


def rotated_in_ledgers(lane: Lane, names: str) -> None:
    result = govstack("history", "--json", "-i", str(lane.inventory), timeout=120)
    assert result.returncode == 0, tail(result)
    records = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    last = {}
    for record in records:
        if record["action"] == "rotate":
            last[record["host"]] = record
    assert set(last) == set(lane.hosts), last
    assert {(r["secret"], r["result"]) for r in last.values()} == {(names, "ok")}, last


def rotate_under_load(lane: Lane, ca: str, key: str, name: str, *extra: str):
    with load(lane, ca, key) as generator:
        result = govstack("secret", "rotate", name, "--lock-wait", "120", *extra, "-i", str(lane.inventory),
                          timeout=600, log=lane.workdir / f"rotate-{name}.log")
    report = generator.report
    print(f"\nrotate {name}: {report.summary()}")
    assert result.returncode == 0, tail(result)
    assert not report.failures, f"{len(report.failures)} failed requests, e.g. {report.failures[:3]}"
    copies = controller_dir(lane, secrets_home(lane.workdir))
    for rotated in rotated_with(name):
        assert (copies / rotated).read_text() not in result.stdout + result.stderr, f"{rotated}'s value printed"
    return result


def changed_secrets(before: dict, after: dict) -> dict[str, set[str]]:
    return {host: {n for n in after[host] if before[host].get(n) != after[host][n]} for host in after}


# --- 1. a fresh controller ------------------------------------------------------------------------

@pytest.mark.usefixtures("searchable")
def test_a_fresh_controller_adopts_the_hosts_secrets_and_changes_none(deployed, edge_ca, admin_api_key, tmp_path):
    before = secret_digests(deployed)
    run = backup_run(deployed)
    fresh = tmp_path / "fresh-controller"
    fresh.mkdir()
    with load(deployed, edge_ca, admin_api_key) as generator:
        result = govstack("up", "-i", str(deployed.inventory), env={"GOVSTACK_SECRETS_HOME": str(fresh)},
                          log=deployed.workdir / "up-fresh-controller.log")
    report = generator.report
    print(f"\nup from a fresh controller: {report.summary()}")
    assert result.returncode == 0, tail(result)
    assert changed_operations(result.stdout + result.stderr) == [], "a fresh controller changed the stack"
    assert secret_digests(deployed) == before
    assert not report.failures, f"{len(report.failures)} failed requests, e.g. {report.failures[:3]}"

    # The controller now holds the hosts' values, privately.
    copies = controller_dir(deployed, fresh)
    assert stat.S_IMODE(copies.stat().st_mode) == 0o700
    on_hosts = {name: value for digests in before.values() for name, value in digests.items()}
    held = {path.name: path for path in copies.iterdir()}
    assert set(held) == set(on_hosts), (sorted(held), sorted(on_hosts))
    for name, path in held.items():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, name
        assert digest(path.read_text()) == on_hosts[name], name
    for path in held.values():
        assert path.read_text() not in result.stdout + result.stderr

    assert_restorable(deployed, run)


# --- 2. a deploy that would change a secret stops first -------------------------------------------

def test_a_deploy_stops_before_changing_anything_when_hosts_disagree_or_the_restic_password_is_gone(
        deployed, tmp_path):
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    env = {"GOVSTACK_SECRETS_HOME": str(fresh)}
    settings = entries(deployed)
    app_host = deployed.group("app")[-1]
    data = deployed.group("data")[0]
    app_secret = f"{settings[app_host.name].settings.secrets_dir}/postgres_app_password"
    restic = f"{settings[data.name].settings.secrets_dir}/restic_password"
    before = secret_digests(deployed)

    deployed.ssh(app_host, f"cp -p {app_secret} {app_secret}.kept && printf %s {uuid.uuid4().hex} > {app_secret}")
    try:
        disagree = govstack("up", "-i", str(deployed.inventory), env=env, timeout=600,
                            log=deployed.workdir / "up-disagree.log")
    finally:
        # Back in place (same inode): the running containers have this file mounted.
        deployed.ssh(app_host, f"cat {app_secret}.kept > {app_secret} && rm {app_secret}.kept")
    assert disagree.returncode != 0
    cause = disagree.stderr.strip().splitlines()[-1]
    assert "postgres_app_password differs between hosts" in cause and app_host.name in cause, cause
    assert "--> Starting operation" not in disagree.stdout, "operations ran"

    deployed.ssh(data, f"mv {restic} {restic}.kept")
    try:
        gone = govstack("up", "-i", str(deployed.inventory), env=env, timeout=600, log=deployed.workdir / "up-gone.log")
    finally:
        deployed.ssh(data, f"mv {restic}.kept {restic}")
    assert gone.returncode != 0
    cause = gone.stderr.strip().splitlines()[-1]
    assert f"restic_password is on no host, but {data.name} holds a restic repository" in cause, cause
    assert "--> Starting operation" not in gone.stdout, "operations ran"
    assert secret_digests(deployed) == before
    assert not any(fresh.rglob("restic_password")), "the controller made a restic password"


# --- 3. rotation ---------------------------------------------------------------------------------

@pytest.mark.usefixtures("searchable")
def test_rotate_the_apps_postgres_password_under_load(deployed, edge_ca, admin_api_key):
    before = secret_digests(deployed)
    rotate_under_load(deployed, edge_ca, admin_api_key, "postgres_app_password")
    after = secret_digests(deployed)
    readers = {deployed.group("data")[0].name, *(h.name for h in deployed.group("app"))}
    assert {host for host, names in changed_secrets(before, after).items() if names} == readers
    assert all(names == {"postgres_app_password"} for names in changed_secrets(before, after).values() if names)
    assert len({after[host]["postgres_app_password"] for host in readers}) == 1
    copy = controller_dir(deployed, secrets_home(deployed.workdir)) / "postgres_app_password"
    assert digest(copy.read_text()) == after[deployed.group("data")[0].name]["postgres_app_password"]
    app_connects(deployed)
    for host, names in after.items():
        assert not [n for n in names if n.endswith((".next", ".previous"))], host
    rotated_in_ledgers(deployed, "postgres_app_password")


@pytest.mark.usefixtures("searchable")
def test_rotate_the_restic_password_under_load_and_the_earlier_backup_still_restores(deployed, edge_ca, admin_api_key):
    run = backup_run(deployed)
    rotate_under_load(deployed, edge_ca, admin_api_key, "restic_password")
    data = deployed.group("data")[0]
    keys = deployed.ssh(data, "docker exec $(docker ps -q -f label=com.docker.compose.service=backup) restic "
                              "-r /backups/restic --password-file /run/secrets/restic_password --no-cache key list "
                              "--json").stdout
    assert [key["current"] for key in json.loads(keys)] == [True], "the old key was not removed"
    assert_restorable(deployed, run)
    backup_run(deployed)  # and new backups run with the new password
    rotated_in_ledgers(deployed, "restic_password")


S3_PROBE = """
import sys
from minio import Minio
from minio.error import S3Error
access, secret = sys.stdin.read().split()
client = Minio(sys.argv[1], access_key=access, secret_key=secret, secure=False, region="us-east-1")
try:
    client.list_buckets()
    print("accepted")
except S3Error as error:
    print(error.code)
"""


@pytest.mark.usefixtures("searchable")
def test_rotate_the_s3_key_pair_under_load(deployed, edge_ca, admin_api_key):
    copies = controller_dir(deployed, secrets_home(deployed.workdir))
    old = f"{(copies / 's3_access_key').read_text()} {(copies / 's3_secret_key').read_text()}"
    before = secret_digests(deployed)
    rotate_under_load(deployed, edge_ca, admin_api_key, "s3_secret_key", "--grace", "5")
    after = secret_digests(deployed)
    changed = changed_secrets(before, after)
    assert {host for host, names in changed.items() if names == {"s3_access_key", "s3_secret_key"}} == {
        deployed.group("data")[0].name, *(h.name for h in deployed.group("app"))}

    # The old pair is refused by the gateway, the new one works end to end.
    app_host = deployed.group("app")[0]
    data_ip = deployed.group("data")[0].ip
    color = release_on(deployed, app_host.name)["color"]
    refused = deployed.ssh(app_host, f"printf %s {shlex.quote(old)} | docker exec -i $(docker ps -q -f "
                                     f"label=com.docker.compose.project=govstack-{color} -f "
                                     f"label=com.docker.compose.service=api) python3 -c {shlex.quote(S3_PROBE)} "
                                     f"{data_ip}:8333")
    assert refused.stdout.strip() == "InvalidAccessKeyId", refused.stdout + refused.stderr[-500:]
    body = f"rotated keys {uuid.uuid4().hex}".encode()
    collection = f"s3rot-{uuid.uuid4().hex[:6]}"
    upload = api(deployed, edge_ca, admin_api_key, "POST", f"/api/v1/collections/{collection}/documents",
                 files={"file": ("after.txt", body)})
    assert upload.status_code == 201, upload.text
    link = api(deployed, edge_ca, admin_api_key, "GET",
               f"/api/v1/collections/{collection}/documents/{upload.json()['id']}/download").json()["url"]
    got = requests.get(link, verify=edge_ca, timeout=60)
    assert got.status_code == 200 and got.content == body, got.status_code
    rotated_in_ledgers(deployed, "s3_access_key,s3_secret_key")


# --- 4. rotated values stick ----------------------------------------------------------------------

def test_rotated_secrets_stick_through_the_next_up(deployed):
    """rotate-secrets.md promises that a rotated value stays: the next `govstack up` (the
    controller's copies against the hosts') keeps every secret the rotations above left, on
    every host, and says nothing of their values."""
    before = secret_digests(deployed)
    result = govstack("up", "-i", str(deployed.inventory), log=deployed.workdir / "up-after-rotations.log")
    assert result.returncode == 0, tail(result)
    assert secret_digests(deployed) == before
    copies = controller_dir(deployed, secrets_home(deployed.workdir))
    values = {path.name: path.read_text().strip() for path in copies.iterdir()}
    assert all(len(value) >= 16 for value in values.values()), "a secret too short to look for"
    for name, value in values.items():
        assert value not in result.stdout + result.stderr, f"{name}'s value printed"
