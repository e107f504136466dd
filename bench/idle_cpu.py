"""CPU an idle deployed stack burns, per Compose service, and what one healthcheck costs.

    .venv/bin/python bench/idle_cpu.py INVENTORY [--window 60] [--save FILE] [--baseline FILE]

1. Idle: each container's cgroup CPU time (cpuacct, v1 or v2) over --window seconds, as a
   share of one core; the healthchecks Docker runs land in the container's cgroup too.
2. One healthcheck, same run: the CPU inside the api and worker containers of the check their
   compose file configures against the Python CLI check (`govstack-app healthcheck ...`) that
   ran before, each executed --runs times (the idle rate of step 1 subtracted); printed as a
   ratio, with the CPU per minute each costs at its interval.
3. --save writes step 1's figures; --baseline FILE prints this run's idle total as a ratio
   against a saved one (e.g. the same inventory deployed from the previous commit).

Start it on a stack that has been up a few minutes and serves nothing. Prints; asserts nothing.
The host side of each `docker exec` (runc, the shim) is outside the cgroups and not counted.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from container_pids import _containers  # noqa: E402  (bench/ is the script's directory)

from govstack.inventory import load_inventory  # noqa: E402

PYTHON_CHECKS = {"api": ["govstack-app", "healthcheck", "api"], "worker": ["govstack-app", "healthcheck", "worker"]}


def cpu_seconds(container: str) -> float:
    """The container cgroup's CPU time so far: cgroup v1 (cgroupfs driver) or v2."""
    v1 = Path(f"/sys/fs/cgroup/cpuacct/docker/{container}/cpuacct.usage")
    if v1.exists():
        return int(v1.read_text()) / 1e9
    for v2 in (Path(f"/sys/fs/cgroup/system.slice/docker-{container}.scope/cpu.stat"),
               Path(f"/sys/fs/cgroup/docker/{container}/cpu.stat")):
        if v2.exists():
            stat = dict(line.split() for line in v2.read_text().splitlines())
            return int(stat["usage_usec"]) / 1e6
    raise SystemExit(f"no CPU accounting cgroup for container {container[:12]}")


def idle_shares(containers: dict[str, str], window: float) -> dict[str, float]:
    """service -> share of one core over the window (colors summed)."""
    before = {cid: cpu_seconds(cid) for cid in containers}
    start = time.monotonic()
    time.sleep(window)
    elapsed = time.monotonic() - start
    shares: dict[str, float] = {}
    for cid, service in containers.items():
        shares[service] = shares.get(service, 0.0) + (cpu_seconds(cid) - before[cid]) / elapsed
    return shares


def healthcheck_of(container: str) -> tuple[list[str], float]:
    """The configured check's command (Docker's CMD / CMD-SHELL form) and its interval in seconds."""
    info = json.loads(subprocess.run(["docker", "inspect", container], capture_output=True, text=True,
                                     check=True).stdout)[0]
    check = info["Config"]["Healthcheck"]
    test = check["Test"]
    command = test[1:] if test[0] == "CMD" else ["/bin/sh", "-c", test[1]]
    return command, check.get("Interval", 30_000_000_000) / 1e9


def check_cost(container: str, command: list[str], runs: int, idle_rate: float) -> float:
    """CPU seconds inside the container per run of the command (idle rate subtracted)."""
    before, start = cpu_seconds(container), time.monotonic()
    for _ in range(runs):
        result = subprocess.run(["docker", "exec", container, *command], capture_output=True, text=True,
                                timeout=60, check=False)
        if result.returncode != 0:
            raise SystemExit(f"{command} failed in {container[:12]}: {result.stdout}{result.stderr}")
    spent = cpu_seconds(container) - before - idle_rate * (time.monotonic() - start)
    return max(spent, 0.0) / runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inventory")
    parser.add_argument("--window", type=float, default=60.0)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--save", type=Path)
    parser.add_argument("--baseline", type=Path)
    args = parser.parse_args()
    project = load_inventory(args.inventory)[0].settings.project
    containers = _containers(project)
    if not containers:
        raise SystemExit(f"no running containers for project {project}")

    shares = idle_shares(containers, args.window)
    total = sum(shares.values())
    print(f"idle CPU of {project} over {args.window:.0f} s, share of one core:")
    for service, share in sorted(shares.items(), key=lambda kv: -kv[1]):
        print(f"  {service:<20} {share * 100:6.2f} %")
    print(f"  {'total':<20} {total * 100:6.2f} %")

    print(f"one healthcheck, CPU inside the container (mean of {args.runs} runs):")
    for cid, service in containers.items():
        if service not in PYTHON_CHECKS:
            continue
        configured, interval = healthcheck_of(cid)
        idle_rate = shares[service] / sum(1 for s in containers.values() if s == service)
        new = check_cost(cid, configured, args.runs, idle_rate)
        old = check_cost(cid, PYTHON_CHECKS[service], args.runs, idle_rate)
        per_minute = 60 / interval
        print(f"  {service:<8} configured {new * 1000:7.1f} ms ({new * per_minute:5.2f} s/min)"
              f" | python CLI {old * 1000:7.1f} ms ({old * per_minute:5.2f} s/min)"
              f" | configured/python = {new / old if old else float('nan'):.3f}")

    if args.save:
        args.save.write_text(json.dumps({"project": project, "window": args.window, "shares": shares}))
    if args.baseline:
        base = json.loads(args.baseline.read_text())
        base_total = sum(base["shares"].values())
        print(f"idle total: this run {total * 100:.2f} % / baseline {base_total * 100:.2f} %"
              f" = {total / base_total:.3f}")
        for service in sorted(set(shares) | set(base["shares"])):
            now, then = shares.get(service, 0.0), base["shares"].get(service, 0.0)
            print(f"  {service:<20} {now * 100:6.2f} % / {then * 100:6.2f} %")


if __name__ == "__main__":
    main()
