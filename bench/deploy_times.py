"""Deploy timings, printed as ratios against the cold deploy measured in the same run.

    .venv/bin/python bench/deploy_times.py [--skip-image-build]

1. image build: every offline image rebuilt without cache (the base included),
   under throwaway tags so the deployed images stay as they are;
2. cold deploy: a fresh stack root and project, images already built;
3. no-op redeploy: the same deploy again (the idempotent path).
Prints; asserts nothing.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
INVENTORY = REPO / "bench" / "inventories" / "bench_local.py"
sys.path.insert(0, str(REPO))

from govstack import catalog, images  # noqa: E402
from govstack.inventory import load_inventory  # noqa: E402


def timed(cmd: list[str], **kwargs) -> float:
    start = time.monotonic()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kwargs)
    return time.monotonic() - start


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


def main() -> None:
    settings = load_inventory(str(INVENTORY))[0].settings
    subprocess.run([sys.executable, "-m", "tests.e2e.teardown", str(INVENTORY)], cwd=REPO, check=True,
                   stdout=subprocess.DEVNULL)
    govstack = [sys.executable, "-m", "govstack.cli", "up", "-i", str(INVENTORY)]
    cold = timed(govstack, cwd=REPO)
    noop = timed(govstack, cwd=REPO)
    build = None if "--skip-image-build" in sys.argv else image_build_seconds(settings)
    print(f"cold deploy (images cached): {cold:7.1f} s   1.00 x")
    print(f"no-op redeploy:              {noop:7.1f} s   {noop / cold:.2f} x cold deploy")
    if build is not None:
        print(f"offline image build, no cache:{build:6.1f} s   {build / cold:.2f} x cold deploy")
    subprocess.run([sys.executable, "-m", "tests.e2e.teardown", str(INVENTORY)], cwd=REPO, check=True,
                   stdout=subprocess.DEVNULL)


if __name__ == "__main__":
    main()
