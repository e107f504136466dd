"""The append-only deploy ledger of each host, and the command in flight.

Both live under ``<stack_root>/state`` on the host, so every operator and CI
job sees the same ones, and both are written only under the stack lock
(govstack/lock.py), except a reveal's ledger line (one append, which a
deploy in flight must not delay):
- ``ledger.jsonl`` gets one JSON line per command that changes the host (every
  one that takes the stack lock: `up`, deploy, rollback, restore, secret
  rotation, backup, drill, audit-retention, …) and per secret an operator
  reveals (`govstack secret NAME --reason …`): time, operator (a name anyone
  can set) and who the OS says ran it (OS user, controller, SSH client address
  and key fingerprint when present), action, version, serving color and
  version, config hash, result, duration, cause (a rotation or reveal: which
  secret; a reveal: the reason).
- ``attempt.json`` names the command in flight: written before it changes
  anything, removed once its ledger line is written. The next command that
  finds one knows that command was interrupted (a crashed or killed CLI, a
  lost controller): it writes the attempt's ledger line (result
  ``interrupted``, what serves now) and says so.
"""

from __future__ import annotations

import json
import shlex
from datetime import UTC, datetime
from typing import Any

from govstack.catalog import SERVICES
from govstack.inventory import InventoryHost
from govstack.remote import testinfra_host
from govstack.who import identity, operator

# The backup job backs the ledger up (it mounts the state directory read-only):
# its group may enter the directory and read the ledger, and nothing else there.
LEDGER_READER_GID = SERVICES["backup"].uid

__all__ = ["operator", "append_ledger", "record_reveal", "append_outcome", "read_ledger", "read_release",
           "begin_attempt", "end_attempt",
           "take_interrupted", "take_safety_copy", "report_interrupted"]


def state_dir(entry: InventoryHost) -> str:
    return entry.settings.paths.state_dir


def ledger_path(entry: InventoryHost) -> str:
    return entry.settings.paths.ledger_file


def attempt_path(entry: InventoryHost) -> str:
    return entry.settings.paths.attempt_file


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _write(entry: InventoryHost, path: str, line: str, append: bool, backup_reads: bool = False) -> None:
    target = testinfra_host(entry.name, entry.data)
    quoted = shlex.quote(path)
    directory = shlex.quote(state_dir(entry))
    mode = (f"chgrp {LEDGER_READER_GID} {directory} {quoted} && chmod 710 {directory} && chmod 640 {quoted}"
            if backup_reads else f"chmod 600 {quoted}")
    result = target.run(f"mkdir -p {directory} && umask 077 && "
                        f"printf '%s\\n' {shlex.quote(line)} {'>>' if append else '>'} {quoted} && {mode}")
    if result.rc != 0:
        raise RuntimeError(f"{entry.name}: cannot write {path}: {result.stderr.strip()[-300:]}")


def append_ledger(entry: InventoryHost, record: dict[str, Any]) -> None:
    line = json.dumps({"time": _now(), "operator": operator(), **identity(), **record}, sort_keys=True)
    _write(entry, ledger_path(entry), line, append=True, backup_reads=True)


# Outcome lines this process wrote: govstack.lock.command_lock writes a command's
# line when the command wrote none of its own.
outcomes_written = 0


def append_outcome(entry: InventoryHost, action: str, version: str | None, code: int, cause: str | None,
                   duration_s: float, **extra: Any) -> None:
    """The ledger line of a command that ran (``code`` 0: ok), with what serves after it."""
    global outcomes_written
    outcomes_written += 1
    after = read_release(entry)
    append_ledger(entry, {
        "action": action,
        "version": version or (after.version if after else None),
        "color": after.color if after else None,
        "serving": f"{after.color} {after.version}" if after else None,
        "config_hash": entry.settings.config_hash(),
        "result": "ok" if code == 0 else "failed",
        "duration_s": duration_s,
        "cause": None if code == 0 else cause,
        **extra,
    })


def record_reveal(entry: InventoryHost, secret: str, reason: str) -> None:
    """The ledger line of a secret an operator is about to see (written first: no line, no secret)."""
    # Its result is not "ok": it changed nothing, and readers of the ledger take the last ok
    # line for what serves (tests/hosts).
    append_ledger(entry, {"action": "reveal", "secret": secret, "reason": reason, "result": "revealed",
                          "version": None, "duration_s": None})


def read_ledger(entry: InventoryHost) -> list[dict[str, Any]]:
    target = testinfra_host(entry.name, entry.data)
    out = target.run(f"cat {shlex.quote(ledger_path(entry))} 2>/dev/null").stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def read_release(entry: InventoryHost):
    from govstack.release import Release, release_path

    target = testinfra_host(entry.name, entry.data)
    raw = target.run(f"cat {shlex.quote(release_path(entry.settings))} 2>/dev/null").stdout.strip()
    return Release.from_dict(json.loads(raw)) if raw else None


def serving(entry: InventoryHost) -> str | None:
    release = read_release(entry)
    return f"{release.color} {release.version}" if release else None


def begin_attempt(entry: InventoryHost, action: str, version: str | None) -> None:
    attempt = {"action": action, "version": version, "operator": operator(), **identity(), "started": _now(),
               "config_hash": entry.settings.config_hash()}
    _write(entry, attempt_path(entry), json.dumps(attempt, sort_keys=True), append=False)


def end_attempt(entry: InventoryHost) -> None:
    testinfra_host(entry.name, entry.data).run(f"rm -f {shlex.quote(attempt_path(entry))}")


def _take_record(entry: InventoryHost, path: str) -> dict[str, Any] | None:
    """The JSON record a release step left on the host, once: the file is
    removed as its ledger line takes it."""
    path = shlex.quote(path)
    raw = testinfra_host(entry.name, entry.data).run(f"cat {path} 2>/dev/null; rm -f {path}").stdout.strip()
    try:
        record = json.loads(raw.splitlines()[-1]) if raw else None
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def take_safety_copy(entry: InventoryHost) -> str | None:
    """The run id of the pre-deploy copy the last release took on this host (data hosts)."""
    record = _take_record(entry, entry.settings.paths.pre_deploy_copy_file)
    return record.get("run") if record else None


def take_rollback_path(entry: InventoryHost) -> str | None:
    """How the last rollback went back on this host: ``kept`` (it started the
    containers the release before kept) or ``full: <why not>``."""
    record = _take_record(entry, entry.settings.paths.rollback_path_file)
    if not record:
        return None
    return "kept" if record.get("path") == "kept" else f"full: {record.get('reason')}"


def take_interrupted(entry: InventoryHost, found_by: str) -> dict[str, Any] | None:
    """The attempt a previous command left unfinished, now in the ledger as
    ``interrupted`` (with what serves now); None when there was none."""
    target = testinfra_host(entry.name, entry.data)
    raw = target.run(f"cat {shlex.quote(attempt_path(entry))} 2>/dev/null").stdout.strip()
    if not raw:
        return None
    try:
        attempt = json.loads(raw)
    except ValueError:
        attempt = {"action": "unknown", "version": None, "operator": "unknown", "started": None}
    record = {
        "action": attempt.get("action"),
        "version": attempt.get("version"),
        "started": attempt.get("started"),
        "operator": attempt.get("operator"),
        # Who started it, not who found it (append_ledger would write the finder's).
        **{key: attempt.get(key) for key in ("os_user", "controller", "ssh_from", "ssh_key")},
        "found_by": f"{operator()} ({found_by})",
        "config_hash": attempt.get("config_hash"),
        "serving": serving(entry),
        "result": "interrupted",
        "duration_s": None,
        "pre_deploy_copy": take_safety_copy(entry),
        "rollback_path": take_rollback_path(entry),
        "cause": f"the command stopped before it recorded a result; found by `{found_by}`",
    }
    append_ledger(entry, record)
    end_attempt(entry)
    return record


def report_interrupted(hosts: list[InventoryHost], found_by: str) -> list[str]:
    """Ledger lines for the command a crash interrupted on each host (call it
    under the lock); one line for the operator per interrupted command."""
    said = []
    for entry in hosts:
        record = take_interrupted(entry, found_by)
        if record:
            said.append(f"{entry.name}: the {record['action']} of {record['version'] or 'the stack'} that "
                        f"{record['operator']} started at {record['started']} was interrupted (no result "
                        f"recorded); serving now: {record['serving'] or 'no release recorded'}")
    return said
