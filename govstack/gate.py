"""A deploy started before its controller holds the stack lock, held at a gate
until it does (`govstack up`).

The CLI needs the inventory's hosts (their settings) to take the lock, and
pyinfra loads the same inventory for the deploy. Run one after the other,
that was three Python processes started in turn (the CLI, the inventory
child of govstack/inventory.py, pyinfra), about 2 s of a no-op `up`. So the
CLI starts pyinfra first, with ``GATE_ENV`` naming two pipes. The deploy
file calls ``wait_at_gate`` before it reads or changes anything on a host:
it writes the hosts as ``govstack.inventory`` would print them
(``dump_hosts``) and blocks until the controller answers ``go``, which it
sends only once it holds every host's lock and has opened the attempt
record. Any other answer, or the pipe closing (the CLI refused, failed or
died), ends the deploy at once, having done nothing.

Without ``GATE_ENV`` (pyinfra run by hand, or by a command that took its
lock first) the gate is open and the deploy runs as it always did.
"""

from __future__ import annotations

import json
import os
import threading

GATE_ENV = "GOVSTACK_GATE"
GO = "go"
# The deploy's exit status when the gate stays shut (the controller discards it).
GATE_SHUT_EXIT = 75

_lock = threading.Lock()
_opened = threading.Event()


def gate_fds(raw: str | None) -> tuple[int, int] | None:
    """(hosts fd, go fd) from ``GATE_ENV``'s value ``"HOSTS,GO"``; None when unset.
    A malformed value is an error: a deploy must not run ungated by mistake."""
    if not raw:
        return None
    parts = raw.split(",")
    if len(parts) != 2 or not all(part.isdigit() for part in parts):
        raise ValueError(f"{GATE_ENV}={raw!r} is not two file descriptors (HOSTS,GO)")
    return int(parts[0]), int(parts[1])


def wait_at_gate(inventory) -> None:
    """In the deploy, before its first fact: report ``inventory``'s hosts, then wait for
    the controller's go. pyinfra runs the deploy file once per host (greenlets): the
    first one through reports and waits, the others wait behind it, and the gate, once
    opened, stays open for the rest of the run."""
    fds = gate_fds(os.environ.get(GATE_ENV))
    if fds is None:
        return
    with _lock:
        if _opened.is_set():
            return
        from govstack.inventory import dump_hosts

        hosts_fd, go_fd = fds
        with os.fdopen(hosts_fd, "w") as out:
            out.write(json.dumps(dump_hosts(inventory)))
        with os.fdopen(go_fd) as answer:
            said = answer.readline().strip()
        if said != GO:
            os._exit(GATE_SHUT_EXIT)
        _opened.set()
