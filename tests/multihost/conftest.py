"""Fixtures of the multi-host lane: 4 containers as hosts, images built once
on the controller and shipped, the inventory deployed over SSH.

The whole session is bounded: every step has a timeout, and a watchdog
removes the hosts when MULTIHOST_BUDGET_S (default 3600) runs out, so a hung
step fails fast instead of holding CI. MULTIHOST_KEEP=1 keeps the hosts
(and prints how to reach them) for debugging; `python -m
tests.multihost.harness down` removes them later.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.multihost.harness import DEFAULT_LAYOUT, REPO_ROOT, Harness, TestHost, parallel

# Measured on the 2-core reference machine, beside the two full tiers as `make test` runs it:
# 23 min on a quiet machine, 37 min (2220 s) with a helper deploying meanwhile. The budget is
# for a hung step, not a slow machine: an hour still ends well inside CI's 90 minutes.
BUDGET_S = float(os.environ.get("MULTIHOST_BUDGET_S", "3600"))
KEEP = os.environ.get("MULTIHOST_KEEP") == "1"
# The workdir of a lane kept with MULTIHOST_KEEP=1: run tests against its
# hosts again without starting new ones (while developing).
REUSE = os.environ.get("MULTIHOST_REUSE")
# Every image of the all-in-one stack to every host (for an inventory whose
# hosts are in no group), instead of each group's images.
SHIP_ALL = os.environ.get("MULTIHOST_SHIP_ALL") == "1"
PYINFRA_TIMEOUT_S = 900
# Filled as the session goes; printed in pytest's summary (CI logs keep it).
TIMINGS: dict[str, float] = {}


def _timed(timings: dict[str, float], key: str):
    class _Timer:
        def __enter__(self):
            self.started = time.monotonic()

        def __exit__(self, *exc):
            timings[key] = round(time.monotonic() - self.started, 1)

    return _Timer()


def run(cmd: list[str], timeout: float, env: dict[str, str] | None = None, log: Path | None = None,
        ) -> subprocess.CompletedProcess:
    """A controller command in the repo root; its output also goes to ``log``."""
    result = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, **(env or {})})
    if log is not None:
        log.write_text(f"$ {' '.join(cmd)}\n{result.stdout}\n--- stderr ---\n{result.stderr}")
    return result


def govstack(*args: str, timeout: float = PYINFRA_TIMEOUT_S, env: dict[str, str] | None = None,
             log: Path | None = None) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "govstack.cli", *args], timeout=timeout, env=env, log=log)


def tail(result: subprocess.CompletedProcess, chars: int = 3000) -> str:
    return f"{result.stdout[-chars:]}\n--- stderr ---\n{result.stderr[-chars:]}"


@dataclass
class Lane:
    """The running lane, as the tests see it."""

    harness: Harness
    workdir: Path
    inventory: Path
    hosts: dict[str, TestHost]
    timings: dict[str, float] = field(default_factory=dict)

    def group(self, name: str) -> list[TestHost]:
        return [host for host in self.hosts.values() if name in host.groups]

    @property
    def edge(self) -> TestHost:
        return self.group("edge")[0]

    @property
    def base_url(self) -> str:
        return f"https://{self.edge.ip}"

    def ssh(self, host: TestHost | str, command: str, timeout: float = 120, check: bool = True):
        return self.harness.ssh(host, command, timeout=timeout, check=check)

    def read(self, host: TestHost | str, path: str) -> str:
        return self.ssh(host, f"cat {path}").stdout


# Shared settings of the test inventory. The edge's public name is its
# address on mh-net (its certificate gets an IP SAN); the load tests send
# everything from one client address, so the per-client limits are raised.
def shared_settings(edge_ip: str) -> dict:
    return {
        "edge": {"hostname": edge_ip, "api_rate_per_s": 200, "api_burst": 200},
        "healthy_timeout_s": 240,
        # The deploy ships each host its images (a no-op after ship_images,
        # which the lane runs first to time it and to check the ids).
        "images": {"ship_from_controller": True},
    }


def secrets_home(workdir: Path) -> Path:
    """The controller's copies of this run's secrets: GOVSTACK_SECRETS_HOME of every command
    the lane runs (a test points it elsewhere to play a fresh controller)."""
    return workdir / "secrets-home"


def _watchdog(harness: Harness) -> threading.Timer:
    def expire() -> None:
        print(f"\nmultihost: budget of {BUDGET_S:.0f} s spent; removing the test hosts", file=sys.stderr)
        harness.teardown(timeout_s=60)

    timer = threading.Timer(BUDGET_S, expire)
    timer.daemon = True
    timer.start()
    return timer


def build_controller_images(workdir: Path, timings: dict[str, float]) -> None:
    """The offline images, built once on the controller's engine (no-op when current)."""
    inventory = workdir / "controller.py"
    inventory.write_text(
        'controller = [("@local", {"govstack": {"stack_root": "/var/lib/govstack-mh-build"}})]\n'
    )
    with _timed(timings, "controller_images_s"):
        result = run([sys.executable, "-m", "pyinfra", "-y", str(inventory),
                      str(REPO_ROOT / "tests" / "multihost" / "build_images.py")],
                     timeout=PYINFRA_TIMEOUT_S, log=workdir / "controller-images.log")
    assert result.returncode == 0, f"building the images on the controller failed:\n{tail(result)}"


def ship_images(lane: Lane) -> None:
    """Start each host's engine and ship it its images (one pyinfra run, hosts in parallel)."""
    with _timed(lane.timings, "ship_images_s"):
        result = run([sys.executable, "-m", "pyinfra", "-y", str(lane.inventory),
                      str(REPO_ROOT / "tests" / "multihost" / "ship_images.py")],
                     timeout=PYINFRA_TIMEOUT_S, log=lane.workdir / "ship.log")
    assert result.returncode == 0, f"shipping images failed:\n{tail(result)}"


@pytest.fixture(scope="session")
def lane(tmp_path_factory) -> Lane:
    """4 hosts (edge+monitoring, app, app, data), images shipped, inventory written."""
    from govstack.release import source_version
    from govstack.settings import Settings
    from tests.multihost.images import all_in_one_images, images_for_groups

    workdir = Path(REUSE or os.environ.get("MULTIHOST_WORKDIR") or tmp_path_factory.mktemp("multihost"))
    environment = pytest.MonkeyPatch()
    environment.setenv("GOVSTACK_SECRETS_HOME", str(secrets_home(workdir)))
    if REUSE:
        yield _reused_lane(workdir)
        environment.undo()
        return
    harness = Harness(workdir)
    timings = TIMINGS
    watchdog = _watchdog(harness)
    try:
        build_controller_images(workdir, timings)
        with _timed(timings, "hosts_start_s"):
            hosts = {host.name: host for host in harness.start(DEFAULT_LAYOUT)}
        edge = next(host for host in hosts.values() if "edge" in host.groups)
        settings = Settings.model_validate(shared_settings(edge.ip))
        version = source_version()
        # Each host's image list is host data that ship_images.py reads.
        inventory = harness.write_inventory(
            workdir / "multihost.py",
            shared=shared_settings(edge.ip),
            host_data={name: {"multihost_images": all_in_one_images(settings, version) if SHIP_ALL
                              else images_for_groups(settings, host.groups, version)}
                       for name, host in hosts.items()},
        )
        lane = Lane(harness, workdir, inventory, hosts, timings)
        ship_images(lane)
        yield lane
    finally:
        environment.undo()
        watchdog.cancel()
        if KEEP:
            print(f"multihost: hosts kept; inventory {workdir / 'multihost.py'}; "
                  "remove with `python -m tests.multihost.harness down`")
        else:
            started = time.monotonic()
            harness.teardown(timeout_s=120)
            timings["teardown_s"] = round(time.monotonic() - started, 1)


def _reused_lane(workdir: Path) -> Lane:
    from tests.multihost.harness import NETWORK, PREFIX, docker

    harness = Harness(workdir)
    for name, groups in DEFAULT_LAYOUT.items():
        host = TestHost(name, groups, f"{PREFIX}{name}")
        fmt = f'{{{{(index .NetworkSettings.Networks "{NETWORK}").IPAddress}}}}'
        host.ip = docker("inspect", "--format", fmt, host.container).stdout.decode().strip()
        harness.hosts[name] = host
    return Lane(harness, workdir, workdir / "multihost.py", dict(harness.hosts), TIMINGS)


@pytest.fixture(scope="session")
def deployed(lane: Lane) -> Lane:
    """The inventory deployed over SSH with `govstack up` (the role-based deploy)."""
    with _timed(lane.timings, "first_deploy_s"):
        result = govstack("up", "-i", str(lane.inventory), log=lane.workdir / "up-first.log")
    assert result.returncode == 0, f"govstack up over SSH failed:\n{tail(result)}"
    return lane


@pytest.fixture(scope="session")
def edge_ca(deployed: Lane) -> str:
    """The edge's self-signed certificate, read over SSH, as a CA file for clients."""
    from govstack.inventory import load_inventory

    edge_settings = next(entry.settings for entry in load_inventory(str(deployed.inventory))
                         if entry.name == deployed.edge.name)
    path = deployed.workdir / "edge-ca.crt"
    path.write_text(deployed.read(deployed.edge, f"{edge_settings.config_dir}/nginx/tls/tls.crt"))
    return str(path)


@pytest.fixture(scope="session")
def admin_api_key(deployed: Lane) -> str:
    """Through the operator CLI, which reads the secret over SSH from an app host."""
    app_host = deployed.group("app")[0].name
    result = govstack("secret", "app_admin_api_key", "--host", app_host, "--reason", "multi-host lane: test client key",
                      "-i", str(deployed.inventory),
                      timeout=120)
    assert result.returncode == 0, tail(result)
    return result.stdout.strip()


def pytest_terminal_summary(terminalreporter):
    if TIMINGS:
        terminalreporter.write_sep("-", "multihost timings (s)")
        terminalreporter.write_line(", ".join(f"{key} {value}" for key, value in TIMINGS.items()))


__all__ = ["Lane", "govstack", "parallel", "tail"]
