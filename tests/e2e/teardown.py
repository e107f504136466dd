"""Remove what the test tier deployed: `python -m tests.e2e.teardown INVENTORY`
(containers, the tests' helper containers, networks, named volumes, the stack root).

Only for test inventories: refuses a stack root outside /var/lib/govstack-*
or /tmp, so it can never delete a production stack's data.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

from govstack.inventory import load_inventory
from tests.conftest import FORWARDER_LABEL

SAFE_PREFIXES = ("/var/lib/govstack-", "/tmp/")


def teardown(inventory: str) -> None:
    for entry in load_inventory(inventory):
        s = entry.settings
        if not s.stack_root.startswith(SAFE_PREFIXES):
            raise SystemExit(f"refusing to tear down {s.stack_root}: not a test stack root")
        projects = subprocess.run(
            ["docker", "ps", "-a", "--format", '{{.Label "com.docker.compose.project"}}'],
            capture_output=True, text=True, check=True,
        ).stdout.split()
        for project in sorted(set(projects)):
            if project == s.project or project.startswith(f"{s.project}-"):
                subprocess.run(["docker", "compose", "-p", project, "down", "--volumes", "--remove-orphans", "-t", "5"],
                               check=False, capture_output=True)
        # The tests' own helper containers (forwarders, load clients): a killed run leaves them,
        # still attached to the stack's networks.
        helpers = subprocess.run(
            ["docker", "ps", "-aq", "--filter", f"label={FORWARDER_LABEL}={s.project}"],
            capture_output=True, text=True, check=True,
        ).stdout.split()
        if helpers:
            subprocess.run(["docker", "rm", "-f", *helpers], check=False, capture_output=True)
        for network in ("data", "edge"):
            subprocess.run(["docker", "network", "rm", f"{s.project}-{network}"], check=False, capture_output=True)
        shutil.rmtree(s.stack_root, ignore_errors=True)
        print(f"removed test stack {s.project} at {s.stack_root}")


if __name__ == "__main__":
    teardown(sys.argv[1])
