"""Golden renders: every file each host of the project's inventories gets, in
both image lanes, stored under tests/unit/golden/ and compared byte for byte
by tests/unit/test_golden.py.

A refactor keeps them identical. A change that means to alter what a host
gets regenerates them in the same commit (and says so in its message):

    .venv/bin/python -m tests.unit.golden      # or: make golden

Cases: the single-host inventories (inventories/local.py,
tests/inventories/test_local.py), the split example (inventories/production.py)
and the multi-host lane's layout (tests/multihost), each host in each lane.
Everything host-specific is pinned: the host's resources and the serving
release, so a change to app/ (whose hash names the first release) does not
move them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
LANES = ("offline", "upstream")
HOST = {"memory_mb": 8192, "cpus": 4}
RELEASE = ("blue", "golden-1")
# The multi-host lane's hosts get addresses from Docker; these stand in for them.
MULTIHOST_ADDRESSES = {"host1": "10.99.0.11", "host2": "10.99.0.12", "host3": "10.99.0.13", "host4": "10.99.0.14"}


@dataclass(frozen=True)
class Entry:
    """One inventory host as the loader reports it: name, groups, data layers."""

    name: str
    groups: tuple[str, ...]
    data: dict[str, Any]
    layers: tuple[Any, ...]


@lru_cache
def _inventory(path: str) -> tuple[Entry, ...]:
    """The hosts of an inventory file, read by pyinfra's own loader (in a child process)."""
    out = subprocess.run([sys.executable, "-m", "govstack.inventory", str(REPO_ROOT / path)],
                         capture_output=True, text=True, timeout=120, check=True, cwd=REPO_ROOT).stdout
    return tuple(Entry(e["name"], tuple(e["groups"]), e["data"], tuple(e["layers"])) for e in json.loads(out))


def _multihost() -> tuple[Entry, ...]:
    from tests.multihost.conftest import shared_settings
    from tests.multihost.harness import DEFAULT_LAYOUT

    edge = next(name for name, groups in DEFAULT_LAYOUT.items() if "edge" in groups)
    shared = shared_settings(MULTIHOST_ADDRESSES[edge])
    return tuple(Entry(name, groups, {"ssh_hostname": MULTIHOST_ADDRESSES[name]}, (shared,))
                 for name, groups in DEFAULT_LAYOUT.items())


CASES = {
    "local": lambda: _inventory("inventories/local.py"),
    "test_local": lambda: _inventory("tests/inventories/test_local.py"),
    "production": lambda: _inventory("inventories/production.py"),
    "multihost": _multihost,
}


def case_names() -> list[str]:
    return [f"{case}-{lane}" for case in CASES for lane in LANES]


def plans(case_name: str) -> dict[str, Any]:
    """Host name -> StackPlan of every host of one case."""
    from govstack.plan import StackPlan
    from govstack.release import Release
    from govstack.roles import build_topology
    from govstack.settings import build_settings
    from govstack.tuning import HostResources

    case, lane = case_name.rsplit("-", 1)
    entries = CASES[case]()
    settings = {e.name: build_settings([*e.layers, {"images": {"lane": lane}}], environ={}, source=e.name)
                for e in entries}
    topology = build_topology((e.name, e.groups, e.data, settings[e.name]) for e in entries)
    out = {}
    for e in entries:
        fields: dict[str, Any] = {}
        if topology is not None:
            member = topology.member(e.name)
            fields = {"roles": member.roles, "topology": topology, "address": member.address}
        out[e.name] = StackPlan(settings[e.name], HostResources(**HOST), recorded_release=Release(*RELEASE),
                                **fields)
    return out


def _plan_summary(plan: Any) -> str:
    """What a host's plan decides beyond its files: services, images, builds, secrets, ports."""
    from govstack import catalog, images

    s = plan.settings
    # Every offline build of the catalog (either lane), the app's, and the backup job's when enabled.
    builds = [svc.offline(s) for svc in catalog.SERVICES.values()
              if svc.offline and svc.offline is not catalog.backup_image]
    builds.append(images.app_image(s, RELEASE[1]))
    if s.backup.enabled:
        builds.append(catalog.backup_image(s))
    summary = {
        "services": plan.services,
        "images": {service: plan.image(service) for service in plan.services},
        "host_images": plan.host_images,
        "data_dirs": plan.data_dirs,
        "secret_names": plan.secret_names,
        "compose_secrets": plan.compose_secrets,
        "stale_secret_files": plan.stale_secret_files,
        "published_data_ports": plan.published_data_ports,
        "published_metrics_ports": plan.published_metrics_ports,
        "firewall_openings": plan.firewall_openings,
        "networks": plan.networks,
        "postgres_memory_mb": plan.postgres_memory_mb,
        "offline_builds": [
            {"service": b.service, "tag": b.tag, "context": b.context.relative_to(REPO_ROOT).as_posix(),
             "dockerfile": b.dockerfile, "needs_ca_certs": b.needs_ca_certs,
             # Hashes of other contexts move with any file there; the test of
             # images proves those are passed.
             "build_args": {k: v for k, v in b.build_args.items() if not k.endswith("_HASH")}}
            for b in builds
        ],
    }
    return json.dumps(summary, indent=2, sort_keys=True) + "\n"


def host_files(plan: Any) -> dict[str, str]:
    """Path -> content of everything rendered for one host. Host paths as they are
    (without the leading /); what is not a host file under ``_plan/``."""
    from govstack.backup.render import backup_files
    from govstack.monitoring.render import render_app_target_files, render_rule_tests
    from govstack.render import render_app_compose, render_daemon_json, rendered_files

    s = plan.settings
    files = dict(rendered_files(plan))
    if s.backup.enabled and plan.has_role("data"):
        files.update(backup_files(plan))
    files["/etc/docker/daemon.json"] = render_daemon_json(plan)
    out = {path.lstrip("/"): text for path, text in files.items()}
    if plan.has_role("app"):
        out["_plan/app-green.yml"] = render_app_compose(plan, "green", "golden-2")
    if plan.has_role("monitoring") and s.monitoring.enabled:
        for name, text in render_app_target_files(plan, ("blue", "green"), "green").items():
            out[f"_plan/targets-blue-green/{name}"] = text
        for name, text in render_rule_tests(plan).items():
            out[f"_plan/promtool-tests/{name}"] = text
    out["_plan/summary.json"] = _plan_summary(plan)
    return out


def _host_dir(name: str) -> str:
    return name.lstrip("@")


def rendered(case_name: str) -> dict[str, str]:
    """Relative path under the case's golden directory -> content."""
    return {f"{_host_dir(name)}/{path}": text
            for name, plan in plans(case_name).items() for path, text in host_files(plan).items()}


def stored(case_name: str) -> dict[str, str]:
    root = GOLDEN_DIR / case_name
    return {path.relative_to(root).as_posix(): path.read_text()
            for path in sorted(root.rglob("*")) if path.is_file()}


def write(case_name: str) -> Iterator[str]:
    root = GOLDEN_DIR / case_name
    shutil.rmtree(root, ignore_errors=True)
    for path, text in sorted(rendered(case_name).items()):
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        yield path


if __name__ == "__main__":
    for name in case_names():
        count = sum(1 for _ in write(name))
        print(f"{name}: {count} files under {(GOLDEN_DIR / name).relative_to(REPO_ROOT)}")
