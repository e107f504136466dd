"""Issue 7's proof on 4 real hosts (containers with their own engines, over SSH).

The lane (tests/multihost/conftest.py) starts 4 hosts (edge+monitoring, app,
app, data), ships each the images its groups run from the controller's
engine, and deploys the split inventory with `govstack up`:

0. the lane itself: pyinfra and testinfra reach every host; shipped images
   carry the controller's ids;
1. `govstack check` passes on every host (each host's groups' checks);
   Prometheus on the monitoring host scrapes every host's exporters, the
   workers and the data host's probes, all up (a backup run's freshness
   included); the data ports answer the app hosts and nobody else;
2. a restore against the data host stops and restarts the writers on both
   app hosts; upload, index, search and download through the edge host;
3. blue/green across the 2 app hosts under load, 0 failed requests; an app
   host that fails stops the rollout before the edge switches;
4. one app host's engine stopped under load: 0 failed requests once the
   edge marks it down (retries printed);
5. a redeploy of the whole inventory changes nothing but removing secrets
   planted on hosts whose roles do not read them (least privilege; `govstack
   check` in 1. proves no host holds one after the first deploy).

Tests run in this order (pytest keeps file order); each is bounded by the
timeouts of what it runs, and the session by MULTIHOST_BUDGET_S.
`make test-multihost`, or `.venv/bin/pytest -v tests/multihost/test_multihost.py`.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from urllib.parse import quote

import pytest
import requests

from govstack.remote import APP_SERVICES
from tests.multihost.conftest import Lane, govstack, parallel, tail
from tests.support.loadgen import LoadGenerator, Sample

# testinfra's paramiko backend accepts any host key with a warning (it has
# no known_hosts option); pyinfra checks them against the run's known_hosts.
pytestmark = pytest.mark.filterwarnings("ignore:Unknown ssh-:UserWarning")

SEARCH_COLLECTION = "multihost"
INDEX_TIMEOUT_S = 240
# Requests per second: nginx-local /health, /ready (proxied to the app hosts,
# which check Postgres, S3 and Chroma on the data host) and searches. The 4
# hosts share the CI machine's 2 cores: 4 searches/s time out (15 s) with no
# fault at all, and at 2/s a few did while both app hosts started the new
# color (measured with another stack's e2e suite running beside the lane).
# Failover is what this load measures, not search capacity.
LOAD = {"health_rps": 29, "ready_rps": 20, "search_rps": 1}


class AppLoad(LoadGenerator):
    """The e2e load generator plus GET /ready, which every app host answers."""

    def __init__(self, *args, ready_rps: float = LOAD["ready_rps"], **kwargs):
        super().__init__(*args, **kwargs)
        self.plan = [*self.plan, ("ready", ready_rps)]

    def _one(self, kind: str) -> Sample:
        if kind != "ready":
            return super()._one(kind)
        sent, start = time.time(), time.monotonic()
        try:
            response = requests.get(f"{self.base_url}/ready", verify=self.verify, timeout=self.timeout_s)
            return Sample(sent, kind, response.status_code, time.monotonic() - start,
                          response.headers.get("x-govstack-color"), None if response.ok else response.text[:200])
        except requests.RequestException as error:
            return Sample(sent, kind, None, time.monotonic() - start, None, repr(error)[:200])


def load(lane: Lane, ca: str, api_key: str, **overrides) -> AppLoad:
    rates = {**LOAD, **overrides}
    return AppLoad(lane.base_url, ca, api_key, SEARCH_COLLECTION, health_rps=rates["health_rps"],
                   search_rps=rates["search_rps"], ready_rps=rates["ready_rps"], max_seconds=300)


def changed_operations(pyinfra_output: str) -> list[str]:
    from tests.e2e.test_deploy import changed_operations as parse

    return parse(pyinfra_output)


def edge_nginx_logs(lane: Lane, since: float) -> tuple[list[dict], list[str]]:
    """(access log records, error log lines) of the edge's nginx since ``since`` (epoch s)."""
    container = lane.ssh(lane.edge, "docker ps -q --filter label=com.docker.compose.service=nginx").stdout.split()
    assert len(container) == 1, f"expected one nginx container on the edge host, found {container}"
    logs = lane.ssh(lane.edge, f"docker logs --since {int(since) - 1} {container[0]}", timeout=60)
    access = []
    for line in logs.stdout.splitlines():
        if line.startswith("{"):
            try:
                access.append(json.loads(line))
            except ValueError:
                pass
    return access, logs.stderr.splitlines()


def release_on(lane: Lane, host_name: str) -> dict:
    from govstack.inventory import load_inventory
    from govstack.release import release_path

    settings = next(e.settings for e in load_inventory(str(lane.inventory)) if e.name == host_name)
    return json.loads(lane.read(host_name, release_path(settings)))


def api(lane: Lane, ca: str, key: str, method: str, path: str, **kwargs) -> requests.Response:
    return requests.request(method, lane.base_url + path, headers={"X-API-Key": key}, verify=ca, timeout=60,
                            **kwargs)


@pytest.fixture(scope="module")
def searchable(deployed, edge_ca, admin_api_key):
    """One indexed document, so searches under load have something to find."""
    text = b"The national archive keeps land records since 1902, on three hosts at least."
    response = api(deployed, edge_ca, admin_api_key, "POST", f"/api/v1/collections/{SEARCH_COLLECTION}/documents",
                   files={"file": ("archive.txt", text)})
    assert response.status_code in (200, 201), response.text
    doc = response.json()
    deadline = time.monotonic() + INDEX_TIMEOUT_S
    while doc["index_status"] != "indexed":
        assert doc["index_status"] != "failed", doc
        assert time.monotonic() < deadline, f"not indexed within {INDEX_TIMEOUT_S} s: {doc}"
        time.sleep(1)
        doc = api(deployed, edge_ca, admin_api_key, "GET",
                  f"/api/v1/collections/{SEARCH_COLLECTION}/documents/{doc['id']}").json()
    return doc


# --- 0. the lane ---------------------------------------------------------------------------------

def test_pyinfra_and_testinfra_reach_every_host_and_images_carry_the_controllers_ids(lane):
    from govstack.inventory import load_inventory
    from govstack.remote import testinfra_host, testinfra_spec
    from govstack.shipping import local_image_ids

    entries = load_inventory(str(lane.inventory))
    assert sorted(e.name for e in entries) == sorted(lane.hosts)
    for entry in entries:
        host = lane.hosts[entry.name]
        assert set(host.groups) <= set(entry.groups), (entry.name, entry.groups)
        assert testinfra_spec(entry.name, entry.data).startswith(f"paramiko://root@{host.ip}:22?ssh_identity_file=")

    def probe(entry):
        target = testinfra_host(entry.name, entry.data)
        wanted = local_image_ids(entry.data["multihost_images"])
        ids = {image: target.run(f"docker image inspect --format '{{{{.Id}}}}' {shlex.quote(image)}").stdout.strip()
               for image in wanted}
        return (entry.name, target.check_output("hostname"),
                target.check_output("docker info --format '{{.ServerVersion}}'"), wanted, ids,
                target.check_output("ip route show default"))

    for name, hostname, engine, wanted, ids, default_route in parallel(probe, entries):
        assert hostname == name
        assert default_route == "", f"{name} has a route out of mh-net: {default_route}"
        assert engine, f"{name}: its own engine does not answer"
        assert ids == wanted, f"{name}: shipped images differ from the controller's"
    # A second shipping run is a no-op (only differing ids are shipped).
    from tests.multihost.conftest import run

    again = run([sys.executable, "-m", "pyinfra", "-y", str(lane.inventory), "tests/multihost/ship_images.py"],
                timeout=300)
    assert again.returncode == 0, tail(again)
    assert [op for op in changed_operations(again.stdout + again.stderr) if "images" in op] == []


# --- 1. govstack check ---------------------------------------------------------------------------

def test_govstack_check_passes_on_every_host(deployed):
    # -vv: `govstack check` passes -q itself; one line per test and host is wanted.
    result = govstack("check", "-i", str(deployed.inventory), "--", "-vv", "-p", "no:warnings", timeout=600,
                      log=deployed.workdir / "check.log")
    assert result.returncode == 0, tail(result, 6000)
    unchecked = [name for name in deployed.hosts
                 if not re.search(rf"\[([^\]]*-)?{re.escape(name)}(-[^\]]*)?\] PASSED", result.stdout)]
    assert not unchecked, f"hosts without a passing check: {unchecked}"


PROMETHEUS_UP_TIMEOUT_S = 180
BACKUP_RUN_TIMEOUT_S = 600
BACKUP_FRESHNESS = "govstack_backup_last_success_timestamp_seconds"


def prometheus_api(lane: Lane, path: str) -> dict:
    """GET Prometheus' HTTP API on the monitoring host, from inside its container."""
    monitor = lane.group("monitoring")[0]
    command = ("docker exec $(docker ps -q -f label=com.docker.compose.service=prometheus) "
               f"busybox wget -q -O - {shlex.quote('http://127.0.0.1:9090' + path)}")
    return json.loads(lane.ssh(monitor, command, timeout=60).stdout)


def test_prometheus_scrapes_every_host_and_finds_every_target_up(deployed):
    """Exporters run on the hosts they measure; the monitoring host scrapes
    them, the workers and the data host's probes on private addresses: every
    target is up, and the backup job's freshness (a textfile on the data
    host) reaches Prometheus."""
    data = deployed.group("data")[0]
    backup = deployed.ssh(data, "docker exec $(docker ps -q -f label=com.docker.compose.service=backup) "
                                "govstack-backup run", timeout=BACKUP_RUN_TIMEOUT_S, check=False)
    assert backup.returncode == 0, tail(backup)

    deadline = time.monotonic() + PROMETHEUS_UP_TIMEOUT_S
    while True:
        targets = prometheus_api(deployed, "/api/v1/targets?state=active")["data"]["activeTargets"]
        down = [(t["labels"]["job"], t["scrapeUrl"], t["lastError"]) for t in targets if t["health"] != "up"]
        fresh = prometheus_api(deployed, "/api/v1/query?query=" + quote(f"{BACKUP_FRESHNESS} > 0"))
        backed_up = {r["metric"].get("host") for r in fresh["data"]["result"]}
        if (not down and backed_up == {data.name}) or time.monotonic() > deadline:
            break
        time.sleep(5)
    assert not down, f"targets down: {down}"
    jobs = {t["labels"]["job"] for t in targets}
    assert {"app", "worker", "node", "nginx", "postgres", "seaweedfs", "s3", "chroma", "edge-tls"} <= jobs, jobs
    node_hosts = {t["labels"].get("host") for t in targets if t["labels"]["job"] == "node"}
    assert node_hosts == set(deployed.hosts), node_hosts
    workers = {t["labels"]["instance"].split(":")[0] for t in targets if t["labels"]["job"] == "worker"}
    assert workers == {host.ip for host in deployed.group("app")}, workers
    assert backed_up == {data.name}, fresh


def test_data_ports_answer_only_the_hosts_that_use_them(deployed):
    """Published on the data host's private address; its firewall lets the
    app hosts in and drops everyone else (here: the controller)."""
    import socket

    data, app_host = deployed.group("data")[0], deployed.group("app")[0]
    for port in (5432, 8333, 8000):
        probe = deployed.ssh(app_host, f"timeout 5 bash -c '</dev/tcp/{data.ip}/{port}' && echo open || echo shut")
        assert probe.stdout.strip() == "open", (port, probe.stderr)
        with pytest.raises(OSError):
            socket.create_connection((data.ip, port), timeout=3).close()


def test_restore_stops_and_restarts_the_writers_on_every_app_host(deployed, edge_ca, admin_api_key):
    """A restore run against the data host stops the app's writers (api,
    worker, analytics) of every app host (they write to its database), under
    every host's lock, and starts them again once the restore verified. The
    run restored is the backup of the test before, so no data is lost."""
    data, app_hosts = deployed.group("data")[0], deployed.group("app")
    listing = "docker ps -q --no-trunc --filter label=com.docker.compose.service={}"
    writers = {host.name: sorted(cid for service in APP_SERVICES
                                 for cid in deployed.ssh(host, listing.format(service)).stdout.split())
               for host in app_hosts}
    # One running container of each writer service per app host (the serving color's).
    assert all(len(ids) == len(APP_SERVICES) for ids in writers.values()), writers
    started = deployed.ssh(data, "date -u +%Y-%m-%dT%H:%M:%S.%NZ").stdout.strip()
    result = govstack("restore", "--snapshot", "latest", "--component", "postgres", "--force", "--json",
                      "-i", str(deployed.inventory), "--host", data.name, timeout=900,
                      log=deployed.workdir / "restore-split.log")
    assert result.returncode == 0, tail(result)
    report = json.loads(result.stdout)
    expected = sum(len(ids) for ids in writers.values())
    assert report["writers_stopped"] == report["writers_restarted"] == expected, report
    # The report names containers by their short ids.
    assert {name: sorted(ids) for name, ids in report["writers"].items()} == {
        name: sorted(cid[:12] for cid in ids) for name, ids in writers.items()}
    # Each of them was stopped and started again during the restore, and is healthy.
    fmt = "{{.State.StartedAt}} {{.State.Health.Status}}"
    for host in app_hosts:
        for cid in writers[host.name]:
            since, health = deployed.ssh(host, f"docker inspect --format '{fmt}' {cid}").stdout.split()
            assert since > started and health == "healthy", (host.name, cid, since, started, health)
    ready = api(deployed, edge_ca, admin_api_key, "GET", "/ready")
    assert ready.status_code == 200, ready.text
    # Every host's ledger says so (the restore held every host's lock and stopped writers beyond the data host).
    history = govstack("history", "--json", "-i", str(deployed.inventory), timeout=300)
    last = {}
    for line in history.stdout.splitlines():
        record = json.loads(line)
        last[record["host"]] = (record["action"], record["version"], record["result"])
    assert last == {host.name: ("restore", report["run"], "ok") for host in deployed.hosts.values()}, last


# --- 2. end to end through the edge --------------------------------------------------------------

def test_upload_index_search_download_through_the_edge(deployed, edge_ca, admin_api_key):
    collection = f"mh-{uuid.uuid4().hex[:6]}"
    body = f"Cadastral survey of the river delta, parcel {uuid.uuid4().hex[:8]}, kept by the land office.".encode()
    upload = api(deployed, edge_ca, admin_api_key, "POST", f"/api/v1/collections/{collection}/documents",
                 files={"file": ("survey.txt", body)})
    assert upload.status_code == 201, upload.text
    doc = upload.json()
    deadline = time.monotonic() + INDEX_TIMEOUT_S
    while doc["index_status"] != "indexed":
        assert doc["index_status"] != "failed" and time.monotonic() < deadline, doc
        time.sleep(1)
        doc = api(deployed, edge_ca, admin_api_key, "GET", f"/api/v1/collections/{collection}/documents/{doc['id']}"
                  ).json()
    search = api(deployed, edge_ca, admin_api_key, "POST", "/api/v1/search",
                 json={"query": "river delta land survey", "collection": collection, "k": 3, "mode": "hybrid"})
    assert search.status_code == 200, search.text
    results = search.json()["results"]
    assert results and results[0]["document_id"] == doc["id"], results
    link = api(deployed, edge_ca, admin_api_key, "GET",
               f"/api/v1/collections/{collection}/documents/{doc['id']}/download")
    assert link.status_code == 200, link.text
    url = link.json()["url"]
    assert url.startswith(deployed.base_url + "/s3/"), url
    got = requests.get(url, verify=edge_ca, timeout=60)
    assert got.status_code == 200 and got.content == body, (got.status_code, got.text[:300])


# --- 3. blue/green across the app hosts ----------------------------------------------------------

def test_blue_green_across_app_hosts_under_load_fails_no_request(deployed, edge_ca, admin_api_key, searchable):
    app_hosts = deployed.group("app")
    assert len(app_hosts) == 2
    before = {host.name: release_on(deployed, host.name) for host in app_hosts}
    assert len({(r["color"], r["version"]) for r in before.values()}) == 1, before
    current = next(iter(before.values()))
    version = f"mh-{uuid.uuid4().hex[:8]}"
    # The version exists without a build: the current image under a new tag,
    # on the controller and on each app host (so nothing needs shipping).
    subprocess.run(["docker", "tag", f"govstack/app:{current['version']}", f"govstack/app:{version}"], check=True)
    parallel(lambda host: deployed.ssh(host, f"docker tag govstack/app:{current['version']} govstack/app:{version}"),
             app_hosts)

    started = time.time()
    with load(deployed, edge_ca, admin_api_key) as generator:
        time.sleep(3)
        result = govstack("deploy", "--version", version, "-i", str(deployed.inventory), timeout=600,
                          log=deployed.workdir / "deploy-bluegreen.log")
        time.sleep(3)
    report = generator.report
    print(f"\nblue/green {current['color']} -> {version}: {report.summary()}")
    assert result.returncode == 0, tail(result)
    assert report.rate >= 45, f"load was only {report.rate:.1f} requests/s"
    assert not report.failures, f"{len(report.failures)} failed requests, e.g. {report.failures[:3]}"

    after = {host.name: release_on(deployed, host.name) for host in app_hosts}
    new_color = "green" if current["color"] == "blue" else "blue"
    assert all(r["version"] == version and r["color"] == new_color for r in after.values()), after
    assert report.first_served_by(new_color) is not None, "the new color never answered through the edge"
    # After the switch only the new color answers, from both app hosts.
    switched = report.first_served_by(new_color)
    assert not [s for s in report.samples if s.at > switched + 5 and s.color == current["color"]]
    access, _ = edge_nginx_logs(deployed, started)
    upstreams = {record["upstream"].split(":")[0] for record in access if record.get("upstream")}
    assert {host.ip for host in app_hosts} <= upstreams, f"not every app host served: {upstreams}"


def test_an_app_host_that_fails_stops_the_rollout_before_the_switch(deployed, edge_ca, admin_api_key):
    """One app host gets a version whose API never gets ready: no host switches."""
    app_hosts = deployed.group("app")
    good, bad = app_hosts[0], app_hosts[-1]
    before = {host.name: release_on(deployed, host.name) for host in deployed.hosts.values()}
    current = release_on(deployed, good.name)
    live_conf = "/opt/govstack/config/nginx/nginx.conf"
    conf_before = deployed.read(deployed.edge, live_conf)
    version = f"mh-half-{uuid.uuid4().hex[:6]}"
    deployed.ssh(good, f"docker tag govstack/app:{current['version']} govstack/app:{version}")
    # Migrations work, the API never starts: its healthcheck never passes.
    never_ready = '["sh", "-c", "[ \\"$0\\" = migrate ] && exec govstack-app migrate; exec sleep infinity"]'
    dockerfile = f"FROM govstack/app:{current['version']}\nENTRYPOINT {never_ready}\n"
    deployed.ssh(bad, f"printf %s {shlex.quote(dockerfile)} | docker build -q -t govstack/app:{version} -", timeout=120)
    result = govstack("deploy", "--version", version, "-i", str(deployed.inventory), timeout=600,
                      env={"GOVSTACK__HEALTHY_TIMEOUT_S": "25"}, log=deployed.workdir / "deploy-half.log")
    assert result.returncode != 0, tail(result)
    assert "traffic stays on the previous color" in result.stderr, tail(result)
    assert {name: release_on(deployed, name) for name in deployed.hosts} == before
    assert deployed.read(deployed.edge, live_conf) == conf_before
    ready = api(deployed, edge_ca, admin_api_key, "GET", "/ready")
    assert ready.status_code == 200 and ready.headers["x-govstack-color"] == current["color"]
    # The idle color started on the good host (and never got ready on the
    # bad one): stop both, as an operator would after reading the cause.
    idle = "green" if current["color"] == "blue" else "blue"
    parallel(lambda host: deployed.ssh(host, f"docker compose -p govstack-{idle} -f /opt/govstack/app/{idle}.yml "
                                             "stop -t 5", timeout=120), app_hosts)


# --- 4. an app host's engine stops under load ----------------------------------------------------

# The engine and what it runs stop, as when an operator stops docker on a
# host without live-restore (or the host goes away): connections are refused.
STOP_ENGINE = (
    "docker ps -q | xargs -r docker stop -t 10 >/dev/null; kill $(cat /var/run/docker.pid); "
    "i=0; while [ -e /var/run/docker.pid ] && [ $i -lt 60 ]; do i=$((i+1)); sleep 0.5; done"
)
NGINX_TIME = re.compile(r"^(\d{4}/\d\d/\d\d \d\d:\d\d:\d\d) \[\w+\] .*upstream server temporarily disabled")


def test_app_host_engine_stopped_under_load_fails_no_request_once_marked_down(deployed, edge_ca, admin_api_key,
                                                                            searchable):
    victim = deployed.group("app")[-1]
    started = time.time()
    try:
        with load(deployed, edge_ca, admin_api_key) as generator:
            time.sleep(5)
            stopped_at = time.time()
            deployed.ssh(victim, STOP_ENGINE, timeout=90)
            time.sleep(20)
        report = generator.report
        access, errors = edge_nginx_logs(deployed, started)
        marks = [datetime.strptime(m.group(1), "%Y/%m/%d %H:%M:%S").replace(tzinfo=UTC).timestamp()
                 for m in map(NGINX_TIME.match, errors) if m]
        retried = [r for r in access if "," in r.get("upstream", "")]
        print(f"\n{victim.name} engine stopped: {report.summary()}; "
              f"{len(retried)} requests retried on another app host")
        assert marks, f"the edge never marked {victim.name} down (no 'temporarily disabled' in its error log)"
        marked_down = marks[0]
        print(f"the edge marked {victim.name} down {marked_down - stopped_at:.1f} s after the stop")
        late = [s for s in report.failures if s.at >= marked_down + 1]  # nginx logs whole seconds
        early = [s for s in report.failures if s.at < marked_down + 1]
        print(f"failed before the edge marked it down: {len(early)}, after: {len(late)}")
        assert not late, f"{len(late)} requests failed after the edge marked {victim.name} down: {late[:3]}"
        assert report.rate >= 45, f"load was only {report.rate:.1f} requests/s"
    finally:
        # Bring the host back (its engine is started by the deploy) for the next test.
        repaired = govstack("up", "-i", str(deployed.inventory), log=deployed.workdir / "up-repair.log")
        assert repaired.returncode == 0, f"redeploy after the engine stop failed:\n{tail(repaired)}"


# --- 5. a converged inventory redeploys as a no-op (stale secrets aside) -------------------------

def test_redeploy_of_the_whole_inventory_changes_nothing_but_stale_secrets(deployed):
    from govstack.inventory import load_inventory

    # Secrets a host's roles do not read, as every host held them before
    # secrets followed roles (stand-in values): the redeploy removes them,
    # and changes nothing else.
    secrets_dir = {entry.name: entry.settings.secrets_dir for entry in load_inventory(str(deployed.inventory))}
    planted = {deployed.edge.name: ["postgres_password", "app_admin_api_key"],
               deployed.group("app")[0].name: ["postgres_password", "restic_password"]}
    for host, names in planted.items():
        for name in names:
            path = shlex.quote(f"{secrets_dir[host]}/{name}")
            deployed.ssh(host, f"umask 077 && head -c 30 /dev/urandom | base64 > {path}")
    result = govstack("up", "-i", str(deployed.inventory), log=deployed.workdir / "up-again.log")
    assert result.returncode == 0, tail(result)
    changed = changed_operations(result.stdout + result.stderr)
    # One "Success" per host and changed operation; pyinfra joins the names of
    # the hosts' operations at one position ("No stale secret a, … b").
    removed = [operation for operation in changed if "No stale secret " in operation]
    assert [operation for operation in changed if operation not in removed] == [], (
        f"a converged inventory changed: {changed}")
    assert len(removed) == sum(len(names) for names in planted.values()), removed
    for host, names in planted.items():
        held = deployed.ssh(host, f"ls -A {shlex.quote(secrets_dir[host])}").stdout.split()
        assert not set(held) & set(names), (host, held)
