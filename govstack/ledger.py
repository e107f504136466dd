"""The deploy lock and the append-only deploy ledger of each host.

Both live under ``<stack_root>/state`` on the host, so every operator and CI
job sees the same ones:
- ``deploy.lock/`` is made with ``mkdir`` (atomic); ``holder.json`` inside
  names who holds it, since when and for what.
- ``ledger.jsonl`` gets one JSON line per deploy and rollback: time,
  operator, action, version, color, config hash, result, duration, cause.
"""

from __future__ import annotations

import getpass
import json
import shlex
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from govstack.inventory import InventoryHost
from govstack.remote import testinfra_host


class LockHeld(RuntimeError):
    pass


def operator() -> str:
    import os

    return os.environ.get("GOVSTACK_OPERATOR") or f"{getpass.getuser()}@{socket.gethostname()}"


def state_dir(entry: InventoryHost) -> str:
    return entry.settings.paths.state_dir


def ledger_path(entry: InventoryHost) -> str:
    return entry.settings.paths.ledger_file


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@contextmanager
def deploy_lock(entries: list[InventoryHost], purpose: str, wait_s: float = 0) -> Iterator[None]:
    """Hold every host's deploy lock for the duration, or raise LockHeld naming the holder."""
    holder = {"operator": operator(), "since": _now(), "purpose": purpose, "token": f"{time.time_ns()}"}
    taken: list[tuple[Any, str]] = []
    try:
        for entry in entries:
            target = testinfra_host(entry.name, entry.data)
            lock = entry.settings.paths.deploy_lock
            deadline = time.monotonic() + wait_s
            while True:
                got = target.run(
                    f"mkdir -p {shlex.quote(state_dir(entry))} && chmod 700 {shlex.quote(state_dir(entry))} && "
                    f"mkdir {shlex.quote(lock)} 2>/dev/null && "
                    f"printf '%s\\n' {shlex.quote(json.dumps(holder))} > {shlex.quote(lock)}/holder.json"
                )
                if got.rc == 0:
                    taken.append((target, lock))
                    break
                if time.monotonic() >= deadline:
                    raw = target.run(f"cat {shlex.quote(lock)}/holder.json 2>/dev/null").stdout.strip()
                    try:
                        other = json.loads(raw)
                        who = f"{other['operator']} since {other['since']} ({other['purpose']})"
                    except (ValueError, KeyError):
                        who = "an unknown holder"
                    raise LockHeld(
                        f"{entry.name}: deploy lock held by {who}; wait with --lock-wait SECONDS, "
                        f"or remove {lock} if that deploy is dead"
                    )
                time.sleep(min(2.0, max(0.1, deadline - time.monotonic())))
        yield
    finally:
        for target, lock in taken:
            target.run(
                f"grep -q {shlex.quote(holder['token'])} {shlex.quote(lock)}/holder.json && rm -rf {shlex.quote(lock)}"
            )


def append_ledger(entry: InventoryHost, record: dict[str, Any]) -> None:
    line = json.dumps({"time": _now(), "operator": operator(), **record}, sort_keys=True)
    target = testinfra_host(entry.name, entry.data)
    path = shlex.quote(ledger_path(entry))
    target.run(f"mkdir -p {shlex.quote(state_dir(entry))} && printf '%s\\n' {shlex.quote(line)} >> {path} "
               f"&& chmod 600 {path}")


def read_ledger(entry: InventoryHost) -> list[dict[str, Any]]:
    target = testinfra_host(entry.name, entry.data)
    out = target.run(f"cat {shlex.quote(ledger_path(entry))} 2>/dev/null").stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def read_release(entry: InventoryHost):
    from govstack.release import Release, release_path

    target = testinfra_host(entry.name, entry.data)
    raw = target.run(f"cat {shlex.quote(release_path(entry.settings))} 2>/dev/null").stdout.strip()
    return Release.from_dict(json.loads(raw)) if raw else None
