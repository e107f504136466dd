"""Peak process/thread count of every container of a stack while a workload runs.

    .venv/bin/python bench/container_pids.py INVENTORY -- CMD [ARGS...]

Samples each container's pids cgroup (what `pids_limit` caps: processes and
threads) every 0.2 s while CMD runs (an e2e module, a backup, a bench), then
prints the peak per Compose service beside the limit the settings give it.
The `resources.<service>.pids` defaults come from these peaks (README,
"Container hardening"). Prints; asserts nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from govstack.inventory import load_inventory  # noqa: E402


def _containers(project: str) -> dict[str, str]:
    """container id -> Compose service, for the project and its app colors."""
    out = subprocess.run(
        ["docker", "ps", "-q", "--no-trunc", "--filter", f"label=com.docker.compose.project={project}"],
        capture_output=True, text=True, check=True,
    ).stdout.split()
    for color in ("blue", "green"):
        out += subprocess.run(
            ["docker", "ps", "-q", "--no-trunc", "--filter", f"label=com.docker.compose.project={project}-{color}"],
            capture_output=True, text=True, check=True,
        ).stdout.split()
    if not out:
        return {}
    infos = json.loads(subprocess.run(["docker", "inspect", *out], capture_output=True, text=True, check=True).stdout)
    return {info["Id"]: info["Config"]["Labels"]["com.docker.compose.service"] for info in infos}


def _pids_file(container: str) -> Path | None:
    """The container's pids.current: cgroup v1 (cgroupfs driver), v2 (systemd or cgroupfs driver)."""
    for candidate in (
        Path(f"/sys/fs/cgroup/pids/docker/{container}/pids.current"),
        Path(f"/sys/fs/cgroup/system.slice/docker-{container}.scope/pids.current"),
        Path(f"/sys/fs/cgroup/docker/{container}/pids.current"),
    ):
        if candidate.exists():
            return candidate
    return None


def main() -> None:
    if "--" not in sys.argv:
        raise SystemExit(__doc__)
    split = sys.argv.index("--")
    inventory, command = sys.argv[1], sys.argv[split + 1:]
    entry = load_inventory(inventory)[0]
    project = entry.settings.project
    peaks: dict[str, int] = {}
    files: dict[str, tuple[str, Path]] = {}
    done = threading.Event()

    def sample() -> None:
        last_scan = 0.0
        while not done.is_set():
            if time.monotonic() - last_scan > 5:  # containers come and go (colors, one-off jobs)
                for container, service in _containers(project).items():
                    if container not in files and (path := _pids_file(container)):
                        files[container] = (service, path)
                last_scan = time.monotonic()
            for container, (service, path) in list(files.items()):
                try:
                    current = int(path.read_text())
                except (OSError, ValueError):
                    files.pop(container)
                    continue
                peaks[service] = max(peaks.get(service, 0), current)
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.monotonic()
    result = subprocess.run(command, cwd=REPO)
    done.set()
    sampler.join()
    resources = entry.settings.resources
    print(f"# workload: {' '.join(command)} (exit {result.returncode}, {time.monotonic() - started:.0f} s)")
    print(f"{'service':<20} {'peak pids':>9} {'limit':>7}")
    for service in sorted(peaks):
        key = "app" if service == "api" else service.replace("-", "_")
        limit = getattr(resources.get(key), "pids", "-")
        print(f"{service:<20} {peaks[service]:>9} {limit!s:>7}")


if __name__ == "__main__":
    main()
