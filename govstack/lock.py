"""One lock per host, taken by every command that changes a host's state
(`up`, `deploy`, `rollback`, `restore`, `drill`, `backup`, `audit-retention`, `admin-key rotate`,
`secret rotate`, …): `with command_lock(hosts, "deploy v2", wait_s)`, which also writes the
command's ledger line (govstack/ledger.py).

How it holds, and why no lock can go stale: on each host a small process
(bash) takes ``flock`` on ``<stack_root>/state/govstack.lock`` and keeps it
while it reads its stdin, which is this process (a pipe locally, an SSH
channel otherwise). The kernel releases an flock when its holder exits, and
the holder exits on end of input: when this CLI ends, crashes or is killed,
its pipe or connection closes. A controller that vanishes without closing
the connection (power loss, a cut network) stops its heartbeat, and the
holder gives up after ``HEARTBEAT_TIMEOUT_S``. So there is never a lock file
to delete by hand, and a crashed command's lock is free again at once.

The host records the holder (operator, command, since, controller and pid)
in ``<stack_root>/state/lock-holder.json`` beside the lock, for the command
that finds the lock busy: it waits up to ``--lock-wait`` seconds, or fails
naming the holder. A split inventory takes every host's lock, in one fixed
order (the inventory names, sorted), so two commands never deadlock.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from govstack.who import operator

if TYPE_CHECKING:  # a leaf module: settings-level code (compliance) imports its CLI option
    from govstack.inventory import InventoryHost

# The holder on the host gives up when it hears nothing for this long (the
# controller sends a heartbeat every HEARTBEAT_S), so a lock outlives a
# controller that vanished without closing its connection by at most this.
HEARTBEAT_S = 10
HEARTBEAT_TIMEOUT_S = 60
# Starting the holder is one round trip; a host that does not answer in this
# time is unreachable, not busy.
CONNECT_TIMEOUT_S = 60


class LockHeld(RuntimeError):
    """Another command holds a host's lock (after waiting, if asked to)."""


class LockError(RuntimeError):
    """A host's lock could not be taken for another reason (unreachable host, no state directory…)."""


@dataclass(frozen=True)
class Holder:
    operator: str
    command: str
    since: str
    controller: str
    pid: int

    def describe(self) -> str:
        return f"{self.operator} since {self.since} ({self.command}; pid {self.pid} on {self.controller})"

    @classmethod
    def parse(cls, raw: str) -> Holder | None:
        try:
            return cls(**json.loads(raw))
        except (ValueError, TypeError):
            return None


def lock_paths(entry: InventoryHost) -> tuple[str, str, str]:
    paths = entry.settings.paths
    return paths.state_dir, paths.lock_file, paths.lock_holder_file


def holder_script(entry: InventoryHost, holder: Holder, wait_s: float) -> str:
    """The holder process: first line of output ``locked``, or ``busy <holder>``
    (then ``locked`` or ``timeout <holder>``); then it holds until end of input."""
    state, lock, record = (shlex.quote(path) for path in lock_paths(entry))
    show = f"$(tr -d '\\n' < {record} 2>/dev/null)"
    return (
        # 0710: the backup job's group enters it to read the ledger alone (govstack.ledger).
        f"umask 077; mkdir -p {state} && chmod 710 {state} && exec 9>>{lock} || exit 4; "
        f"if ! flock -n 9; then echo \"busy {show}\"; "
        f"flock -w {max(wait_s, 0):.1f} 9 || {{ echo \"timeout {show}\"; exit 3; }}; fi; "
        f"printf '%s\\n' {shlex.quote(json.dumps(asdict(holder)))} > {record}.new && mv -f {record}.new {record}; "
        "echo locked; "
        f"while read -r -t {HEARTBEAT_TIMEOUT_S} _; do :; done; "
        f": > {record}"
    )


class _HolderProcess:
    """The holder running on one host, with its stdin and first lines of stdout."""

    def __init__(self, entry: InventoryHost, script: str) -> None:
        from govstack.remote import testinfra_spec

        self.entry = entry
        self._lock = threading.Lock()
        if testinfra_spec(entry.name, entry.data) == "local://":
            self._proc = subprocess.Popen(["bash", "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          stderr=subprocess.DEVNULL, text=True, start_new_session=True)
            self._channel = None
        else:
            from govstack.remote import testinfra_host

            transport = testinfra_host(entry.name, entry.data).backend.client.get_transport()
            self._channel = transport.open_session(timeout=CONNECT_TIMEOUT_S)
            self._channel.exec_command(f"bash -c {shlex.quote(script)}")
            self._stdout = self._channel.makefile("r")
            self._proc = None

    def readline(self) -> str:
        stream = self._proc.stdout if self._proc else self._stdout
        return stream.readline().strip()

    def alive(self) -> bool:
        if self._proc:
            return self._proc.poll() is None
        return not self._channel.exit_status_ready()

    def heartbeat(self) -> bool:
        with self._lock:
            try:
                if self._proc:
                    self._proc.stdin.write("\n")
                    self._proc.stdin.flush()
                else:
                    self._channel.sendall(b"\n")
                return True
            except OSError:
                return False

    def release(self) -> None:
        with self._lock:
            try:
                if self._proc:
                    self._proc.stdin.close()
                    self._proc.wait(timeout=30)
                else:
                    self._channel.shutdown_write()
                    self._channel.recv_exit_status()
                    self._channel.close()
            except (OSError, subprocess.TimeoutExpired):
                pass


def _take(entry: InventoryHost, holder: Holder, deadline: float, on_wait) -> _HolderProcess:
    process = _HolderProcess(entry, holder_script(entry, holder, deadline - time.monotonic()))
    line = process.readline()
    if line.startswith("busy "):
        other = Holder.parse(line.removeprefix("busy "))
        if deadline > time.monotonic() and on_wait:
            on_wait(f"{entry.name}: waiting for the lock, held by {other.describe() if other else 'another command'}")
        line = process.readline()
    if line == "locked":
        return process
    process.release()
    if line.startswith("timeout "):
        other = Holder.parse(line.removeprefix("timeout "))
        raise LockHeld(f"{entry.name}: locked by {other.describe() if other else 'another command'}; "
                       "wait for it with --lock-wait SECONDS")
    raise LockError(f"{entry.name}: cannot take the lock in {lock_paths(entry)[0]} (holder said {line!r})")


@contextmanager
def stack_lock(hosts: list[InventoryHost], command: str, wait_s: float = 0, on_wait=None) -> Iterator[Holder]:
    """Hold every host's lock for the duration, or raise LockHeld naming the holder.

    + hosts: the inventory's hosts (all of them: a split inventory is one stack)
    + command: what the holder does, as others will read it (``deploy v2``)
    + wait_s: how long to wait for a busy lock in total, 0 = fail at once
    + on_wait: called with one line when a busy lock is waited for
    """
    holder = Holder(operator=operator(), command=command, since=datetime.now(UTC).isoformat(timespec="seconds"),
                    controller=socket.gethostname(), pid=os.getpid())
    deadline = time.monotonic() + max(wait_s, 0)
    taken: list[_HolderProcess] = []
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(taken, stop), daemon=True)
    # Beating from the first lock on: those taken must not lapse while a later host's is waited for.
    beat.start()
    try:
        for entry in sorted(hosts, key=lambda e: e.name):
            try:
                taken.append(_take(entry, holder, deadline, on_wait))
            except (LockHeld, LockError):
                raise
            except Exception as error:  # SSH: refused, unknown host, authentication…
                raise LockError(f"{entry.name}: cannot reach the host to take its lock: {error}") from error
        yield holder
    finally:
        stop.set()
        for process in reversed(list(taken)):
            process.release()


def _heartbeat(taken: list[_HolderProcess], stop: threading.Event) -> None:
    import sys

    while not stop.wait(HEARTBEAT_S):
        for process in list(taken):
            if not process.heartbeat() or not process.alive():
                print(f"govstack: {process.entry.name}: the lock's holder process ended; "
                      "another command may start", file=sys.stderr)
                taken.remove(process)


# -- the CLI's side: one option and one way to fail, for every command that locks ----------------
def lock_wait_option(function):
    import click

    return click.option(
        "--lock-wait", "lock_wait", type=float, default=0, show_default=True, metavar="SECONDS",
        help="wait this long for the stack lock another command holds (0: fail at once, naming it)",
    )(function)


@contextmanager
def command_lock(hosts: list[InventoryHost], command: str, wait_s: float) -> Iterator[Holder]:
    """stack_lock for a CLI command: a busy lock exits 3 naming its holder, any
    other failure to lock (an unreachable host…) exits 1; both with a one-line
    ``govstack:`` cause. Errors of the command itself pass through.

    Every command that changes a host holds this lock, so it is where each
    one gets its ledger line (who, what, result, cause), unless the command
    wrote a richer one of its own (up, deploy, rollback, restore, secret
    rotate: govstack.ledger.append_outcome)."""
    import click

    from govstack import ledger

    def say(line: str) -> None:
        click.echo(f"govstack: {line}", err=True)

    acquired = False
    started = time.monotonic()
    try:
        with stack_lock(hosts, command, wait_s, on_wait=say) as holder:
            acquired = True
            written = ledger.outcomes_written
            try:
                yield holder
            except BaseException as error:
                if ledger.outcomes_written == written:
                    failed = not (isinstance(error, SystemExit) and error.code in (0, None))
                    _record(hosts, command, started, say, failed, error)
                raise
            if ledger.outcomes_written == written:
                _record(hosts, command, started, say, False, None)
    except Exception as error:
        if acquired:
            raise
        say(str(error) if isinstance(error, LockHeld | LockError) else f"cannot take the stack lock: {error}")
        raise SystemExit(3 if isinstance(error, LockHeld) else 1) from None


def _record(hosts: list[InventoryHost], command: str, started: float, say, failed: bool,
            error: BaseException | None) -> None:
    """The ledger line of a command that held the lock; a ledger that cannot be
    written is said, and never hides the command's own result."""
    from govstack.ledger import append_outcome, end_attempt

    cause = None
    if failed:
        cause = (f"exit {error.code}" if isinstance(error, SystemExit) else str(error) or type(error).__name__)
    for entry in hosts:
        try:
            append_outcome(entry, command, None, 1 if failed else 0, cause, round(time.monotonic() - started, 1))
            # A command that failed with an error is not an interrupted one: its line says so now.
            end_attempt(entry)
        except Exception as ledger_error:  # noqa: BLE001 - reported, the command's outcome stands
            say(f"{entry.name}: the ledger line of `{command}` was not written: {ledger_error}")
