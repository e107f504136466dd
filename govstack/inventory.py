"""Load a pyinfra inventory file and build each host's settings, before any
host is touched: a bad key fails here with its name."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from govstack.settings import Settings, settings_for_host


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
    from pyinfra_cli.inventory import make_inventory_from_files

    try:
        # exec_file records the file being run on pyinfra's current state, as
        # under the pyinfra CLI; an empty state is enough to read data.
        from pyinfra.api import Config, Inventory, State
        from pyinfra.context import ctx_state

        with ctx_state.use(State(Inventory(([], {})), Config())):
            inventory = make_inventory_from_files(str(path))
    except Exception as error:  # pyinfra raises many kinds for a broken file
        raise InventoryError(f"inventory {path} cannot be loaded: {error}") from None
    hosts = []
    for host in inventory.hosts.values():
        settings = settings_for_host(host)
        groups = tuple(sorted({str(group) for group in host.groups}))
        hosts.append(InventoryHost(host.name, settings, groups, host.data.dict()))
    if not hosts:
        raise InventoryError(f"inventory {path} has no hosts")
    return hosts
