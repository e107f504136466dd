"""PostgreSQL tuning from the memory and CPUs that Postgres really gets.

The rules are the seed's (pgtune's "web application" profile): shared_buffers
25 % of memory, effective_cache_size 75 %, work_mem shared out across the
connections, maintenance_work_mem 1/16 capped at 2 GiB, SSD-aware planner
costs, and parallel workers from the CPU count. All sizes are in kB, the unit
``pg_settings`` reports, so checks can compare them without parsing "6GB".
"""

from __future__ import annotations

from dataclasses import dataclass

KB_PER_MB = 1024


@dataclass(frozen=True)
class HostResources:
    memory_mb: int
    cpus: int
    # The host's own cgroup limit (a VM slice, a container-as-host), if any.
    cgroup_memory_limit_mb: int | None = None


def postgres_memory_budget_mb(host: HostResources, container_limit_mb: int | None) -> int:
    """Memory Postgres may use: the tightest of its container limit, the
    host's cgroup limit and the host's physical memory."""
    candidates = [host.memory_mb]
    if host.cgroup_memory_limit_mb:
        candidates.append(host.cgroup_memory_limit_mb)
    if container_limit_mb:
        candidates.append(container_limit_mb)
    return min(candidates)


def postgres_tuning(
    memory_mb: int,
    cpus: int,
    max_connections: int,
    storage: str = "ssd",
    overrides: dict[str, str | int | float] | None = None,
) -> dict[str, str]:
    """postgresql.conf values (as strings, sizes in kB) for the given budget."""
    if memory_mb < 256:
        raise ValueError(f"Postgres needs at least 256 MB, got {memory_mb} MB")
    if cpus < 1 or max_connections < 1:
        raise ValueError("cpus and max_connections must be positive")
    memory_kb = memory_mb * KB_PER_MB
    shared_buffers_kb = memory_kb // 4
    effective_cache_kb = memory_kb * 3 // 4
    maintenance_kb = min(memory_kb // 16, 2 * 1024 * KB_PER_MB)
    # pgtune: what shared_buffers leaves, shared by 3 sort/hash nodes per
    # connection, further split across the parallel workers of one query.
    per_gather = max(1, cpus // 2)
    work_mem_kb = max(4 * KB_PER_MB, (memory_kb - shared_buffers_kb) // (max_connections * 3) // per_gather)
    # 3 % of shared_buffers, between 64 kB and one WAL segment (16 MB).
    wal_buffers_kb = min(max(shared_buffers_kb * 3 // 100, 64), 16 * KB_PER_MB)

    tuned: dict[str, str] = {
        "max_connections": str(max_connections),
        "shared_buffers": f"{shared_buffers_kb}kB",
        "effective_cache_size": f"{effective_cache_kb}kB",
        "maintenance_work_mem": f"{maintenance_kb}kB",
        "work_mem": f"{work_mem_kb}kB",
        "wal_buffers": f"{wal_buffers_kb}kB",
        "min_wal_size": "1GB",
        "max_wal_size": "4GB",
        "checkpoint_completion_target": "0.9",
        "default_statistics_target": "100",
        # SSDs make random reads nearly as cheap as sequential ones.
        "random_page_cost": "1.1" if storage == "ssd" else "4",
        "effective_io_concurrency": "200" if storage == "ssd" else "2",
        "max_worker_processes": str(max(8, cpus)),
        "max_parallel_workers": str(cpus),
        "max_parallel_workers_per_gather": str(per_gather),
        "max_parallel_maintenance_workers": str(per_gather),
    }
    for key, value in (overrides or {}).items():
        tuned[key] = str(value)
    return tuned


_UNIT_KB = {"kB": 1, "MB": 1024, "GB": 1024 * 1024, "TB": 1024 * 1024 * 1024}


def size_to_kb(value: str) -> int:
    """'6GB' / '512MB' / '64kB' -> kB, as Postgres parses memory settings."""
    for unit, factor in _UNIT_KB.items():
        if value.endswith(unit):
            return int(value[: -len(unit)]) * factor
    raise ValueError(f"not a Postgres memory size: {value!r}")
