"""Where each secret's value comes from when a deploy runs: the hosts first.

The hosts are the source of truth for the secrets the stack generated. A
controller (an operator's machine, a fresh CI runner) may hold a copy of
them (a split inventory's ``controller_secrets_dir``) or nothing at all; it
never replaces a value a host holds. Per secret a host's roles read:

- the hosts that hold it disagree: stop;
- the inventory supplies it (``govstack.secrets``): that value, unless the
  secret is one the stack generates and the hosts hold another value (a
  change of a generated secret is a rotation: ``govstack secret rotate``);
- some host holds it: that value (read from the host and copied to the
  controller, when the controller's copy is missing or differs);
- no host holds it, the controller does: the controller's (a rebuilt host);
- no one holds it while a host holds the data it unlocks (an initialised
  Postgres, a restic repository; ``SecretSpec.pinned_by``): stop, because a
  new value would lock that data or its readers out;
- otherwise: a new value.

Every "stop" is found before any operation runs, so a deploy that stops has
changed nothing. :func:`resolve_sources` decides on digests only (sha256 of
the file's bytes): pure, unit-tested, and no value reaches it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from govstack.secrets import SECRET_SPECS

# What a host holds that a secret unlocks (SecretSpec.pinned_by), in words.
DATA_LABELS = {"postgres": "an initialised Postgres data directory", "restic": "a restic repository",
               "pgbackrest": "a pgBackRest repository (WAL and base backups)",
               "seaweedfs-sse": "objects SeaweedFS encrypted with it"}

Origin = Literal["host", "controller", "supplied", "new"]


class SecretConflict(ValueError):
    """The hosts, the controller and the inventory cannot agree on a secret (one line, names and hosts)."""


@dataclass(frozen=True)
class HostSecrets:
    """One inventory host as the decision needs it."""

    name: str
    # The secrets its roles read (StackPlan.secret_names).
    holds: frozenset[str]
    # sha256 of each of those files that exists on the host.
    digests: Mapping[str, str] = field(default_factory=dict)
    # DATA_LABELS keys present on the host.
    data: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Source:
    origin: Origin
    # The host to read the value from (origin "host").
    host: str | None = None
    # The value's sha256 when it exists somewhere already.
    digest: str | None = None


def digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def resolve_sources(
    hosts: Sequence[HostSecrets],
    *,
    controller: Mapping[str, str] | None,
    supplied: Mapping[str, str],
    names: Iterable[str] | None = None,
) -> dict[str, Source]:
    """name -> where its value comes from, for every secret a host holds.

    + hosts: every host of the inventory
    + controller: name -> digest of the controller's copies; None when the
      inventory keeps no copy on the controller (a single host)
    + supplied: name -> digest of each value the inventory supplies
    + names: only these secrets (default: every secret some host holds)

    Raises SecretConflict naming every secret that stops the deploy.
    """
    wanted = sorted(set(names) if names is not None else {n for h in hosts for n in h.holds})
    sources: dict[str, Source] = {}
    problems: list[str] = []
    for name in wanted:
        spec = SECRET_SPECS[name]
        readers = [host for host in hosts if name in host.holds]
        held = {host.name: host.digests[name] for host in readers if name in host.digests}
        values = sorted(set(held.values()))
        if len(values) > 1:
            groups = [",".join(h for h, d in held.items() if d == value) for value in values]
            problems.append(f"{name} differs between hosts ({' vs '.join(groups)}): make them agree by hand, "
                            "keeping the value the data and its readers use")
            continue
        on_hosts = values[0] if values else None
        if name in supplied:
            if spec.generated and on_hosts is not None and supplied[name] != on_hosts:
                problems.append(f"the inventory supplies {name} with a value other than the one on "
                                f"{','.join(held)}: drop it from the inventory, or change it with "
                                f"`govstack secret rotate {name}`")
                continue
            sources[name] = Source("supplied", digest=supplied[name])
            continue
        if not spec.generated:
            continue  # only the operator supplies it; without a value there is no file
        if on_hosts is not None:
            if controller is not None and controller.get(name) == on_hosts:
                sources[name] = Source("controller", digest=on_hosts)
            else:
                sources[name] = Source("host", host=next(iter(held)), digest=on_hosts)
            continue
        if controller is not None and name in controller:
            sources[name] = Source("controller", digest=controller[name])
            continue
        locked = [host.name for host in readers if spec.pinned_by in host.data]
        if locked:
            problems.append(f"{name} is on no host, but {locked[0]} holds {DATA_LABELS[spec.pinned_by]} that "
                            f"needs it: put its value back (from your vault) on {locked[0]} before deploying; "
                            "a new value would lock that data out")
            continue
        sources[name] = Source("new")
    if problems:
        raise SecretConflict("deploy stopped before changing anything: " + "; ".join(problems))
    return sources
