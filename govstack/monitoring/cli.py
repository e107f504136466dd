"""`govstack status` (registered on the main CLI by govstack/cli.py)."""

from __future__ import annotations

import json

import click

from govstack.inventory import InventoryError, load_inventory
from govstack.monitoring.status import StatusError, format_status, host_status
from govstack.settings import SettingsError

DEFAULT_INVENTORY = "inventories/local.py"

inventory_option = click.option("-i", "--inventory", default=DEFAULT_INVENTORY, show_default=True,
                                help="pyinfra inventory file")


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"govstack: {message}", err=True)
    raise SystemExit(code)


@click.command()
@inventory_option
@click.option("--json", "as_json", is_flag=True, help="machine-readable, for CI")
def status(inventory: str, as_json: bool) -> None:
    """Targets, firing alerts, serving color and version, backup age, p95s, indexing backlog."""
    try:
        hosts = load_inventory(inventory)
    except (InventoryError, SettingsError) as error:
        _fail(str(error), 2)
    results = []
    for entry in hosts:
        try:
            results.append(host_status(entry))
        except StatusError as error:
            _fail(str(error))
    if as_json:
        click.echo(json.dumps(results, indent=2, sort_keys=True))
    else:
        click.echo("\n".join(format_status(result) for result in results))


def register(main_group: click.Group) -> None:
    main_group.add_command(status)
