"""How many CPUs this container may use: its cgroup's CPU quota, not the host's core count.

os.cpu_count() answers the host's cores (2 on the reference host) even when Compose limits the
container to 1.0 CPU; a thread pool sized from it runs more threads than the quota pays for, and
the kernel throttles all of them. cgroup v2's cpu.max holds "<quota> <period>" or "max <period>".
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_V2_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1_QUOTA = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
CGROUP_V1_PERIOD = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")


def parse_cpu_max(text: str) -> float | None:
    """CPUs allowed by a cgroup v2 cpu.max line; None when unlimited or unreadable."""
    parts = text.split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    try:
        quota, period = int(parts[0]), int(parts[1])
    except ValueError:
        return None
    if quota <= 0 or period <= 0:
        return None
    return quota / period


def cgroup_cpu_limit(
    cpu_max: Path = CGROUP_V2_CPU_MAX, v1_quota: Path = CGROUP_V1_QUOTA, v1_period: Path = CGROUP_V1_PERIOD
) -> float | None:
    """The container's CPU quota in CPUs (1.5 for `cpus: 1.5`), None when there is none."""
    try:
        return parse_cpu_max(cpu_max.read_text())
    except OSError:
        pass
    try:
        quota, period = int(v1_quota.read_text()), int(v1_period.read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def available_cpus() -> int:
    """CPUs this process may run on (cpuset/affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def thread_budget(limit: float | None = None, cpus: int | None = None) -> int:
    """Compute threads for this container: the quota rounded up (a 1.5-CPU quota keeps two
    threads busy 75 % of each period, more work than one thread does), never more than the CPUs
    the process may run on, at least 1."""
    limit = cgroup_cpu_limit() if limit is None else limit
    cpus = available_cpus() if cpus is None else cpus
    if limit is None:
        return cpus
    return max(1, min(cpus, math.ceil(limit - 1e-9)))
