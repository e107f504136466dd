"""testinfra suite for every host of an inventory (`govstack check`).

GOVSTACK_INVENTORY names the inventory (default: inventories/local.py). Each
test runs once per host, with that host's settings, so expectations come from
the same model the deploy rendered from.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from govstack.inventory import InventoryHost, load_inventory
from govstack.plan import StackPlan
from govstack.remote import testinfra_host

REPO_ROOT = Path(__file__).resolve().parents[2]


def inventory_path() -> str:
    return os.environ.get("GOVSTACK_INVENTORY", str(REPO_ROOT / "inventories" / "local.py"))


@dataclass
class Target:
    entry: InventoryHost
    host: object  # testinfra Host
    # Every host of the inventory: a split inventory's topology (roles, addresses).
    entries: tuple[InventoryHost, ...] = ()

    @property
    def settings(self):
        return self.entry.settings

    @property
    def role_fields(self) -> dict:
        from govstack.roles import plan_fields_for_entry

        return plan_fields_for_entry(self.entry, self.entries or (self.entry,))

    def requires(self, role: str) -> None:
        """Skip a check of a part of the stack this host does not run (split inventories)."""
        from govstack.roles import ALL_ROLES

        if role not in self.role_fields.get("roles", ALL_ROLES):
            pytest.skip(f"{self.entry.name} is not in group {role!r}")

    def plan(self) -> StackPlan:
        from govstack.tuning import HostResources

        cpus = int(self.host.check_output("nproc"))
        mem_kb = int(self.host.check_output("awk '/^MemTotal:/ {print $2}' /proc/meminfo"))
        limit = self.host.run(
            "cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes"
        ).stdout.strip()
        limit_mb = int(limit) // 2**20 if limit.isdigit() and int(limit) < 2**60 else None
        if limit_mb is not None and limit_mb >= mem_kb // 1024:
            limit_mb = None
        return StackPlan(self.settings, HostResources(mem_kb // 1024, cpus, limit_mb), **self.role_fields)

    def container(self, service: str, project: str | None = None) -> str:
        project = project or self.settings.project
        out = self.host.check_output(
            f"docker ps -q --filter label=com.docker.compose.project={project} "
            f"--filter label=com.docker.compose.service={service}"
        )
        ids = out.split()
        assert len(ids) == 1, f"expected one running {service} container in {project}, found {len(ids)}"
        return ids[0]


_ENTRIES: dict[str, list[InventoryHost]] = {}


def inventory_entries() -> list[InventoryHost]:
    path = inventory_path()
    if path not in _ENTRIES:
        _ENTRIES[path] = load_inventory(path)
    return _ENTRIES[path]


def pytest_generate_tests(metafunc):
    if "target" in metafunc.fixturenames:
        entries = inventory_entries()
        metafunc.parametrize("target", entries, ids=[entry.name for entry in entries], indirect=True)


@pytest.fixture(scope="session")
def _targets():
    return {}


@pytest.fixture
def target(request, _targets, deployed_stack) -> Target:
    entry: InventoryHost = request.param
    if entry.name not in _targets:
        _targets[entry.name] = Target(entry, testinfra_host(entry.name, entry.data), tuple(inventory_entries()))
    return _targets[entry.name]
