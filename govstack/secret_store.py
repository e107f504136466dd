"""The values a deploy writes to a host's secret files, found before anything changes.

``secret_values`` runs while pyinfra prepares a host (before any operation
executes on any host): it reads every inventory host's secret digests and
data markers over the deploy's own SSH connections, decides with
``govstack.secret_sources.resolve_sources``, adopts into the controller the
values it lacks, and stops the deploy (``SecretConflict``) when the hosts
disagree or a secret that data needs is gone. Values are read only through
:func:`quiet_fact` and are never logged.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from govstack.facts import DataPresent, SecretDigests, SecretValue
from govstack.roles import ALL_ROLES, controller_secrets_dir, plan_fields, shared_secret_values
from govstack.secret_sources import HostSecrets, SecretConflict, Source, digest, resolve_sources
from govstack.secrets import SECRET_SPECS, host_secret_names, sse_marker

__all__ = ["SecretConflict", "secret_values", "data_markers", "ControllerStore"]


def data_markers(settings: Any, roles: frozenset[str]) -> tuple[tuple[str, str], ...]:
    """(kind, path) whose existence means the host holds data a secret unlocks."""
    if "data" not in roles:
        return ()
    from govstack.backup.plan import host_paths, pitr_paths

    return (
        ("postgres", f"{settings.data_dir}/postgres/PG_VERSION"),
        ("restic", f"{host_paths(settings).repository}/config"),
        # A stanza's archive info: WAL and base backups encrypted with the cipher passphrase.
        ("pgbackrest", f"{pitr_paths(settings).repository}/archive/{settings.project}/archive.info"),
        ("seaweedfs-sse", sse_marker(settings)),
    )


class ControllerStore:
    """The controller's copies of a split inventory's secrets: one file per
    secret, mode 0600, in a 0700 directory (``controller_secrets_dir``)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def digests(self, names: list[str]) -> dict[str, str]:
        found = {}
        for name in names:
            path = self.directory / name
            if path.is_file():
                found[name] = digest(path.read_text())
        return found

    def read(self, name: str) -> str:
        return (self.directory / name).read_text()

    def write(self, name: str, value: str) -> None:
        """Replace (or make) one copy atomically; never world- or group-readable."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.directory.chmod(0o700)
        temporary = self.directory / f".{name}.{os.getpid()}"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(value)
        os.replace(temporary, self.directory / name)

    def new(self, lengths: Mapping[str, int]) -> dict[str, str]:
        return shared_secret_values(self.directory, lengths)


@contextmanager
def quiet_fact(state: Any) -> Iterator[None]:
    """pyinfra prints fact output under -vvv; a secret's value never."""
    saved = state.print_fact_output
    state.print_fact_output = False
    try:
        yield
    finally:
        state.print_fact_output = saved


# Facts of every host, read once per pyinfra run (each host's deploy file asks).
_GATHERED: dict[tuple[int, str], HostSecrets] = {}


def _host_secrets(member: Any, inventory: Any) -> HostSecrets:
    from govstack.settings import settings_for_host

    key = (id(inventory), member.name)
    if key not in _GATHERED:
        settings = settings_for_host(member)
        roles = plan_fields(member, inventory, settings).get("roles", ALL_ROLES)
        holds = frozenset(host_secret_names(settings, roles))
        _GATHERED[key] = HostSecrets(
            name=member.name,
            holds=holds,
            digests=member.get_fact(SecretDigests, directory=settings.secrets_dir, names=tuple(sorted(holds))),
            data=member.get_fact(DataPresent, markers=data_markers(settings, roles)),
        )
    return _GATHERED[key]


def secret_values(host: Any, inventory: Any, plan: Any) -> dict[str, str | None]:
    """name -> the value to write to this host's secret file, or None: keep
    the host's file (or generate one on the host, when it has none and no
    other host or controller holds one). Raises SecretConflict."""
    s = plan.settings
    hosts = [_host_secrets(member, inventory) for member in inventory]
    supplied = {name: digest(value) for name, value in s.secrets.items()}
    names = plan.secret_names
    if not plan.split:
        sources = resolve_sources(hosts, controller=None, supplied=supplied, names=names)
        return {name: s.secrets[name] if source.origin == "supplied" else None for name, source in sources.items()}

    store = ControllerStore(controller_secrets_dir(s, plan.topology))
    sources = resolve_sources(hosts, controller=store.digests(names), supplied=supplied, names=names)
    members = {member.name: member for member in inventory}
    values: dict[str, str | None] = {}
    for name, source in sources.items():
        if source.origin == "supplied":
            values[name] = s.secrets[name]
        elif source.origin == "controller":
            values[name] = store.read(name)
        elif source.origin == "host":
            values[name] = _adopt(store, members[source.host], name, source)
    fresh = store.new({name: SECRET_SPECS[name].length for name, source in sources.items() if source.origin == "new"})
    return {**values, **fresh}


def _adopt(store: ControllerStore, member: Any, name: str, source: Source) -> str:
    """Read ``name`` from the host that holds it and keep a copy on the controller."""
    from govstack.settings import settings_for_host

    path = f"{settings_for_host(member).secrets_dir}/{name}"
    with quiet_fact(member.state):
        value = member.get_fact(SecretValue, path=path)
    if value is None or digest(value) != source.digest:
        raise SecretConflict(f"deploy stopped before changing anything: {name} changed on {member.name} "
                             "while the deploy read it; run it again")
    store.write(name, value)
    return value
