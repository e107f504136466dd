"""Deploy timings, each printed as a ratio against a baseline measured in the same run.

    .venv/bin/python bench/deploy_times.py [--inventory INV] [--skip-image-build] [--rounds N] [--noop-only]

Without --inventory it deploys the bench's own stack cold (bench/inventories/
bench_local.py) and tears it down at the end; with one it uses that deployed
stack as it is (it ends serving an alias tag of the image it served).

1. no-op `govstack up` against `pyinfra @local exec -- true` (pyinfra's own
   floor: start, connect, one command);
2. `govstack deploy` of a new version (an alias tag of the serving image: no
   build) against the cold deploy, when there is one;
3. `govstack rollback` that starts the containers the deploy kept, against
   one whose kept containers were removed (the full release path it falls
   back to), which is what every rollback cost before;
4. image build without cache (unless --skip-image-build, or with --inventory).

--noop-only measures 1. alone (a minute on a deployed stack, where the rest takes many).
Each figure is the median of --rounds runs (default 3). Prints; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH_INVENTORY = REPO / "bench" / "inventories" / "bench_local.py"
sys.path.insert(0, str(REPO))

from govstack import catalog, images  # noqa: E402
from govstack.inventory import load_inventory  # noqa: E402


def timed(cmd: list[str], expect: str | None = None, **kwargs) -> float:
    start = time.monotonic()
    result = subprocess.run(cmd, check=True, capture_output=True, text=True, **kwargs)
    elapsed = time.monotonic() - start
    if expect is not None and expect not in result.stdout:
        raise SystemExit(f"{' '.join(cmd[-3:])}: expected {expect!r} in its output:\n{result.stdout[-2000:]}")
    return elapsed


def image_build_seconds(settings) -> float:
    total = 0.0
    base = "govstack-bench/base:nocache"
    script = images.IMAGE_TEMPLATES / "base" / "build-rootfs.sh"
    total += timed(["sh", str(script), settings.images.debian_suite, settings.images.debian_mirror, base, "bench"])
    # The data tier's and the edge's servers (the backup job is FROM the real postgres tag).
    for image in catalog.offline_builds(settings, ["postgres", "seaweedfs", "chroma", "nginx"]):
        with tempfile.TemporaryDirectory() as ctx:
            subprocess.run(["cp", "-r", f"{image.context}/.", ctx], check=True)
            certs = Path(ctx) / "certs"
            certs.mkdir(exist_ok=True)
            if image.needs_ca_certs:
                for cert in Path("/usr/local/share/ca-certificates").glob("*.crt"):
                    shutil.copy(cert, certs)
            args = [f"--build-arg={k}={v}" for k, v in image.docker_build_args(base).items()]
            total += timed(["docker", "build", "--no-cache", "-q", "-t", f"govstack-bench/{image.service}:nocache",
                            *args, ctx])
    return total


class Stack:
    def __init__(self, inventory: Path):
        self.inventory = str(inventory)
        self.settings = load_inventory(self.inventory)[0].settings

    def govstack(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "govstack.cli", *args, "-i", self.inventory]

    def record(self) -> dict:
        return json.loads(Path(self.settings.paths.release_file).read_text())

    def alias(self) -> str:
        """A new version without a build: the serving image under another tag."""
        version = f"bench-{uuid.uuid4().hex[:8]}"
        subprocess.run(["docker", "tag", f"govstack/app:{self.record()['version']}", f"govstack/app:{version}"],
                       check=True)
        return version

    def remove_kept_containers(self) -> None:
        """The containers of the color a rollback would return to, gone (as an operator's prune does)."""
        project = f"{self.settings.project}-{self.record()['previous']['color']}"
        ids = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={project}"],
                             capture_output=True, text=True, check=True).stdout.split()
        if ids:
            subprocess.run(["docker", "rm", "-f", *ids], check=True, capture_output=True)


def ratio(label: str, seconds: list[float], base: float | None, base_name: str) -> None:
    median = statistics.median(seconds)
    against = f"{median / base:6.2f} x {base_name}" if base else ""
    print(f"{label:34} {median:7.1f} s  (n={len(seconds)}, {min(seconds):.1f}-{max(seconds):.1f})  {against}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--inventory", type=Path)
    parser.add_argument("--skip-image-build", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--noop-only", action="store_true", help="only the no-op `up` against its floor")
    args = parser.parse_args()
    own = args.inventory is None
    stack = Stack(BENCH_INVENTORY if own else args.inventory)
    teardown = [sys.executable, "-m", "tests.e2e.teardown", stack.inventory]
    cold = None
    if own:
        subprocess.run(teardown, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
        cold = timed(stack.govstack("up"), cwd=REPO)
    # Once untimed: the stack is then current, whatever ran against it before.
    timed(stack.govstack("up"), cwd=REPO)
    # Alternated, so that load from elsewhere on the machine weighs on both alike.
    floor, noop = [], []
    for _ in range(args.rounds):
        floor.append(timed([sys.executable, "-m", "pyinfra", "-y", "@local", "exec", "--", "true"], cwd=REPO))
        noop.append(timed(stack.govstack("up"), cwd=REPO))
    floor_s = statistics.median(floor)
    if args.noop_only:
        ratio("pyinfra @local exec -- true", floor, floor_s, "itself")
        ratio("no-op govstack up", noop, floor_s, "pyinfra @local exec -- true")
        if own:
            subprocess.run(teardown, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
        return
    deploys, kept, full = [], [], []
    for _ in range(args.rounds):
        deploys.append(timed(stack.govstack("deploy", "--version", stack.alias()), cwd=REPO))
        kept.append(timed(stack.govstack("rollback"), "started the containers the last release kept", cwd=REPO))
        deploys.append(timed(stack.govstack("deploy", "--version", stack.alias()), cwd=REPO))
        stack.remove_kept_containers()
        full.append(timed(stack.govstack("rollback"), "took the full release path", cwd=REPO))
    build = None if args.skip_image_build or not own else image_build_seconds(stack.settings)

    ratio("pyinfra @local exec -- true", floor, floor_s, "itself")
    ratio("no-op govstack up", noop, floor_s, "pyinfra @local exec -- true")
    full_s = statistics.median(full)
    ratio("rollback, full path (the old one)", full, full_s, "itself")
    ratio("rollback, kept containers", kept, full_s, "full-path rollback")
    ratio("deploy (image present)", deploys, full_s, "full-path rollback")
    if cold is not None:
        ratio("cold deploy (images cached)", [cold], full_s, "full-path rollback")
    if build is not None:
        ratio("offline image build, no cache", [build], cold, "cold deploy")
    if own:
        subprocess.run(teardown, cwd=REPO, check=True, stdout=subprocess.DEVNULL)


if __name__ == "__main__":
    main()
