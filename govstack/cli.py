"""`govstack`: the thin operator CLI over pyinfra and the checks.

Every subcommand takes ``-i INVENTORY`` (default ``inventories/local.py``) and
works the same against any inventory.
"""

from __future__ import annotations

import importlib
import os
import queue
import re
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import click

# Only what every command needs is imported here: `govstack up` starts its
# deploy before it imports the settings model, and never imports the feature
# packages (their commands join the group when asked for: _MainGroup).
from govstack.faults import CONTROLLER_PID_ENV
from govstack.lock import command_lock, lock_wait_option

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_INVENTORY = "inventories/local.py"
VERSION_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"govstack: {message}", err=True)
    raise SystemExit(code)


def _hosts(inventory: str):
    from govstack.inventory import InventoryError, load_inventory
    from govstack.settings import SettingsError

    try:
        return load_inventory(inventory)
    except (InventoryError, SettingsError) as error:
        _fail(str(error), 2)


def _gated_hosts(inventory: str, deploy_file: str = "site.py"):
    """(hosts, deploy held at its gate) for a command that runs ``deploy_file``
    under the lock: the deploy starts now and reports the hosts (GatedDeploy).
    When it cannot (it ended first), the hosts come from the inventory child as
    for every other command, whose errors are the ones to show, and the deploy
    is None: run_pyinfra then starts it afresh under the lock."""
    if not Path(inventory).is_file():
        return _hosts(inventory), None
    gated = GatedDeploy(inventory, deploy_file)
    try:
        # While pyinfra starts (it takes longer): what this process needs once
        # the hosts are reported, the settings model and the ledger's host access.
        importlib.import_module("govstack.ledger")
        from govstack.inventory import InventoryError, hosts_from_dump
        from govstack.settings import SettingsError

        entries = gated.hosts()
        if entries is not None:
            try:
                return hosts_from_dump(inventory, entries), gated
            except (InventoryError, SettingsError) as error:
                _fail(str(error), 2)
    except BaseException:
        gated.close()
        raise
    gated.close()
    return _hosts(inventory), None


inventory_option = click.option(
    "-i",
    "--inventory",
    default=DEFAULT_INVENTORY,
    show_default=True,
    help="pyinfra inventory file",
)


class _MainGroup(click.Group):
    """The main group, whose feature packages' commands (backup, compliance,
    runbooks, …) are imported the first time its command table is read (help,
    completion, a command not defined here, a test walking it): a command
    defined in this module runs without importing them."""

    _pending: Callable[[click.Group], None] | None = None

    @property
    def commands(self) -> dict[str, click.Command]:  # type: ignore[override]
        if self._pending is not None:
            register, self._pending = self._pending, None
            register(self)
        return self._commands

    @commands.setter
    def commands(self, value: dict[str, click.Command]) -> None:
        self._commands = value

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return self._commands.get(cmd_name) or super().get_command(ctx, cmd_name)


@click.group(cls=_MainGroup)
def main() -> None:
    """Deploy and operate the govstack document platform."""


def _pyinfra(inventory: str, *extra: str, deploy_file: str, env: dict[str, str] | None = None,
             pass_fds: tuple[int, ...] = ()) -> subprocess.Popen:
    """pyinfra running a deploy file, its output (stdout and stderr) on one pipe.
    Any host failing stops every host (--fail-percent 0): a multi-host release
    must not switch some hosts and not others."""
    # --dry needs pyinfra's change detection, which -y (no prompt) skips.
    yes = [] if "--dry" in extra else ["-y"]
    cmd = [
        sys.executable, "-m", "pyinfra", *yes, "--fail-percent", "0",
        inventory, str(REPO_ROOT / "deploys" / deploy_file), *extra,
    ]
    # The deploy dies with this process (govstack/faults.py): once the stack
    # lock is gone, nothing of this command may still act on a host.
    controller = {CONTROLLER_PID_ENV: str(os.getpid())}
    return subprocess.Popen(
        cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
        env={**os.environ, **(env or {}), **controller}, pass_fds=pass_fds,
    )


def _stream(lines) -> str | None:
    """Echo pyinfra's output; return the most specific cause it printed (our
    operations print theirs as ``govstack: …``)."""
    cause = None
    for line in lines:
        sys.stdout.write(line)
        text = line.strip()
        host_cause = re.match(r"^\[(?P<host>[^\]]+)\] govstack: (?P<cause>.*)$", text)
        if host_cause:
            cause = f"{host_cause['host']}: {host_cause['cause']}"
        elif text.startswith("govstack: "):
            cause = text.removeprefix("govstack: ")
        elif cause is None and re.search(r"(Could not connect|Connection refused|No hosts remaining)", text):
            cause = text.lstrip("-> ")
    return cause


def run_pyinfra(
    inventory: str, *extra: str, deploy_file: str = "site.py", env: dict[str, str] | None = None,
    gated: GatedDeploy | None = None,
) -> tuple[int, str | None]:
    """Run a deploy file, streaming pyinfra's output; return its exit code and
    the most specific cause it printed. With ``gated`` (a deploy of that file
    already started and waiting at its gate), open the gate instead of starting one."""
    if gated is not None:
        return gated.proceed()
    with _pyinfra(inventory, *extra, deploy_file=deploy_file, env=env) as proc:
        assert proc.stdout is not None
        cause = _stream(proc.stdout)
    return proc.returncode, cause


class GatedDeploy:
    """pyinfra started before the stack lock is taken, held at its gate
    (govstack/gate.py) until ``proceed``: its start-up (imports, inventory,
    connections) overlaps the CLI's, and the hosts it reports spare the
    inventory child process. Its output is kept until the gate opens, and
    dropped with it when the gate stays shut (``close``).

    ``hosts()`` is None when the deploy ended, or did not report, before its
    gate (a broken inventory, an unreachable host, …): the caller then closes
    it and takes the ordinary path, whose errors say what is wrong."""

    REPORT_TIMEOUT_S = 120

    def __init__(self, inventory: str, deploy_file: str = "site.py") -> None:
        from govstack.gate import GATE_ENV

        self.inventory = inventory
        hosts_r, hosts_w = os.pipe()
        go_r, go_w = os.pipe()
        try:
            self.proc = _pyinfra(inventory, deploy_file=deploy_file, env={GATE_ENV: f"{hosts_w},{go_r}"},
                                 pass_fds=(hosts_w, go_r))
        except BaseException:
            for fd in (hosts_r, hosts_w, go_r, go_w):
                os.close(fd)
            raise
        os.close(hosts_w)
        os.close(go_r)
        self._hosts_r, self._go_w = hosts_r, go_w
        self._lines: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._state = "waiting"

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def hosts(self) -> list[dict] | None:
        """The hosts the deploy reported (govstack.inventory.dump_hosts), or None."""
        import json

        chunks = []
        deadline = time.monotonic() + self.REPORT_TIMEOUT_S
        with os.fdopen(self._hosts_r, "rb") as report:
            while (left := deadline - time.monotonic()) > 0:
                if not select.select([report], [], [], left)[0]:
                    continue
                chunk = report.read1(1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
            else:
                return None
        try:
            entries = json.loads(b"".join(chunks))
        except ValueError:
            return None
        return entries if isinstance(entries, list) else None

    def proceed(self) -> tuple[int, str | None]:
        """Open the gate; stream the deploy to its end (as run_pyinfra)."""
        from govstack.gate import GO

        assert self._state == "waiting", self._state
        self._state = "open"
        try:
            os.write(self._go_w, f"{GO}\n".encode())
        except BrokenPipeError:
            pass  # it already ended: its output says why
        finally:
            os.close(self._go_w)
        cause = _stream(iter(self._lines.get, None))
        self.proc.wait()
        self._reader.join(timeout=10)
        return self.proc.returncode, cause

    def close(self) -> None:
        """Keep the gate shut: the deploy ends having done nothing, its output dropped."""
        if self._state != "waiting":
            return
        self._state = "shut"
        os.close(self._go_w)  # the deploy reads end of input at its gate and exits
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # not yet at its gate (still connecting, say)
            self.proc.wait()
        self._reader.join(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def _report_interrupted(hosts, found_by: str) -> None:
    """Ledger lines for a command a crash interrupted (read under the lock)."""
    from govstack.ledger import report_interrupted

    for line in report_interrupted(hosts, found_by):
        click.echo(f"govstack: {line}", err=True)


def _recorded_run(hosts, inventory: str, action: str, version: str | None, deploy_file: str,
                  env: dict[str, str] | None = None,
                  gated: GatedDeploy | None = None) -> tuple[int, str | None, float]:
    """run_pyinfra between an attempt record and a ledger line on every host."""
    from govstack.ledger import append_outcome, begin_attempt, end_attempt, take_rollback_path, take_safety_copy

    for entry in hosts:
        begin_attempt(entry, action, version)
    started = time.monotonic()
    code, cause = run_pyinfra(inventory, deploy_file=deploy_file, env=env, gated=gated)
    duration = round(time.monotonic() - started, 1)
    paths = set()
    for entry in hosts:
        extra = {}
        if copy := take_safety_copy(entry):
            extra["pre_deploy_copy"] = copy
        if path := take_rollback_path(entry):
            extra["rollback_path"] = path
            paths.add(path)
        append_outcome(entry, action, version, code, cause, duration, **extra)
        end_attempt(entry)
    for path in sorted(paths):
        click.echo("rollback: started the containers the last release kept" if path == "kept"
                   else f"rollback: took the full release path ({path.removeprefix('full: ')})")
    return code, cause, duration


def _release(inventory: str, action: str, version: str | None, lock_wait: float) -> None:
    from govstack.ledger import read_release

    if version is not None and not VERSION_PATTERN.fullmatch(version):
        _fail(f"version {version!r} is not a valid image tag ([A-Za-z0-9][A-Za-z0-9_.-]*, 64 max)", 2)
    hosts = _hosts(inventory)
    with command_lock(hosts, f"{action} {version}" if version else action, lock_wait):
        _report_interrupted(hosts, action)
        # The release records are read only now, under the lock: a command
        # that waited acts on what the previous one left, not on what it saw before.
        current = {entry.name: read_release(entry) for entry in hosts}
        missing = [name for name, release in current.items() if release is None]
        if missing:
            _fail(f"{missing[0]}: no release yet; run `govstack up` first", 2)
        if action == "rollback":
            previous = {release.previous.version if release.previous else None for release in current.values()}
            if None in previous or len(previous) != 1:
                _fail("nothing to roll back to: the ledger has no previous release on every host", 2)
            version = previous.pop()
        assert version is not None
        code, cause, duration = _recorded_run(hosts, inventory, action, version, "release.py",
                                              env={"GOVSTACK_RELEASE_VERSION": version,
                                                   "GOVSTACK_RELEASE_ACTION": action})
        switched = code != 0 and any(read_release(entry) != current[entry.name] for entry in hosts)
    if switched:
        # The record is written with the switch: past it, the new release serves.
        _fail(f"{action} of {version} failed after the switch; {version} serves and is recorded: "
              f"{cause or 'see above'}", code)
    if code != 0:
        _fail(f"{action} of {version} failed, traffic stays on the previous color: {cause or 'see above'}", code)
    click.echo(f"{action} of {version} done in {duration} s")


@main.command()
@inventory_option
@click.option("--version", "version", required=True, help="image tag to deploy (built from app/ if missing)")
@lock_wait_option
def deploy(inventory: str, version: str, lock_wait: float) -> None:
    """Blue/green: start VERSION in the idle color, switch the edge, retire the old color."""
    _release(inventory, "deploy", version, lock_wait)


@main.command()
@inventory_option
@lock_wait_option
def rollback(inventory: str, lock_wait: float) -> None:
    """Switch back to the previous color and version, the same safe way."""
    _release(inventory, "rollback", None, lock_wait)


@main.command()
@inventory_option
@click.option("--json", "as_json", is_flag=True, help="one JSON object per line")
def history(inventory: str, as_json: bool) -> None:
    """The deploy ledger of every host."""
    import json

    from govstack.ledger import read_ledger

    for entry in _hosts(inventory):
        for record in read_ledger(entry):
            if as_json:
                click.echo(json.dumps({"host": entry.name, **record}, sort_keys=True))
            else:
                duration = record.get("duration_s")
                what = record.get("secret") or record.get("version") or "-"
                who = record["operator"] + (f" ({record['os_user']})" if record.get("os_user") else "")
                click.echo(
                    f"{entry.name}  {record['time']}  {who:28}  {record['action']:8}  "
                    f"{what:24}  {record['result']:11}  "
                    f"{'-' if duration is None else duration:>6} s  "
                    f"{record.get('serving') or ''}  {record.get('cause') or record.get('reason') or ''}".rstrip()
                )


@main.command()
@inventory_option
@click.option("--dry", is_flag=True, help="show what would change, change nothing")
@click.option("--diff", is_flag=True, help="show file diffs (with --dry)")
@lock_wait_option
def up(inventory: str, dry: bool, diff: bool, lock_wait: float) -> None:
    """Deploy the whole stack to every host of the inventory."""
    if dry:
        hosts = _hosts(inventory)
        # Changes nothing, so it takes no lock (it may show what a running command is changing).
        code, cause = run_pyinfra(inventory, *[flag for flag, on in (("--dry", dry), ("--diff", diff)) if on])
    else:
        hosts, gated = _gated_hosts(inventory)
        try:
            with command_lock(hosts, "up", lock_wait):
                _report_interrupted(hosts, "up")
                code, cause, _ = _recorded_run(hosts, inventory, "up", None, "site.py", gated=gated)
        finally:
            if gated is not None:
                gated.close()
    if code != 0:
        _fail(f"deploy failed: {cause or f'pyinfra exited {code}, see its output above'}", code)
    if dry:
        return
    for name, settings in hosts:
        click.echo(f"{name}: {settings.public_url}  (secrets: {settings.secrets_dir} on the host)")


@main.command()
@inventory_option
@click.argument("pytest_args", nargs=-1)
def check(inventory: str, pytest_args: tuple[str, ...]) -> None:
    """Verify every inventory host with the testinfra suite (tests/hosts)."""
    _hosts(inventory)
    env = {**os.environ, "GOVSTACK_INVENTORY": str(Path(inventory).resolve())}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(REPO_ROOT / "tests" / "hosts"),
           *pytest_args]
    raise SystemExit(subprocess.run(cmd, cwd=REPO_ROOT, env=env).returncode)


class _SecretGroup(click.Group):
    """`govstack secret NAME` prints a secret; `govstack secret rotate NAME` replaces one."""

    def resolve_command(self, ctx, args):
        if args and args[0] not in self.commands:
            return "show", self.commands["show"], args
        return super().resolve_command(ctx, args)


@main.group(cls=_SecretGroup, invoke_without_command=True)
@click.option("--list", "list_names", is_flag=True, help="list the secret names")
@click.pass_context
def secret(ctx: click.Context, list_names: bool) -> None:
    """List secret names, print one an operator explicitly asks for (NAME --reason WHY, recorded in the
    ledger), or rotate one (rotate NAME)."""
    if ctx.invoked_subcommand is None:
        from govstack.secrets import SECRET_SPECS

        for spec in sorted(SECRET_SPECS.values(), key=lambda spec: spec.name):
            how = f"rotate: {spec.rotation}" if spec.rotation else ""
            click.echo(f"{spec.name:26} {spec.description}" + (f"  [{how}]" if how else ""))


@secret.command("show", hidden=True)
@inventory_option
@click.option("--host", "host_name", default=None, help="inventory host (default: the only one)")
@click.option("--reason", required=True,
              help="why you need it (an incident, a ticket): recorded in the host's ledger with who and from where")
@click.argument("name")
def show_secret(inventory: str, host_name: str | None, reason: str, name: str) -> None:
    from govstack.secrets import SECRET_SPECS, secret_path

    if not reason.strip():
        _fail("--reason must say why the secret is needed", 2)
    if name not in SECRET_SPECS:
        _fail(f"unknown secret {name!r}; `govstack secret --list` shows the names", 2)
    hosts = _hosts(inventory)
    matches = [entry for entry in hosts if host_name in (None, entry.name)]
    if len(matches) != 1:
        _fail("name one host with --host (the inventory has several)" if matches else f"no host {host_name!r}", 2)
    host, settings = matches[0]
    from govstack.remote import read_host_file
    from govstack.roles import ALL_ROLES, TopologyError, plan_fields_for_entry

    def holds(entry) -> bool:
        try:
            roles = plan_fields_for_entry(entry, hosts).get("roles", ALL_ROLES)
        except TopologyError as error:
            _fail(str(error), 2)
        return bool(SECRET_SPECS[name].needed_by & roles)

    if not holds(matches[0]):
        # A split inventory's host holds only the secrets its roles read.
        holders = [entry.name for entry in hosts if holds(entry)]
        _fail(f"host {host} does not hold secret {name} (its roles do not read it)"
              + (f"; it is on: {', '.join(holders)}" if holders else ""), 2)
    from govstack.ledger import record_reveal

    try:
        value = read_host_file(inventory, host, secret_path(settings, name))
    except FileNotFoundError:
        _fail(f"secret {name} does not exist yet on {host}; run `govstack up` first")
    try:
        record_reveal(matches[0], name, reason.strip())
    except RuntimeError as error:
        _fail(f"the reveal could not be recorded, so the secret is not shown: {error}")
    click.echo(value)


@secret.command("rotate")
@inventory_option
@lock_wait_option
@click.option("--grace", "grace_s", type=click.FloatRange(min=0), default=None,
              help="S3 keys: seconds the old key pair stays valid after the switch (default: the 300 s "
                   "presigned URLs live)")
@click.argument("name")
def rotate_secret(inventory: str, lock_wait: float, grace_s: float | None, name: str) -> None:
    """Replace secret NAME on every host that holds it, without downtime (an S3 key names its pair)."""
    from govstack.rotation import DEFAULT_S3_GRACE_S, RotationRefused, check_rotatable, rotate

    hosts = _hosts(inventory)
    try:
        check_rotatable(name, hosts)  # refused before any host is locked or touched
        with command_lock(hosts, f"secret rotate {name}", lock_wait):
            _report_interrupted(hosts, "secret rotate")
            summary = rotate(inventory, hosts, name, DEFAULT_S3_GRACE_S if grace_s is None else grace_s,
                             run_pyinfra)
    except RotationRefused as error:
        _fail(str(error), 2)
    except RuntimeError as error:
        _fail(str(error), 1)
    click.echo(summary)


@main.command()
@inventory_option
@click.option("--window", "window_s", type=float, default=60, show_default=True, help="seconds to average over")
@click.option("--json", "as_json", is_flag=True)
def cost(inventory: str, window_s: float, as_json: bool) -> None:
    """Average CPU and memory per service over a window, priced with govstack.cost settings."""
    import json
    from dataclasses import asdict

    from govstack.cost import CostError, container_costs

    for entry in _hosts(inventory):
        prices = entry.settings.cost
        try:
            costs, left_out = container_costs(entry, prices, window_s=window_s)
        except CostError as error:
            _fail(str(error))
        if as_json:
            click.echo(json.dumps({"host": entry.name, "currency": prices.currency,
                                   "services": [asdict(c) for c in costs],
                                   "left_out": [asdict(c) for c in left_out]}, indent=2))
            continue
        click.echo(f"{entry.name}: {window_s:.0f} s average, {prices.currency}/hour "
                   f"(CPU {prices.cpu_core_hour}/core·h, memory {prices.memory_gb_hour}/GiB·h)")
        for c in costs:
            click.echo(f"  {c.project:18} {c.service:18} {c.cpu_cores:7.3f} cores {c.memory_gib:7.3f} GiB "
                       f"{c.per_hour:9.5f}")
        total = sum(c.per_hour for c in costs)
        click.echo(f"  total {total:.4f} {prices.currency}/hour, {total * 24 * 30:.2f} per 30 days")
        for c in left_out:
            click.echo(f"  not priced: {c.project} {c.service} ({c.why})")


def _register_features(group: click.Group) -> None:
    """The feature packages' commands join the main group."""
    from govstack.admin_key import register as register_admin_key
    from govstack.backup.cli import backup, drill, restore
    from govstack.compliance.cli import register as register_compliance
    from govstack.compliance.cli import report_group
    from govstack.monitoring.cli import register as register_monitoring
    from govstack.reconcile.cli import register as register_reconcile
    from govstack.runbook import register as register_runbook

    register_compliance(group)
    register_admin_key(group)
    register_reconcile(group, report_group)
    register_runbook(group)
    register_monitoring(group)
    group.add_command(backup)
    group.add_command(restore)
    group.add_command(drill)


main._pending = _register_features

if __name__ == "__main__":
    main()
