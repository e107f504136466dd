"""Runbooks that CI executes: `python -m govstack.runbook run runbooks/*.md`.

A runbook is Markdown for a person under pressure. Its shell blocks are
marked in the fence's info string, which GitHub does not render:

    ```sh {govstack:run}                       executed, in order, by the runner (and CI)
    ```sh {govstack:run timeout=900}           with its own time limit in seconds
    ```sh {govstack:manual reason="pages a person"}   shown, counted, never executed

An unmarked shell block (sh, bash, shell, console) is an error: every
command an operator may paste is either proven by CI or declared manual,
with the reason. Other fences (text, json, a status template) are prose.

Each executable block runs in ``bash -Eeuo pipefail`` from the repository
root, with the environment of the *target* stack (``env``: STACK_ROOT,
PROJECT, …, derived from the inventory's settings, and a few ``gs_*`` shell
helpers). Variables, functions and the working directory carry over from
one block to the next, as they do in the operator's terminal. The first
failing command stops the run and names the runbook, the block and the
Markdown line. Every block is bounded by a timeout.

An operator gets the same environment with
``eval "$(.venv/bin/python -m govstack.runbook env -i INVENTORY)"``.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import click

from govstack.inventory import load_inventory

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_INVENTORY = "inventories/local.py"
SHELL_LANGUAGES = frozenset({"sh", "bash", "shell", "console"})
MARK = re.compile(r"\{govstack:(?P<kind>[a-z]+)(?P<attrs>[^}]*)\}")
KINDS = ("run", "manual")
# Long enough for a restore or a blue/green deploy of the test stack (each
# well under 5 minutes there); a block that needs more says so itself.
DEFAULT_TIMEOUT_S = 600
# How much of a failed block's output the error repeats.
TAIL_LINES = 25

# Shell helpers every block (and the operator's shell, via `env`) has. They
# assume what every runbook says: run on the stack's host, as root, from
# the govstack-deploy checkout.
HELPERS = r'''
gs_serving_color() {  # the color that serves traffic (state/release.json)
  "$GOVSTACK_PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["color"])' \
    "$STACK_ROOT/state/release.json"
}
gs_container() {  # gs_container SERVICE: its running container (api/worker/analytics: of the serving color)
  local project="$PROJECT"
  case "$1" in api|worker|analytics) project="$PROJECT-$(gs_serving_color)" ;; esac
  local id
  id=$(docker ps -q --filter "label=com.docker.compose.project=$project" \
    --filter "label=com.docker.compose.service=$1" --filter status=running | head -n 1)
  [ -n "$id" ] || { echo "gs_container: no running $1 container in $project" >&2; return 1; }
  echo "$id"
}
gs_psql() {  # the superuser in the stack's database: gs_psql -tAc 'select 1'
  docker exec -i "$(gs_container postgres)" psql -X -q -v ON_ERROR_STOP=1 -U postgres -d "$DATABASE" "$@"
}
gs_app() {  # govstack-app in the serving color's API container: gs_app config
  docker exec -i "$(gs_container api)" govstack-app "$@"
}
gs_curl() {  # curl to the public edge, from the host itself (self-signed edges: their certificate)
  curl -fsS --max-time 120 --resolve "$EDGE_RESOLVE" ${EDGE_CA:+--cacert "$EDGE_CA"} "$@"
}
gs_api() {  # gs_api METHOD PATH [curl args]: the API as the bootstrap admin (the key stays out of argv)
  local method=$1 path=$2
  shift 2
  gs_curl -X "$method" -H @<(printf 'X-API-Key: %s\n' "$(cat "$SECRETS_DIR/app_admin_api_key")") "$@" "$PUBLIC_URL$path"
}
gs_wait_healthy() {  # gs_wait_healthy [SECONDS]: every container of the stack and the serving color healthy
  local deadline=$(( $(date +%s) + ${1:-300} )) bad project
  while :; do
    bad=""
    for project in "$PROJECT" "$PROJECT-$(gs_serving_color)"; do
      bad+=$(docker ps -a --filter "label=com.docker.compose.project=$project" \
        --filter label=com.docker.compose.oneoff=False --format '{{.Names}}: {{.Status}}' | grep -v '(healthy)' || true)
    done
    [ -z "$bad" ] && return 0
    [ "$(date +%s)" -ge "$deadline" ] && { printf 'not healthy in time:\n%s\n' "$bad" >&2; return 1; }
    sleep 2
  done
}
'''

# Bash variables a block cannot usefully hand to the next one (read-only,
# per-process or the runner's own).
_SPECIAL = (
    r"BASH[A-Z_]*|FUNCNAME|GROUPS|PIPESTATUS|DIRSTACK|_|COMP_[A-Z]*|SHELLOPTS|EUID|PPID|UID|SHLVL|"
    r"OLDPWD|PWD|RANDOM|SRANDOM|SECONDS|LINENO|EPOCHREALTIME|EPOCHSECONDS|HISTCMD|OPTIND|OPTERR|__GS_[A-Z_]*|__gs_[a-z_]*"
)


class RunbookError(Exception):
    """A runbook is malformed, or one of its blocks failed."""


@dataclass(frozen=True)
class Block:
    path: Path
    number: int  # 1-based among the file's shell blocks
    kind: str  # run | manual
    code: str
    line: int  # Markdown line of the block's first command
    timeout_s: int = DEFAULT_TIMEOUT_S
    reason: str = ""

    @property
    def where(self) -> str:
        return f"{_display(self.path)} block {self.number} (line {self.line})"


@dataclass
class RunbookResult:
    path: Path
    executed: int = 0
    manual: int = 0
    seconds: float = 0.0
    manual_reasons: list[str] = field(default_factory=list)


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def _attributes(text: str, where: str) -> dict[str, str]:
    attrs = {}
    for word in shlex.split(text):
        key, sep, value = word.partition("=")
        if not sep:
            raise RunbookError(f"{where}: attribute {word!r} is not key=value")
        attrs[key] = value
    return attrs


def parse_runbook(path: Path | str, text: str | None = None) -> list[Block]:
    """The shell blocks of a runbook, in order; RunbookError for a block that is not marked."""
    from markdown_it import MarkdownIt

    path = Path(path)
    text = path.read_text(encoding="utf-8") if text is None else text
    blocks: list[Block] = []
    number = 0
    for token in MarkdownIt("commonmark").parse(text):
        if token.type != "fence" or token.map is None:
            continue
        info = token.info.strip()
        language = info.split(maxsplit=1)[0].lower() if info else ""
        first_line = token.map[0] + 2  # the fence is map[0] (0-based); its first content line follows
        where = f"{_display(path)}:{token.map[0] + 1}"
        mark = MARK.search(info)
        if language not in SHELL_LANGUAGES:
            if mark:
                raise RunbookError(f"{where}: only shell blocks ({', '.join(sorted(SHELL_LANGUAGES))}) can be marked")
            continue
        number += 1
        if not mark:
            raise RunbookError(
                f"{where}: shell block {number} is not marked; add {{govstack:run}} or "
                f'{{govstack:manual reason="why CI cannot run it"}} after the language'
            )
        kind = mark["kind"]
        if kind not in KINDS:
            raise RunbookError(f"{where}: unknown mark govstack:{kind}; use govstack:run or govstack:manual")
        attrs = _attributes(mark["attrs"], where)
        unknown = set(attrs) - {"timeout", "reason"}
        if unknown:
            raise RunbookError(f"{where}: unknown attribute {sorted(unknown)[0]!r} (allowed: timeout, reason)")
        reason = attrs.get("reason", "")
        if kind == "manual" and not reason:
            raise RunbookError(f'{where}: a manual block needs reason="why CI cannot run it"')
        try:
            timeout_s = int(attrs.get("timeout", DEFAULT_TIMEOUT_S))
        except ValueError:
            raise RunbookError(f"{where}: timeout must be whole seconds") from None
        if not 1 <= timeout_s <= 6 * 3600:
            raise RunbookError(f"{where}: timeout must be between 1 and 21600 seconds")
        if not token.content.strip():
            raise RunbookError(f"{where}: block {number} is empty")
        blocks.append(Block(path, number, kind, token.content, first_line, timeout_s, reason))
    return blocks


# -- the target stack's environment -------------------------------------------------------------
def stack_environment(inventory: str, host: str | None = None) -> dict[str, str]:
    """The variables every block gets, derived from one inventory host's settings.

    Runbooks use these instead of literal paths, so the same text runs
    against production (inventories/local.py) and the test stack in CI.
    """
    hosts = load_inventory(inventory)
    matches = [h for h in hosts if host in (None, h.name)]
    if not matches:
        raise RunbookError(f"no host {host!r} in {inventory}")
    entry = matches[0]
    s = entry.settings
    inventory_path = Path(inventory)
    if not inventory_path.is_absolute():
        inventory_path = (Path.cwd() / inventory_path).resolve()
    return {
        "GOVSTACK_INVENTORY": str(inventory_path),
        "GOVSTACK_HOST": entry.name,
        "GOVSTACK_PYTHON": sys.executable,
        "GOVSTACK_REPO": str(REPO_ROOT),
        "STACK_ROOT": s.stack_root,
        "PROJECT": s.project,
        "DATABASE": s.postgres.database,
        "APP_USER": s.postgres.app_user,
        "BUCKET": s.object_store.bucket,
        "DATA_DIR": s.data_dir,
        "SECRETS_DIR": s.secrets_dir,
        "CONFIG_DIR": s.config_dir,
        "STACK_COMPOSE_FILE": s.compose_file,
        "BACKUP_ROOT": s.paths.backups_dir,
        "PUBLIC_URL": s.public_url,
        # curl from the host reaches its own edge by loopback, whatever the public name resolves to.
        "EDGE_RESOLVE": f"{s.edge.hostname}:{s.edge.https_port}:127.0.0.1",
        # A self-signed edge's certificate, for curl --cacert; empty with an operator's certificate.
        "EDGE_CA": s.paths.config.edge_cert if s.edge.tls_cert_path is None else "",
    }


def shell_preamble(env: Mapping[str, str]) -> str:
    """`export` lines plus the helpers: what `env` prints for the operator's shell."""
    bindir = str(Path(sys.executable).parent)
    lines = [f"export {key}={shlex.quote(value)}" for key, value in env.items()]
    quoted = shlex.quote(bindir)
    lines.append(f'case ":$PATH:" in *:{quoted}:*) ;; *) export PATH={quoted}:"$PATH" ;; esac')
    return "\n".join(lines) + "\n" + HELPERS


# -- running -------------------------------------------------------------------------------------
_WRAPPER = r"""
set -Eeuo pipefail
trap 'printf "%s\n%s\n%s\n%s\n" "$?" "$LINENO" "${BASH_SOURCE[*]}" "${BASH_LINENO[*]}" > "$__GS_ERR"' ERR
source "$__GS_STATE"
__gs_save() {
  local __gs_n __gs_d __gs_f
  { for __gs_n in $(compgen -v); do
      [[ $__gs_n =~ ^($__GS_SPECIAL)$ ]] && continue
      __gs_d=$(declare -p "$__gs_n" 2>/dev/null) || continue
      __gs_f=${__gs_d#declare -}; __gs_f=${__gs_f%% *}
      [[ $__gs_f == *r* ]] && continue
      printf '%s\n' "$__gs_d"
    done
    declare -f
    printf 'cd %q\n' "$PWD"
  } > "$__GS_STATE.next" && mv "$__GS_STATE.next" "$__GS_STATE"
}
trap '[ $? -eq 0 ] && __gs_save' EXIT
source "$__GS_BLOCK"
"""


def _failed_line(block: Block, err_file: Path, block_file: Path) -> int | None:
    """The Markdown line of the failing command, from the ERR trap's record."""
    try:
        _rc, lineno, sources, linenos = err_file.read_text().split("\n")[:4]
    except (OSError, ValueError):
        return None
    frames = sources.split()
    callers = linenos.split()
    # The outermost frame in the block: the command the operator pasted (a
    # failure inside a function points at the call).
    found = None
    for depth, source in enumerate(frames):
        if source == str(block_file):
            found = lineno if depth == 0 else callers[depth - 1]
    return None if found is None else block.line + int(found) - 1


def _kill_group(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_runbook(path: Path | str, env: Mapping[str, str], *, out=None, dry_run: bool = False) -> RunbookResult:
    """Run the executable blocks of one runbook in order; RunbookError on the first failure."""
    out = out or sys.stdout
    path = Path(path)
    blocks = parse_runbook(path)
    result = RunbookResult(path)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="govstack-runbook-") as tmp:
        state = Path(tmp, "state.sh")
        state.write_text(shell_preamble(env) + f"cd {shlex.quote(str(REPO_ROOT))}\n")
        base_env = {**os.environ, **env}
        bindir = str(Path(sys.executable).parent)
        base_env["PATH"] = f"{bindir}:{base_env.get('PATH', '/usr/bin:/bin')}"
        for block in blocks:
            if block.kind == "manual":
                result.manual += 1
                result.manual_reasons.append(f"block {block.number} (line {block.line}): {block.reason}")
                print(f"== {block.where}: manual, not executed ({block.reason})", file=out, flush=True)
                continue
            if dry_run:
                result.executed += 1
                print(f"== {block.where}: would run (timeout {block.timeout_s} s)", file=out, flush=True)
                continue
            print(f"== {block.where}: running (timeout {block.timeout_s} s)", file=out, flush=True)
            block_file = Path(tmp, f"block-{block.number}.sh")
            err_file = Path(tmp, f"block-{block.number}.err")
            block_file.write_text(block.code)
            block_env = {**base_env, "__GS_STATE": str(state), "__GS_BLOCK": str(block_file),
                         "__GS_ERR": str(err_file), "__GS_SPECIAL": _SPECIAL}
            block_started = time.monotonic()
            tail: list[str] = []
            proc = subprocess.Popen(
                ["bash", "-c", _WRAPPER], env=block_env, cwd=REPO_ROOT, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                start_new_session=True,  # the timeout kills the whole process group
            )
            deadline = block_started + block.timeout_s
            timed_out = _pump(proc, out, tail, deadline)
            if timed_out:
                _kill_group(proc)
                raise RunbookError(f"{block.where} timed out after {block.timeout_s} s; last output:\n"
                                   + "\n".join(tail[-TAIL_LINES:]))
            if proc.returncode != 0:
                line = _failed_line(block, err_file, block_file)
                at = f", at line {line}: {_line_text(path, line)}" if line else ""
                raise RunbookError(f"{block.where} failed with exit code {proc.returncode}{at}; last output:\n"
                                   + "\n".join(tail[-TAIL_LINES:]))
            result.executed += 1
            print(f"== {block.where}: ok in {time.monotonic() - block_started:.1f} s", file=out, flush=True)
    result.seconds = time.monotonic() - started
    return result


def _pump(proc: subprocess.Popen, out, tail: list[str], deadline: float) -> bool:
    """Copy the block's output while it runs; True when the deadline passed first."""
    import selectors

    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return True
            if not sel.select(timeout=min(remaining, 1.0)):
                if proc.poll() is not None:
                    break
                continue
            line = proc.stdout.readline()
            if not line:
                break
            out.write(line)
            out.flush()
            tail.append(line.rstrip("\n"))
            del tail[:-TAIL_LINES * 4]
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        return True
    finally:
        sel.close()
    return False


def _line_text(path: Path, line: int) -> str:
    try:
        return path.read_text(encoding="utf-8").splitlines()[line - 1].strip()
    except (OSError, IndexError):
        return ""


def summarize(results: Iterable[RunbookResult], timed: bool = True) -> str:
    results = list(results)
    lines = [f"{'runbook':40} {'executed':>8} {'manual':>6}" + (f" {'seconds':>8}" if timed else "")]
    for r in results:
        lines.append(f"{_display(r.path):40} {r.executed:>8} {r.manual:>6}" + (f" {r.seconds:>8.1f}" if timed else ""))
    executed = sum(r.executed for r in results)
    manual = sum(r.manual for r in results)
    total = executed + manual
    share = f"{100 * executed / total:.0f}%" if total else "n/a"
    lines.append(f"executed/manual: {executed}/{manual} ({share} of {total} shell blocks executable)"
                 if not timed else f"executed/manual: {executed}/{manual} ({share} of {total} shell blocks executed)")
    return "\n".join(lines)


# -- CLI -----------------------------------------------------------------------------------------
inventory_option = click.option("-i", "--inventory", default=DEFAULT_INVENTORY, show_default=True,
                                help="pyinfra inventory of the target stack")
host_option = click.option("--host", "host_name", default=None, help="inventory host (default: the first)")


@click.group("runbook")
def runbook_cli() -> None:
    """Runbooks (runbooks/*.md): list, run their blocks, or print their environment."""


@runbook_cli.command("env")
@inventory_option
@host_option
@click.option("--prefix", default=None, metavar="PREFIX",
              help="only the variables, each name prefixed (e.g. NEW_ for a second stack), no helpers")
def env_command(inventory: str, host_name: str | None, prefix: str | None) -> None:
    """Print the runbooks' environment for the operator's shell: eval "$(… env -i INV)"."""
    try:
        env = stack_environment(inventory, host_name)
    except RunbookError as error:
        raise click.ClickException(str(error)) from None
    if prefix is not None:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", prefix):
            raise click.BadParameter("must be a shell name prefix", param_hint="--prefix")
        click.echo("".join(f"export {prefix}{key}={shlex.quote(value)}\n" for key, value in env.items()), nl=False)
        return
    click.echo(shell_preamble(env), nl=False)


@runbook_cli.command("list")
@click.argument("paths", nargs=-1, type=click.Path(exists=True, dir_okay=False))
def list_command(paths: tuple[str, ...]) -> None:
    """Each runbook's executable and manual blocks (checks the marks too)."""
    results = []
    for path in paths or sorted(str(p) for p in (REPO_ROOT / "runbooks").glob("*.md")):
        try:
            blocks = parse_runbook(path)
        except RunbookError as error:
            raise click.ClickException(str(error)) from None
        result = RunbookResult(Path(path), executed=sum(b.kind == "run" for b in blocks),
                               manual=sum(b.kind == "manual" for b in blocks))
        results.append(result)
    click.echo(summarize(results, timed=False))


@runbook_cli.command("run")
@inventory_option
@host_option
@click.option("--set", "assignments", multiple=True, metavar="NAME=VALUE", help="an extra variable for the blocks")
@click.option("--dry-run", is_flag=True, help="parse and list, run nothing")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
def run_command(inventory: str, host_name: str | None, assignments: tuple[str, ...], dry_run: bool,
                paths: tuple[str, ...]) -> None:
    """Run the executable blocks of each runbook, in order; stop at the first failure."""
    extra = {}
    for assignment in assignments:
        name, sep, value = assignment.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise click.BadParameter(f"{assignment!r} is not NAME=VALUE", param_hint="--set")
        extra[name] = value
    results = []
    try:
        env = {**stack_environment(inventory, host_name), **extra}
        for path in paths:
            results.append(run_runbook(path, env, dry_run=dry_run))
    except RunbookError as error:
        if results:
            click.echo(summarize(results))
        click.echo(f"govstack: runbook failed: {error}", err=True)
        raise SystemExit(1) from None
    click.echo(summarize(results))


def register(main_group: click.Group) -> None:
    """Add `govstack runbook …` to the main CLI."""
    main_group.add_command(runbook_cli)


if __name__ == "__main__":
    runbook_cli(prog_name=f"{Path(sys.executable).name} -m govstack.runbook")
