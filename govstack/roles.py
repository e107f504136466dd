"""Roles: which part of the stack a host runs, and where the other parts are.

An inventory host's roles are its groups among ``edge``, ``app``, ``data``
and ``monitoring``; a host in none of them is all-in-one (every role), so a
single host without groups renders exactly as before roles existed.

An inventory is *split* when some host lacks a role. Then the hosts reach
each other by their private addresses (host data ``govstack.address``,
else ``ssh_hostname``): the data host publishes Postgres, the S3 gateway
and Chroma on its private address only, each app host publishes its API
(one port per color) on its own, and the edge's nginx upstream lists every
app host of the serving color. One :class:`Topology` describes that, built
the same way in a deploy (from pyinfra's inventory) and in the checks (from
``govstack.inventory.load_inventory``).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The roles themselves are a fact settings validate against.
from govstack.settings.catalog import ALL_ROLES, ROLES


class TopologyError(ValueError):
    """The inventory's groups cannot make a working stack (the message says why)."""


def roles_of(groups: Iterable[str]) -> frozenset[str]:
    roles = frozenset(groups) & ALL_ROLES
    return roles or ALL_ROLES


@dataclass(frozen=True)
class Member:
    name: str
    roles: frozenset[str]
    address: str


@dataclass(frozen=True)
class Topology:
    """Every host of a split inventory with its roles and private address."""

    members: tuple[Member, ...]

    def with_role(self, role: str) -> list[Member]:
        return [member for member in self.members if role in member.roles]

    def addresses(self, role: str) -> list[str]:
        return [member.address for member in self.with_role(role)]

    @property
    def data_address(self) -> str:
        # One data host runs Postgres, the S3 gateway and Chroma; more data
        # hosts are for SeaweedFS volume servers (docs/multihost.md).
        return self.addresses("data")[0]

    @property
    def app_addresses(self) -> list[str]:
        return self.addresses("app")

    @property
    def edge_addresses(self) -> list[str]:
        return self.addresses("edge")

    def member(self, name: str) -> Member:
        return next(member for member in self.members if member.name == name)


def host_address(name: str, data: Mapping[str, Any], settings: Any) -> str:
    return str(getattr(settings, "address", None) or data.get("ssh_hostname") or name)


def build_topology(hosts: Iterable[tuple[str, Iterable[str], Mapping[str, Any], Any]]) -> Topology | None:
    """(name, groups, host data, settings) of every inventory host -> the
    topology of a split inventory, or None when every host runs every role."""
    hosts = list(hosts)
    members = tuple(
        Member(name, roles_of(groups), host_address(name, data, settings)) for name, groups, data, settings in hosts
    )
    if all(member.roles == ALL_ROLES for member in members):
        return None
    for name, _, _, settings in hosts:
        if settings.edge.real_ip_header == "proxy_protocol":
            # The monitoring hosts probe each edge host's published HTTPS
            # port, which would then accept PROXY-protocol connections only.
            raise TopologyError(f"{name}: edge.real_ip_header proxy_protocol is for all-in-one hosts: in a split "
                                "inventory the monitoring hosts' probe of the edge cannot speak the PROXY protocol")
    topology = Topology(members)
    for role in ROLES:
        if not topology.with_role(role):
            raise TopologyError(f"a split inventory needs a host in group {role!r}; none is")
    for member in members:
        try:
            ipaddress.ip_address(member.address)
        except ValueError:
            raise TopologyError(
                f"{member.name}: private address {member.address!r} is not an IP address; set govstack.address "
                "(ports are published on it)"
            ) from None
    return topology


def topology_from_pyinfra(inventory: Any) -> Topology | None:
    """The topology of the inventory a pyinfra deploy runs against."""
    from govstack.settings import settings_for_host

    return build_topology(
        (host.name, host.groups, host.data.dict(), settings_for_host(host)) for host in inventory
    )


def topology_from_entries(entries: Iterable[Any]) -> Topology | None:
    """The topology of ``govstack.inventory.load_inventory``'s hosts."""
    return build_topology((e.name, e.groups, e.data, e.settings) for e in entries)


# --- secrets all hosts of a split inventory share ------------------------------------------

def controller_secrets_dir(settings: Any, topology: Topology) -> Path:
    """Where the controller keeps the shared secrets of a split inventory:
    ``settings.shared_secrets_dir``, else one directory per project and data
    host under ``$GOVSTACK_SECRETS_HOME`` (default ~/.local/share/govstack/secrets)."""
    if getattr(settings, "shared_secrets_dir", None):
        return Path(settings.shared_secrets_dir)
    home = Path(os.environ.get("GOVSTACK_SECRETS_HOME") or Path.home() / ".local/share/govstack/secrets")
    return home / f"{settings.project}-{topology.with_role('data')[0].name}"


def shared_secret_values(directory: Path, wanted: Mapping[str, int]) -> dict[str, str]:
    """name -> value of each generated secret (name -> length), made once on
    the controller (mode 0600 in a 0700 directory) and read on later runs, so
    every host of the inventory gets the same value. Never printed."""
    from govstack.secrets import new_secret_value

    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    directory.chmod(0o700)
    values = {}
    for name, length in sorted(wanted.items()):
        path = directory / name
        if not path.exists():
            value = new_secret_value(length)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                pass  # made by a concurrent run meanwhile: read theirs
            else:
                with os.fdopen(fd, "w") as file:
                    file.write(value)
        values[name] = path.read_text().strip()
    return values


# --- a pyinfra host's part -------------------------------------------------------------------

def plan_fields(host: Any, inventory: Any, settings: Any) -> dict[str, Any]:
    """StackPlan's roles/topology/address for a host in a pyinfra deploy;
    empty (all-in-one) unless the inventory is split."""
    topology = topology_from_pyinfra(inventory)
    if topology is None:
        return {}
    member = topology.member(host.name)
    return {"roles": member.roles, "topology": topology, "address": member.address}


def plan_fields_for_entry(entry: Any, entries: Iterable[Any]) -> dict[str, Any]:
    """The same for an inventory entry of ``load_inventory`` (checks, CLI)."""
    topology = topology_from_entries(entries)
    if topology is None:
        return {}
    member = topology.member(entry.name)
    return {"roles": member.roles, "topology": topology, "address": member.address}


def is_first_app_host(plan: Any, name: str) -> bool:
    """The app host that runs one-off steps (migrations) for all of them."""
    return not plan.split or plan.topology.with_role("app")[0].name == name
