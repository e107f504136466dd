"""`govstack secret rotate NAME`: replace a generated secret on purpose, with no downtime.

The only way a secret the hosts hold changes (a deploy never does it:
govstack/secret_sources.py). Per kind (``SecretSpec.rotation``):

- ``postgres-role``: ``ALTER ROLE``, then the readers' files in place; the
  app's pool reads the file for each new connection and keeps its open ones,
  the backup job and the migrate service read it per run, postgres-exporter
  is restarted (a metrics gap of seconds);
- ``restic``: ``key add`` of the new password on the local (and offsite)
  repository, the password file switched, ``key remove`` of the old key:
  every snapshot, old ones included, opens with the new password;
- ``s3``: the key pair rotates as one: a second identity in the S3 gateway,
  the clients' files switched (the app reads them per request, the backup
  job per run), then, after ``--grace`` seconds (presigned URLs signed with
  the old pair stay valid that long), the old identity is removed.

The CLI holds every host's stack lock (govstack/lock.py), generates the value (or reuses the
one a rotation that stopped left waiting as ``NAME.next``), runs
deploys/rotate.py, keeps the controller's copy (split inventories) and
writes one ledger line per host.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from govstack.inventory import InventoryHost
from govstack.secrets import SECRET_SPECS, new_secret_value, rotated_with

# Why a secret has no rotation here (SecretSpec.rotation is None).
NOT_ROTATED = {
    "app_admin_api_key": "the app's keys are rotated through its key API (POST, then DELETE /api/v1/keys; "
                         "runbooks/rotate-secrets.md)",
    "analytics_actor_key": "a new key would give every actor a new pseudonym, so releases over days before and "
                           "after it would count one person as two (runbooks/privacy-analytics.md); it is meant "
                           "to stay for the events' retention",
    "s3_sse_key": "SeaweedFS derives its key-encryption key from it and has no re-wrap of the objects' keys: a new "
                  "value would leave every encrypted object unreadable",
    "grafana_admin_password": "Grafana keeps the password of its first start: reset it with "
                              "`grafana cli admin reset-admin-password` (runbooks/rotate-secrets.md)",
    # pgBackRest has no command that re-encrypts a repository: a new passphrase would
    # leave every archived WAL segment and base backup unreadable.
    "pgbackrest_cipher_pass": "pgBackRest cannot re-encrypt its repository (every archived WAL segment and base "
                              "backup stays under this passphrase); start a new repository instead "
                              "(runbooks/rotate-secrets.md)",
}
SUPPLIED = "it is supplied by the operator: change it at its provider, then in the inventory, then `govstack up`"

# Services that read a secret only when they start: restarted by a rotation.
START_TIME_READERS = {"postgres_monitor_password": ("postgres-exporter",)}

# Presigned download URLs live 5 minutes (app/govstack_app/storage.py PRESIGN_TTL): the old
# S3 identity outlives the ones signed just before the switch.
DEFAULT_S3_GRACE_S = 300


class RotationRefused(ValueError):
    """The secret cannot be rotated by `govstack secret rotate` (the message says why and what instead)."""


def postgres_role_of(settings: Any, name: str) -> str:
    from govstack.backup.plan import BACKUP_ROLE
    from govstack.monitoring.catalog import MONITOR_ROLE
    from govstack.plan import ANALYTICS_ROLE

    return {
        "postgres_password": "postgres",
        "postgres_owner_password": settings.postgres.owner_user,
        "postgres_app_password": settings.postgres.app_user,
        "postgres_backup_password": BACKUP_ROLE,
        "postgres_monitor_password": MONITOR_ROLE,
        "postgres_analytics_password": ANALYTICS_ROLE,
    }[name]


def start_time_readers(name: str) -> tuple[str, ...]:
    return START_TIME_READERS.get(name, ())


def check_rotatable(name: str, hosts: list[InventoryHost]) -> tuple[str, ...]:
    """The secrets ``rotate NAME`` replaces, or RotationRefused with a one-line reason."""
    spec = SECRET_SPECS.get(name)
    if spec is None:
        raise RotationRefused(f"unknown secret {name!r}; `govstack secret --list` shows the names")
    if spec.rotation is None:
        raise RotationRefused(f"{name} is not rotated by govstack: {NOT_ROTATED.get(name, SUPPLIED)}")
    names = rotated_with(name)
    for entry in hosts:
        s = entry.settings
        supplied = sorted(set(names) & set(s.secrets))
        if supplied:
            raise RotationRefused(f"{supplied[0]} is supplied by the inventory (govstack.secrets): change it there, "
                                  "then `govstack up`")
        if spec.rotation == "restic" and not s.backup.enabled:
            raise RotationRefused(f"{name}: the backup service is disabled (backup.enabled), nothing reads it")
        if name == "postgres_analytics_password" and not s.analytics.enabled:
            raise RotationRefused(f"{name}: the analytics service is disabled (analytics.enabled), nothing reads it")
        if spec.rotation == "s3" and s.object_store.kind != "seaweedfs":
            raise RotationRefused(f"{name}: the keys of an external object store are rotated at that store, "
                                  "then supplied in the inventory")
    return names


def _holders(hosts: list[InventoryHost], names: tuple[str, ...]) -> list[InventoryHost]:
    from govstack.roles import ALL_ROLES, plan_fields_for_entry

    return [entry for entry in hosts
            if SECRET_SPECS[names[0]].needed_by & plan_fields_for_entry(entry, hosts).get("roles", ALL_ROLES)]


def pending_values(hosts: list[InventoryHost], names: tuple[str, ...]) -> dict[str, str]:
    """Values a rotation that stopped left waiting (``NAME.next``) on a host that holds the secret."""
    from govstack.remote import testinfra_host
    from govstack.rotation_operations import next_path
    from govstack.secrets import secret_path

    found: dict[str, str] = {}
    for entry in _holders(hosts, names):
        target = testinfra_host(entry.name, entry.data)
        for name in names:
            waiting = target.file(next_path(secret_path(entry.settings, name)))
            if name not in found and waiting.exists and waiting.size > 0:
                found[name] = waiting.content_string
    return found


def rotate(inventory: str, hosts: list[InventoryHost], name: str, grace_s: float,
           run_deploy: Callable[..., tuple[int, str | None]]) -> str:
    """Rotate ``name`` (and its pair) with ``run_deploy`` (the CLI's run_pyinfra); returns a
    one-line summary. The caller holds every host's stack lock (lock.command_lock). Raises
    RotationRefused, or RuntimeError with the cause of a failed run (the new value then waits as
    ``NAME.next`` and the next run finishes it)."""
    from govstack.ledger import append_outcome, begin_attempt, end_attempt
    from govstack.roles import controller_secrets_dir, topology_from_entries
    from govstack.secret_store import ControllerStore

    names = check_rotatable(name, hosts)
    waiting = pending_values(hosts, names)
    values = {n: waiting.get(n) or new_secret_value(SECRET_SPECS[n].length) for n in names}
    resumed = sorted(waiting)
    for entry in hosts:  # a crash from here on is found (and recorded) by the next command
        begin_attempt(entry, "rotate", None)
    private = Path(tempfile.mkdtemp(prefix="govstack-rotate-"))  # mode 0700
    try:
        for n, value in values.items():
            path = private / n
            path.touch(mode=0o600)
            path.write_text(value)
        started = time.monotonic()
        code, cause = run_deploy(inventory, deploy_file="rotate.py", env={
            "GOVSTACK_ROTATE_SECRETS": ",".join(names), "GOVSTACK_ROTATE_VALUES": str(private),
            "GOVSTACK_ROTATE_GRACE_S": str(grace_s)})
        duration = round(time.monotonic() - started, 1)
    finally:
        shutil.rmtree(private, ignore_errors=True)
    topology = topology_from_entries(hosts)
    if code == 0 and topology is not None:
        store = ControllerStore(controller_secrets_dir(hosts[0].settings, topology))
        for n, value in values.items():
            store.write(n, value)
    for entry in hosts:
        append_outcome(entry, "rotate", None, code, cause, duration, secret=",".join(names), resumed=bool(resumed))
        end_attempt(entry)
    if code != 0:
        raise RuntimeError(f"rotation of {name} stopped: {cause or 'see above'}; the new value waits on the hosts "
                           f"as {names[0]}.next: `govstack secret rotate {name}` again finishes it")
    return f"rotated {', '.join(names)} in {duration} s" + (" (finished an earlier rotation)" if resumed else "")
