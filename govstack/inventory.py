"""Load a pyinfra inventory file and build each host's settings, before any
host is touched: a bad key fails here with its name.

pyinfra's inventory loader lives in pyinfra_cli, whose import monkey-patches
the whole process with gevent (ssl included). So the file is read in a
child process (``python -m govstack.inventory FILE``) that prints JSON, and
the settings are built here from the data layers it reports.

`govstack up` does without that child: pyinfra, which loads the inventory
for the deploy anyway, reports the same dump from its gate (govstack/gate.py)
and waits there until the CLI holds the stack lock.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from govstack.settings import INVENTORY_KEY, Settings, build_settings


class InventoryError(ValueError):
    pass


@dataclass(frozen=True)
class InventoryHost:
    name: str
    settings: Settings
    groups: tuple[str, ...]
    data: dict[str, Any]

    def __iter__(self):
        # Unpacks as (name, settings) for the common loop.
        yield self.name
        yield self.settings


def load_inventory(path: str) -> list[InventoryHost]:
    if not Path(path).is_file():
        raise InventoryError(f"inventory {path} does not exist")
    result = subprocess.run(
        [sys.executable, "-m", "govstack.inventory", str(path)], capture_output=True, text=True, timeout=120
    )
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise InventoryError(f"inventory {path} cannot be loaded: {last}")
    return hosts_from_dump(path, json.loads(result.stdout))


def hosts_from_dump(path: str, entries: list[dict[str, Any]]) -> list[InventoryHost]:
    """Each host's settings, built from the data layers a dump (dump_hosts) reports."""
    hosts = []
    for entry in entries:
        settings = build_settings(entry["layers"], source=entry["name"])
        hosts.append(InventoryHost(entry["name"], settings, tuple(entry["groups"]), entry["data"]))
    if not hosts:
        raise InventoryError(f"inventory {path} has no hosts")
    return hosts


def _dump(path: str) -> list[dict[str, Any]]:
    """Hosts of an inventory file with their data layers (lowest priority first)."""
    from pyinfra.api import Config, Inventory, State
    from pyinfra.context import ctx_state
    from pyinfra_cli.inventory import make_inventory_from_files

    # exec_file records the file being run on pyinfra's current state, as
    # under the pyinfra CLI; an empty state is enough to read data.
    with ctx_state.use(State(Inventory(([], {})), Config())):
        inventory = make_inventory_from_files(path)
    return dump_hosts(inventory)


def dump_hosts(inventory) -> list[dict[str, Any]]:
    """A loaded pyinfra inventory's hosts as JSON-able data: this module's child
    process reports it, and so does a deploy held at its gate (govstack/gate.py)."""
    from pyinfra.api.host import extract_callable_datas

    out = []
    for host in inventory.hosts.values():
        datas = [data for data in extract_callable_datas(host.data.datas) if isinstance(data, dict)]
        plain = {key: value for key, value in host.data.dict().items() if _is_json(value)}
        out.append(
            {
                "name": host.name,
                "groups": sorted({str(group) for group in host.groups}),
                "layers": [data.get(INVENTORY_KEY) for data in reversed(datas)],
                "data": plain,
            }
        )
    return out


def _is_json(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


if __name__ == "__main__":
    try:
        print(json.dumps(_dump(sys.argv[1])))
    except Exception as error:  # a broken inventory file: one line, the cause
        print(f"{type(error).__name__}: {error}", file=sys.stderr)
        raise SystemExit(1) from None
