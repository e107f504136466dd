"""A release deploy dies with its controller, and can be made to die on purpose.

- ``die_with_controller()``: the CLI runs pyinfra as a child and holds the
  stack lock; when the CLI dies (killed, crashed) the lock frees at once
  (govstack/lock.py), so its deploy must not go on acting on the hosts. The
  child asks the kernel for SIGKILL when its parent dies.
- ``GOVSTACK_FAULT=<point>``: the tests' crash injection. At that point of a
  blue/green release (``RELEASE_FAULT_POINTS``) the controller and its deploy
  are killed, as if the machine running `govstack deploy` had died there;
  at a point of a restore (``RESTORE_FAULT_POINTS``) the CLI running it is.
  Unset (production), nothing is added to the deploy at all.
"""

from __future__ import annotations

import ctypes
import os
import signal

FAULT_ENV = "GOVSTACK_FAULT"
CONTROLLER_PID_ENV = "GOVSTACK_CONTROLLER_PID"
# The steps of deploys/release.py, in order.
RELEASE_FAULT_POINTS = ("before_start", "after_start", "after_health", "after_switch", "after_drain", "after_stop")
# The steps of a restore (govstack/backup/ops.py): the writers stopped, the
# restored database verified but not swapped in, swapped in but the writers not started.
RESTORE_FAULT_POINTS = ("restore_after_stop", "restore_before_swap", "restore_after_swap")
FAULT_POINTS = RELEASE_FAULT_POINTS + RESTORE_FAULT_POINTS
PR_SET_PDEATHSIG = 1


class FaultError(ValueError):
    pass


def wanted_fault() -> str | None:
    """The fault point asked for, None without one; an unknown name is an error
    (a test with a typo would otherwise pass without crashing anything)."""
    point = os.environ.get(FAULT_ENV) or None
    if point is not None and point not in FAULT_POINTS:
        raise FaultError(f"{FAULT_ENV}={point!r} is not a fault point; choose one of {', '.join(FAULT_POINTS)}")
    return point


def crash_at(point: str) -> None:
    """The injected crash of a command that runs in the CLI itself (a restore):
    nothing unless GOVSTACK_FAULT names this point."""
    if wanted_fault() == point:
        crash_controller()


def controller_pid() -> int | None:
    raw = os.environ.get(CONTROLLER_PID_ENV)
    return int(raw) if raw and raw.isdigit() else None


def die_with_controller() -> None:
    """SIGKILL this process when the controller (our parent, the CLI) dies.
    Nothing when run by hand (no controller pid) or off Linux."""
    pid = controller_pid()
    if pid is None:
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != pid:  # the controller died before the request took effect
        os.kill(os.getpid(), signal.SIGKILL)


def crash_controller() -> None:
    """The injected crash: the controller first (so it writes no ledger line),
    then this deploy."""
    pid = controller_pid()
    if pid is not None:
        os.kill(pid, signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)
