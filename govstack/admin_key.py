"""``govstack admin-key rotate``: a new bootstrap admin API key, without locking the operator out.

The bootstrap admin key is an API key like any other: an admin rotates or revokes it through the
API (``POST /api/v1/keys/bootstrap-admin/rotate``, ``DELETE /api/v1/keys/bootstrap-admin``), and
the app keeps what the API did across restarts. The deploy's secret file ``app_admin_api_key``
seeds it, and the app applies that file again only when it changed (govstack_app/db.py).

This command is the operator's way in that needs no API key, e.g. after the key leaked or was
revoked. It holds the stack lock (govstack/lock.py) like every command that changes a host, so
it never runs beside a deploy, restore or another rotation (a busy lock exits 3 naming its holder;
``--lock-wait`` waits for it). In this order, on each all-in-one host:

1. a new key is generated on the host and replaces the secret file (atomic rename, 0600, owned
   by the app's uid): from here any start of the API (or the deploy's migrate step) applies it,
   because its database never saw it; so does the start that ends a restore of an older database;
2. ``govstack-app set-admin-key`` in the serving API container sets it in the database from that
   file (stdin; no key on a command line), active and unscoped: the old key stops working;
3. the serving API answers ``GET /api/v1/keys`` with the new key.

The app remembers every secret-file value it applied, so a container that still sees the replaced
file (a Compose file secret is a bind mount of the old inode) cannot bring the old key back.

A failure after 1 leaves the new key in the file and the old one in the database: running the
command again (or restarting the app) finishes it. It never leaves a key that is in neither.
"""

from __future__ import annotations

import click

from govstack.commands import last_json, q
from govstack.inventory import InventoryError, InventoryHost, load_inventory
from govstack.lock import command_lock, lock_wait_option, operator
from govstack.remote import RemoteError, StackHost, stack_plan, testinfra_host
from govstack.secrets import SECRET_SPECS, secret_path
from govstack.settings import SettingsError

SECRET = "app_admin_api_key"  # noqa: S105 - the secret's name, not its value
BOOTSTRAP_KEY_NAME = "bootstrap-admin"

_CHECK_SCRIPT = (
    "import sys, urllib.request; key = sys.stdin.readline().strip(); "
    "request = urllib.request.Request('http://127.0.0.1:8000/api/v1/keys', headers={'X-API-Key': key}); "
    "print(urllib.request.urlopen(request, timeout=10).status)"
)


class AdminKeyError(RemoteError):
    """A step failed; the message is for the operator."""


class AdminKeyHost(StackHost):
    error_class = AdminKeyError

    def __init__(self, entry: InventoryHost) -> None:
        super().__init__(testinfra_host(entry.name, entry.data), stack_plan(entry.settings), name=entry.name)


def new_secret_command(path: str, length: int, owner_uid: int) -> str:
    """Replace the secret file with a new random value of the deploy's alphabet and length,
    atomically, owned by its reader. 512 random bytes give ~124 of [A-Za-z0-9] (``length`` is
    40), and no stage of the pipe is cut short (the remote shell runs with pipefail)."""
    return (
        f"umask 077 && tmp=$(mktemp {q(path)}.XXXXXX) && "
        f"head -c 512 /dev/urandom | LC_ALL=C tr -dc 'A-Za-z0-9' | head -c {length} >\"$tmp\" && "
        f"[ \"$(wc -c <\"$tmp\")\" -eq {length} ] && chown {owner_uid}:{owner_uid} \"$tmp\" && mv \"$tmp\" {q(path)}"
    )


def rotate_admin_key(shell: AdminKeyHost) -> str:
    """Steps 1-3 on one host; the new key's prefix (never the key)."""
    settings = shell.settings
    if SECRET in settings.secrets:
        raise shell.error(f"{SECRET} is supplied by the inventory (govstack.secrets): change it there, run "
                          "`govstack up`, then restart the app (it applies a changed secret)")
    path = secret_path(settings, SECRET)
    spec = SECRET_SPECS[SECRET]
    out = shell.out(
        f"{new_secret_command(path, spec.length, spec.owner_uid)} && "
        f"{shell.in_app('govstack-app')} set-admin-key --name {BOOTSTRAP_KEY_NAME} "
        f"--actor {q(f'operator:{operator()}')} < {q(path)}",
        timeout=120,
    )
    status = shell.out(f"{shell.in_app('python3')} -c {q(_CHECK_SCRIPT)} < {q(path)}", timeout=60).strip()
    if status != "200":
        raise shell.error(f"the serving API refused the new key ({status})")
    answer = last_json(out)
    return str(answer["key_prefix"]) if isinstance(answer, dict) else "?"


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"govstack: {message}", err=True)
    raise SystemExit(code)


@click.group("admin-key")
def admin_key_group() -> None:
    """The bootstrap admin API key (secret app_admin_api_key)."""


@admin_key_group.command("rotate")
@click.option("-i", "--inventory", default="inventories/local.py", show_default=True, help="pyinfra inventory file")
@click.option("--host", "host_name", default=None, help="one inventory host (default: every host)")
@lock_wait_option
def rotate(inventory: str, host_name: str | None, lock_wait: float) -> None:
    """A new bootstrap admin key: in the secret file first, then in the database; the old one stops working."""
    from govstack.roles import topology_from_entries

    try:
        entries = load_inventory(inventory)
    except (InventoryError, SettingsError) as error:
        _fail(str(error), 2)
    if topology_from_entries(entries) is not None:
        _fail("split inventory: every app host and the controller's shared copy hold app_admin_api_key; replace the "
              "shared copy, run `govstack up`, then start the app hosts' serving color again (a changed secret "
              "file is applied at start), see runbooks/rotate-secrets.md", 2)
    chosen = [entry for entry in entries if host_name in (None, entry.name)]
    if not chosen:
        _fail(f"no host {host_name!r} in {inventory}", 2)
    with command_lock(entries, "admin-key rotate", lock_wait):
        for entry in chosen:
            try:
                prefix = rotate_admin_key(AdminKeyHost(entry))
            except RemoteError as error:
                _fail(str(error))
            click.echo(f"{entry.name}: bootstrap admin key rotated (prefix {prefix}); the old key no longer works. "
                       f"`govstack secret {SECRET}` prints the new one")


def register(main_group: click.Group) -> None:
    main_group.add_command(admin_key_group)
