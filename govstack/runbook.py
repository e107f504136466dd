"""Runbooks that CI executes: `python -m govstack.runbook run runbooks/*.md`.

A runbook is Markdown for a person under pressure. Its shell blocks are
marked in the fence's info string, which GitHub does not render:

    ```sh {govstack:run on=data}               executed, in order, by the runner (and CI), on a data host
    ```sh {govstack:run on=controller timeout=900}   on the controller, with its own time limit in seconds
    ```sh {govstack:manual reason="needs a second machine"}   a command CI cannot run: shown, counted
    ```sh {govstack:human reason="a person posts the status"}  a person's step: shown, counted

An unmarked shell block (sh, bash, shell, console) is an error: every
command an operator may paste is either proven by CI or declared manual (or
a human step), with the reason. Other fences (text, json, a status
template) are prose.

Every executable block names where it runs (``on=``, required):
``controller`` is the machine with this checkout and the inventory (every
``govstack`` command runs there and reaches the hosts itself); ``edge``,
``app``, ``data`` or ``monitoring`` is the first inventory host of that
group (its role), and ``every-app`` (``every-<group>``) each host of the
group in turn. A host block runs on that host over the inventory's own
connection (``ssh`` with the host data's ``ssh_hostname``, ``ssh_user``,
``ssh_port``, ``ssh_key`` and known-hosts settings), so its ``docker`` is the
host's engine; on an all-in-one inventory (``@local``) every group is the
local machine and the block runs here.

Each executable block runs in ``bash -Eeuo pipefail`` with the environment
of the *target* stack (``env``: STACK_ROOT, PROJECT, …, derived from the
inventory's settings for the host the block runs on, and a few ``gs_*``
shell helpers). Variables and functions carry over from one block to the
next, whichever host ran it, as they do in the operator's terminal; the
working directory carries over between local blocks (the controller's starts
at the repository root). The first failing command stops the run and names
the runbook, the block, the host and the Markdown line. Every block is
bounded by a timeout.

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
from govstack.settings.catalog import ROLES

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_INVENTORY = "inventories/local.py"
SHELL_LANGUAGES = frozenset({"sh", "bash", "shell", "console"})
MARK = re.compile(r"\{govstack:(?P<kind>[a-z]+)(?P<attrs>[^}]*)\}")
KINDS = ("run", "manual", "human")
CONTROLLER = "controller"
# Where a block may run: the controller, the first host of a group, or every host of a group.
TARGETS = (CONTROLLER, *ROLES, *(f"every-{role}" for role in ROLES))
# Long enough for a restore or a blue/green deploy of the test stack (each
# well under 5 minutes there); a block that needs more says so itself.
DEFAULT_TIMEOUT_S = 600
# How much of a failed block's output the error repeats.
TAIL_LINES = 25

# Shell helpers every block (and the operator's shell, via `env`) has. On the
# controller of a split inventory, those that reach containers go to the host
# of the service's group over the inventory's SSH (GS_SSH_<group>, GS_SSH_EVERY
# from the runner): gs_psql to the data host, gs_app to an app host,
# gs_wait_healthy to every host. In a block that runs on a host (and on an
# all-in-one stack) they use the local docker. gs_curl and gs_api reach the
# edge by its address with its certificate. No Python: hosts need only bash,
# coreutils and docker.
HELPERS = r'''
gs_on() {  # gs_on GROUP CMD [ARGS]: CMD on the first host of GROUP, over the inventory's SSH (here when local)
  local via="GS_SSH_$1"
  shift
  if [ -n "${!via:-}" ]; then
    eval "${!via}" "$(printf '%q' "$(printf '%q ' "$@")")"
  else
    "$@"
  fi
}
gs_every() {  # gs_every CMD [ARGS]: CMD on every host of the inventory in turn (here when local)
  local via
  if [ -n "${GS_SSH_EVERY:-}" ]; then
    while IFS= read -r via; do
      eval "$via" "$(printf '%q' "$(printf '%q ' "$@")")" < /dev/null || return
    done <<< "$GS_SSH_EVERY"
  else
    "$@"
  fi
}
gs_serving_color() {  # the color that serves traffic (state/release.json of an app host)
  # One line, keys sorted: "color" is the first key (the previous release's comes later).
  gs_on app sed -n 's/^{"color": *"\([a-z]*\)".*/\1/p' "$STACK_ROOT/state/release.json" | grep .
}
gs_role_of() {  # gs_role_of SERVICE: the group whose hosts run it
  case "$1" in
    api|worker|analytics) echo app ;;
    nginx) echo edge ;;
    prometheus|alertmanager|grafana|blackbox-exporter) echo monitoring ;;
    *) echo data ;;
  esac
}
gs_container() {  # gs_container SERVICE: its running container (api/worker/analytics: of the serving color)
  local project="$PROJECT" role
  role=$(gs_role_of "$1")
  case "$1" in api|worker|analytics) project="$PROJECT-$(gs_serving_color)" ;; esac
  local id
  id=$(gs_on "$role" docker ps -q --filter "label=com.docker.compose.project=$project" \
    --filter "label=com.docker.compose.service=$1" --filter status=running | head -n 1)
  [ -n "$id" ] || { echo "gs_container: no running $1 container in $project" >&2; return 1; }
  echo "$id"
}
gs_psql() {  # the superuser in the stack's database (on the data host): gs_psql -tAc 'select 1'
  gs_on data docker exec -i "$(gs_container postgres)" psql -X -q -v ON_ERROR_STOP=1 -U postgres -d "$DATABASE" "$@"
}
gs_app() {  # govstack-app in the serving color's API container (on an app host): gs_app config
  gs_on app docker exec -i "$(gs_container api)" govstack-app "$@"
}
gs_curl() {  # curl to the public edge by its address (self-signed edges: their certificate)
  curl -fsS --max-time 120 --resolve "$EDGE_RESOLVE" ${EDGE_CA:+--cacert "$EDGE_CA"} "$@"
}
gs_api() {  # gs_api METHOD PATH [curl args]: the API as the bootstrap admin (the key stays out of argv)
  local method=$1 path=$2
  shift 2
  gs_curl -X "$method" -H @<(printf 'X-API-Key: %s\n' "$(gs_on app cat "$SECRETS_DIR/app_admin_api_key")") "$@" \
    "$PUBLIC_URL$path"
}
gs_unhealthy() {  # gs_unhealthy PROJECT STACK_ROOT: this host's containers of the stack that are not healthy
  local color="" project
  if [ -e "$2/state/release.json" ]; then
    color=$(sed -n 's/^{"color": *"\([a-z]*\)".*/\1/p' "$2/state/release.json")
  fi
  for project in "$1" ${color:+"$1-$color"}; do
    docker ps -a --filter "label=com.docker.compose.project=$project" \
      --filter label=com.docker.compose.oneoff=False --format '{{.Names}}: {{.Status}}' | grep -v '(healthy)' || true
  done
}
gs_wait_healthy() {  # gs_wait_healthy [SECONDS]: every container of the stack (and serving color), every host
  local deadline=$(( $(date +%s) + ${1:-300} )) bad via check
  check="$(declare -f gs_unhealthy); gs_unhealthy $(printf '%q %q' "$PROJECT" "$STACK_ROOT")"
  while :; do
    bad=""
    if [ -n "${GS_SSH_EVERY:-}" ]; then
      while IFS= read -r via; do
        bad+=$(eval "$via" "$(printf '%q' "$check")" < /dev/null)
      done <<< "$GS_SSH_EVERY"
    else
      bad=$(gs_unhealthy "$PROJECT" "$STACK_ROOT")
    fi
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
    r"OLDPWD|PWD|RANDOM|SRANDOM|SECONDS|LINENO|EPOCHREALTIME|EPOCHSECONDS|HISTCMD|OPTIND|OPTERR|__GS_[A-Z_]*|__gs_[a-z_]*|"
    # The machine's own, which a block on another host must not inherit.
    r"PATH|HOME|USER|LOGNAME|SHELL|HOSTNAME|HOSTTYPE|MACHTYPE|OSTYPE|TERM|TMPDIR|MAIL|LANG|LC_[A-Z]*|"
    r"SSH_[A-Z_]*|XDG_[A-Z_]*|DBUS_[A-Z_]*|VIRTUAL_ENV|PYTHON[A-Z_]*"
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
    on: str = CONTROLLER  # where it runs (TARGETS)
    section: str = ""  # the heading it sits under

    @property
    def recovery(self) -> bool:
        """Under a "## If …" heading: what to do after a failure, run only when asked (--section)."""
        return self.section.startswith("If ")

    @property
    def where(self) -> str:
        return f"{_display(self.path)} block {self.number} (line {self.line})"


@dataclass
class RunbookResult:
    path: Path
    executed: int = 0
    manual: int = 0
    human: int = 0
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
    section = ""
    tokens = MarkdownIt("commonmark").parse(text)
    for index, token in enumerate(tokens):
        if token.type == "heading_open" and token.tag in ("h1", "h2"):
            section = tokens[index + 1].content.strip()
            continue
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
            raise RunbookError(f"{where}: unknown mark govstack:{kind}; use govstack:run, govstack:manual "
                               "or govstack:human")
        attrs = _attributes(mark["attrs"], where)
        unknown = set(attrs) - {"timeout", "reason", "on"}
        if unknown:
            raise RunbookError(f"{where}: unknown attribute {sorted(unknown)[0]!r} (allowed: on, timeout, reason)")
        reason = attrs.get("reason", "")
        if kind == "manual" and not reason:
            raise RunbookError(f'{where}: a manual block needs reason="why CI cannot run it"')
        if kind == "human" and not reason:
            raise RunbookError(f'{where}: a human step needs reason="what the person does"')
        on = attrs.get("on", "")
        if kind == "run" and not on:
            raise RunbookError(f"{where}: say where block {number} runs: on=GROUP ({', '.join(TARGETS)})")
        if on and on not in TARGETS:
            raise RunbookError(f"{where}: on={on!r} is not one of {', '.join(TARGETS)}")
        try:
            timeout_s = int(attrs.get("timeout", DEFAULT_TIMEOUT_S))
        except ValueError:
            raise RunbookError(f"{where}: timeout must be whole seconds") from None
        if not 1 <= timeout_s <= 6 * 3600:
            raise RunbookError(f"{where}: timeout must be between 1 and 21600 seconds")
        if not token.content.strip():
            raise RunbookError(f"{where}: block {number} is empty")
        blocks.append(Block(path, number, kind, token.content, first_line, timeout_s, reason, on or CONTROLLER,
                            section))
    return blocks


# -- the target stack's environment -------------------------------------------------------------
def stack_environment(inventory: str, host: str | None = None, hosts: list | None = None) -> dict[str, str]:
    """The variables every block gets, derived from one inventory host's settings.

    Runbooks use these instead of literal paths, so the same text runs
    against production (inventories/local.py) and the test stack in CI.
    On a split inventory a host without the edge role reaches the edge by
    the edge host's private address (EDGE_RESOLVE).
    """
    from govstack.roles import TopologyError, plan_fields_for_entry

    hosts = hosts if hosts is not None else load_inventory(inventory)
    matches = [h for h in hosts if host in (None, h.name)]
    if not matches:
        raise RunbookError(f"no host {host!r} in {inventory}")
    entry = matches[0]
    s = entry.settings
    inventory_path = Path(inventory)
    if not inventory_path.is_absolute():
        inventory_path = (Path.cwd() / inventory_path).resolve()
    edge_address = "127.0.0.1"
    try:
        fields = plan_fields_for_entry(entry, hosts)
    except TopologyError as error:
        raise RunbookError(str(error)) from None
    if fields and "edge" not in fields["roles"]:
        edge_address = fields["topology"].edge_addresses[0]
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
        # curl reaches the edge by its address (loopback on the edge host), whatever the public name resolves to.
        "EDGE_RESOLVE": f"{s.edge.hostname}:{s.edge.https_port}:{edge_address}",
        # A self-signed edge's certificate, for curl --cacert; empty with an operator's certificate.
        # (On a host or controller without the edge's files, the runner puts a copy here.)
        "EDGE_CA": s.paths.config.edge_cert if s.edge.tls_cert_path is None else "",
        # The certificate file nginx serves, on the edge host.
        "EDGE_CERT": s.paths.config.edge_cert,
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
source "$__GS_TARGET"
if [ -n "${__GS_CWD:-}" ]; then source "$__GS_CWD"; fi
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
  } > "$__GS_STATE.next" && mv "$__GS_STATE.next" "$__GS_STATE"
  if [ -n "${__GS_CWD:-}" ]; then printf 'cd %q\n' "$PWD" > "$__GS_CWD"; fi
}
trap '[ $? -eq 0 ] && __gs_save' EXIT
source "$__GS_BLOCK"
"""
# The keys of stack_environment that belong to the host a block runs on (the rest are the
# controller's: its inventory path, Python and checkout).
_HOST_KEYS = ("GOVSTACK_HOST", "STACK_ROOT", "PROJECT", "DATABASE", "APP_USER", "BUCKET", "DATA_DIR", "SECRETS_DIR",
              "CONFIG_DIR", "STACK_COMPOSE_FILE", "BACKUP_ROOT", "PUBLIC_URL", "EDGE_RESOLVE", "EDGE_CA",
              "EDGE_CERT")
SSH_CONNECT_TIMEOUT_S = 15


def _failed_line(block: Block, err_text: str, block_file: str) -> int | None:
    """The Markdown line of the failing command, from the ERR trap's record."""
    try:
        _rc, lineno, sources, linenos = err_text.split("\n")[:4]
    except ValueError:
        return None
    frames = sources.split()
    callers = linenos.split()
    # The outermost frame in the block: the command the operator pasted (a
    # failure inside a function points at the call).
    found = None
    for depth, source in enumerate(frames):
        if source == block_file:
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


def ssh_command(data: Mapping[str, object], name: str, control_dir: Path | None = None) -> list[str]:
    """``ssh`` to an inventory host over the connection its pyinfra host data describes.
    ``control_dir``: share one connection per host (a run opens many; each new one costs a
    handshake), closed by :func:`close_connections`."""
    hostname = str(data.get("ssh_hostname") or name)
    user = str(data.get("ssh_user") or "root")
    argv = ["ssh", "-T", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={SSH_CONNECT_TIMEOUT_S}",
            "-o", "LogLevel=ERROR", "-p", str(data.get("ssh_port") or 22)]
    if control_dir is not None:
        argv += ["-o", "ControlMaster=auto", "-o", f"ControlPath={control_dir}/ssh-%C", "-o", "ControlPersist=120"]
    if data.get("ssh_key"):
        argv += ["-i", os.path.expanduser(str(data["ssh_key"])), "-o", "IdentitiesOnly=yes"]
    if data.get("ssh_known_hosts_file"):
        argv += ["-o", f"UserKnownHostsFile={os.path.expanduser(str(data['ssh_known_hosts_file']))}"]
    strict = data.get("ssh_strict_host_key_checking")
    if strict is not None:
        argv += ["-o", f"StrictHostKeyChecking={'yes' if strict is True else 'no' if strict is False else strict}"]
    return [*argv, f"{user}@{hostname}"]


def close_connections(control_dir: Path) -> None:
    """End the shared SSH connections a run opened (their master processes)."""
    for socket in control_dir.glob("ssh-*"):
        subprocess.run(["ssh", "-o", f"ControlPath={socket}", "-O", "exit", "unused"], capture_output=True,
                       timeout=30, stdin=subprocess.DEVNULL, check=False)


@dataclass
class Target:
    """Where one block runs: the controller, or an inventory host (local or over SSH)."""

    name: str  # "controller" or the inventory host's name
    env: dict[str, str]  # the host's part of the environment (_HOST_KEYS)
    ssh: list[str] | None = None  # None: this machine
    edge_ca_pem: str = ""  # shipped with the block when the edge's certificate is on another host


class Targets:
    """The hosts each ``on=`` names, from the inventory in the environment (loaded once)."""

    def __init__(self, env: Mapping[str, str], tmp: Path | None = None, control_dir: Path | None = None):
        self.env = env
        self.tmp = tmp
        self.control_dir = control_dir
        self._entries = None
        self._edge_ca: str | None = None

    @property
    def inventory(self) -> str | None:
        return self.env.get("GOVSTACK_INVENTORY")

    @property
    def entries(self):
        if self._entries is None:
            if not self.inventory:
                raise RunbookError("host blocks need GOVSTACK_INVENTORY (govstack runbook run -i INVENTORY)")
            self._entries = load_inventory(self.inventory)
        return self._entries

    def _with_role(self, role: str) -> list:
        from govstack.roles import roles_of

        found = [entry for entry in self.entries if role in roles_of(entry.groups)]
        if not found:
            raise RunbookError(f"no {role} host in {self.inventory}")
        return found

    @staticmethod
    def _local(entry) -> bool:
        return entry.name.startswith("@local")

    def resolve(self, on: str) -> list[Target]:
        if on == CONTROLLER:
            return [self._controller()]
        every, _, role = on.rpartition("-")
        entries = self._with_role(role)
        return [self._target(entry) for entry in (entries if every else entries[:1])]

    def _controller(self) -> Target:
        env = {key: self.env[key] for key in _HOST_KEYS if key in self.env}
        env.update({f"GS_SSH_{role}": "" for role in ROLES}, GS_SSH_EVERY="")
        if not self.inventory or all(self._local(entry) for entry in self.entries):
            return Target(CONTROLLER, env)
        # A split (or remote) inventory: the helpers reach each group's first host over SSH, and
        # the edge by its address with its certificate.
        from govstack.roles import roles_of

        for role in ROLES:
            hosts = [entry for entry in self.entries if role in roles_of(entry.groups)]
            if hosts and not self._local(hosts[0]):
                env[f"GS_SSH_{role}"] = shlex.join(ssh_command(hosts[0].data, hosts[0].name, self.control_dir))
        env["GS_SSH_EVERY"] = "\n".join(shlex.join(ssh_command(entry.data, entry.name, self.control_dir))
                                        for entry in self.entries if not self._local(entry))
        edge = self._with_role("edge")[0]
        if not self._local(edge):
            from govstack.roles import host_address

            edge_env = stack_environment(self.inventory, edge.name, self.entries)
            hostname, port, _ = edge_env["EDGE_RESOLVE"].rsplit(":", 2)
            env["EDGE_RESOLVE"] = f"{hostname}:{port}:{host_address(edge.name, edge.data, edge.settings)}"
            if edge_env["EDGE_CA"] and self.tmp is not None:
                import hashlib

                name = hashlib.sha256(f"{self.inventory}:{edge.name}".encode()).hexdigest()[:12]
                ca = self.tmp / f"govstack-edge-ca-{name}.crt"
                ca.write_text(self.edge_ca_pem())
                env["EDGE_CA"] = str(ca)
        return Target(CONTROLLER, env)

    def _target(self, entry) -> Target:
        from govstack.roles import roles_of

        env = stack_environment(self.inventory, entry.name, self.entries)
        target = Target(entry.name, {key: env[key] for key in _HOST_KEYS})
        target.env.update({f"GS_SSH_{role}": "" for role in ROLES}, GS_SSH_EVERY="")
        if self._local(entry):
            return target
        target.ssh = ssh_command(entry.data, entry.name, self.control_dir)
        if env["EDGE_CA"] and "edge" not in roles_of(entry.groups):
            target.edge_ca_pem = self.edge_ca_pem()
        return target

    def edge_ca_pem(self) -> str:
        if self._edge_ca is not None:
            return self._edge_ca
        edge = self._with_role("edge")[0]
        path = stack_environment(self.inventory, edge.name, self.entries)["EDGE_CA"]
        if self._local(edge):
            self._edge_ca = Path(path).read_text()
            return self._edge_ca
        read = subprocess.run([*ssh_command(edge.data, edge.name, self.control_dir), f"cat {shlex.quote(path)}"],
                              capture_output=True,
                              text=True, timeout=60, stdin=subprocess.DEVNULL)
        if read.returncode != 0:
            raise RunbookError(f"{edge.name}: cannot read the edge certificate {path}: {read.stderr.strip()[-300:]}")
        self._edge_ca = read.stdout
        return self._edge_ca


def _exports(env: Mapping[str, str]) -> str:
    return "".join(f"export {key}={shlex.quote(value)}\n" for key, value in env.items())


def run_runbook(path: Path | str, env: Mapping[str, str], *, out=None, dry_run: bool = False,
                section: str | None = None) -> RunbookResult:
    """Run the executable blocks of one runbook in order, each where its ``on=`` says;
    RunbookError on the first failure. Blocks under an "If …" heading (what to do after a
    failure) run only as ``section``, which runs that section's blocks alone."""
    out = out or sys.stdout
    path = Path(path)
    blocks = parse_runbook(path)
    if section is not None:
        blocks = [block for block in blocks if block.section == section]
        if not blocks:
            raise RunbookError(f"{_display(path)} has no shell block under a heading {section!r}")
    else:
        for block in blocks:
            if block.recovery:
                print(f"== {block.where}: after a failure only (section {block.section!r}), not run", file=out)
        blocks = [block for block in blocks if not block.recovery]
    result = RunbookResult(path)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="govstack-runbook-") as tmp:
        targets = Targets(env, Path(tmp), control_dir=Path(tmp))
        state = Path(tmp, "state.sh")
        state.write_text(shell_preamble(env))
        cwd = Path(tmp, "cwd.sh")
        cwd.write_text(f"cd {shlex.quote(str(REPO_ROOT))}\n")
        base_env = {**os.environ, **env}
        bindir = str(Path(sys.executable).parent)
        base_env["PATH"] = f"{bindir}:{base_env.get('PATH', '/usr/bin:/bin')}"
        for block in blocks:
            if block.kind != "run":
                kind = "manual, not executed" if block.kind == "manual" else "a person's step"
                if block.kind == "manual":
                    result.manual += 1
                else:
                    result.human += 1
                result.manual_reasons.append(f"block {block.number} (line {block.line}): {block.reason}")
                print(f"== {block.where}: {kind} ({block.reason})", file=out, flush=True)
                continue
            if dry_run:
                result.executed += 1
                print(f"== {block.where}: would run on {block.on} (timeout {block.timeout_s} s)", file=out,
                      flush=True)
                continue
            try:
                for target in targets.resolve(block.on):
                    _run_block(block, target, Path(tmp), state, cwd, base_env, out)
            except BaseException:
                close_connections(Path(tmp))
                raise
            result.executed += 1
        close_connections(Path(tmp))
    result.seconds = time.monotonic() - started
    return result


def _run_block(block: Block, target: Target, tmp: Path, state: Path, cwd: Path, base_env: Mapping[str, str],
               out) -> None:
    on = target.name if target.name == CONTROLLER else f"{target.name} ({block.on})"
    print(f"== {block.where}: running on {on} (timeout {block.timeout_s} s)", file=out, flush=True)
    block_started = time.monotonic()
    tail: list[str] = []
    if target.ssh is None:
        block_file = tmp / f"block-{block.number}.sh"
        err_file = tmp / f"block-{block.number}.err"
        err_file.unlink(missing_ok=True)
        target_file = tmp / "target.sh"
        block_file.write_text(block.code)
        target_file.write_text(_exports(target.env))
        block_env = {**base_env, "__GS_STATE": str(state), "__GS_BLOCK": str(block_file), "__GS_ERR": str(err_file),
                     "__GS_TARGET": str(target_file), "__GS_CWD": str(cwd), "__GS_SPECIAL": _SPECIAL}
        argv, stdin, cwd_dir = ["bash", "-c", _WRAPPER], None, REPO_ROOT
        remote_dir = ""
    else:
        # Everything the block needs travels in one script on ssh's stdin, into a directory of its
        # own on the host; its state comes back when it succeeded, and the directory is removed.
        remote_dir = f"/tmp/govstack-runbook-{os.urandom(8).hex()}"
        block_file_name = f"{remote_dir}/block.sh"
        target_env = dict(target.env)
        files = {"state.sh": state.read_text(), "block.sh": block.code, "wrapper.sh": _WRAPPER}
        if target.edge_ca_pem:
            files["edge-ca.crt"] = target.edge_ca_pem
            target_env["EDGE_CA"] = f"{remote_dir}/edge-ca.crt"
        files["target.sh"] = _exports(target_env)
        import base64

        script = [f"set -e; umask 077; install -d -m 700 {remote_dir}; cd {remote_dir}"]
        for name, text in files.items():
            script.append(f"printf %s {base64.b64encode(text.encode()).decode()} | base64 -d > {name}")
        script.append("set +e; cd ~")
        script.append(f"__GS_STATE={remote_dir}/state.sh __GS_BLOCK={block_file_name} __GS_ERR={remote_dir}/err "
                      f"__GS_TARGET={remote_dir}/target.sh __GS_CWD= __GS_SPECIAL={shlex.quote(_SPECIAL)} "
                      f"timeout --kill-after=10 {block.timeout_s} bash {remote_dir}/wrapper.sh < /dev/null")
        script.append("exit $?")
        argv, stdin, cwd_dir = [*target.ssh, "bash -s"], "\n".join(script) + "\n", REPO_ROOT
        block_env = dict(os.environ)
        block_file = Path(block_file_name)
    proc = subprocess.Popen(
        argv, env=block_env, cwd=cwd_dir, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
        start_new_session=True,  # the timeout kills the whole process group
    )
    if stdin:
        assert proc.stdin is not None
        proc.stdin.write(stdin)
        proc.stdin.close()
    deadline = block_started + block.timeout_s + (15 if remote_dir else 0)
    timed_out = _pump(proc, out, tail, deadline)
    if timed_out:
        _kill_group(proc)
    err_text = ""
    if target.ssh is not None:
        err_text, new_state = _collect_remote(target, remote_dir, proc.returncode == 0 and not timed_out)
        if new_state is not None:
            state.write_text(new_state)
    else:
        err_file = tmp / f"block-{block.number}.err"
        err_text = err_file.read_text() if err_file.exists() else ""
    where = "" if target.name == CONTROLLER else f" on {on}"
    if timed_out or (target.ssh is not None and proc.returncode == 124):
        raise RunbookError(f"{block.where} timed out after {block.timeout_s} s{where}; last output:\n"
                           + "\n".join(tail[-TAIL_LINES:]))
    if proc.returncode != 0:
        line = _failed_line(block, err_text, str(block_file))
        at = f", at line {line}: {_line_text(block.path, line)}" if line else ""
        raise RunbookError(f"{block.where} failed{where} with exit code {proc.returncode}{at}; last output:\n"
                           + "\n".join(tail[-TAIL_LINES:]))
    print(f"== {block.where}: ok in {time.monotonic() - block_started:.1f} s", file=out, flush=True)


_STATE_END = "\n__GS_STATE_END__\n"


def _collect_remote(target: Target, remote_dir: str, succeeded: bool) -> tuple[str, str | None]:
    """(the ERR trap's record, the new state when the block succeeded) of a host block; removes its directory."""
    assert target.ssh is not None
    state = f"cat {remote_dir}/state.sh; " if succeeded else ""
    command = (f"{state}printf %s {shlex.quote(_STATE_END)}; cat {remote_dir}/err 2>/dev/null; "
               f"rm -rf {remote_dir}")
    try:
        got = subprocess.run([*target.ssh, command], capture_output=True, text=True, timeout=120,
                             stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise RunbookError(f"{target.name}: reading the block's state timed out") from None
    if got.returncode != 0 or _STATE_END not in got.stdout:
        raise RunbookError(f"{target.name}: reading the block's state failed: {got.stderr.strip()[-300:]}")
    new_state, _, err = got.stdout.partition(_STATE_END)
    return err, (new_state if succeeded else None)


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
    lines = [f"{'runbook':40} {'executed':>8} {'manual':>6} {'human':>6}" + (f" {'seconds':>8}" if timed else "")]
    for r in results:
        lines.append(f"{_display(r.path):40} {r.executed:>8} {r.manual:>6} {r.human:>6}"
                     + (f" {r.seconds:>8.1f}" if timed else ""))
    executed = sum(r.executed for r in results)
    manual = sum(r.manual for r in results)
    human = sum(r.human for r in results)
    total = executed + manual + human
    share = f"{100 * executed / total:.0f}%" if total else "n/a"
    verb = "executed" if timed else "executable"
    lines.append(f"executed/manual/human: {executed}/{manual}/{human} ({share} of {total} shell blocks {verb})")
    return "\n".join(lines)


# -- the site's part of a runbook ---------------------------------------------------------------
ESCALATION_MARK = "<!-- govstack:escalation -->"


def escalation_markdown(settings) -> str:
    """The escalation chain of ``runbooks.escalation``, as Markdown (a loud line when none is set)."""
    contacts = settings.runbooks.escalation
    if not contacts:
        return ("**Escalation contacts: none are set for this site.** Set `runbooks.escalation` in the "
                "inventory (a list of `{role, name, reach}`, in order), then `govstack runbook show` lists them "
                "here.")
    lines = ["**Escalation contacts** (setting `runbooks.escalation`, in order):", ""]
    lines += [f"{n}. {c.role}: {c.name}, {c.reach}" for n, c in enumerate(contacts, 1)]
    return "\n".join(lines)


def render_runbook(text: str, settings) -> str:
    """A runbook with the site's settings filled in where it marks them."""
    return text.replace(ESCALATION_MARK, escalation_markdown(settings))


# -- CLI -----------------------------------------------------------------------------------------
inventory_option = click.option("-i", "--inventory", default=DEFAULT_INVENTORY, show_default=True,
                                help="pyinfra inventory of the target stack")
host_option = click.option("--host", "host_name", default=None,
                           help="inventory host whose settings the controller's blocks see (default: the first)")


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
        if prefix is None:
            # The controller's view: helpers reach a split inventory's hosts over SSH, curl the edge by its address.
            env.update(Targets(env, Path(tempfile.gettempdir())).resolve(CONTROLLER)[0].env)
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
                               manual=sum(b.kind == "manual" for b in blocks),
                               human=sum(b.kind == "human" for b in blocks))
        results.append(result)
    click.echo(summarize(results, timed=False))


@runbook_cli.command("show")
@inventory_option
@host_option
@click.argument("name")
def show_command(inventory: str, host_name: str | None, name: str) -> None:
    """Print a runbook (runbooks/NAME.md) with the site's escalation contacts filled in."""
    path = Path(name) if name.endswith(".md") else REPO_ROOT / "runbooks" / f"{name}.md"
    if not path.is_file():
        raise click.BadParameter(f"no runbook {name!r} (govstack runbook list)", param_hint="NAME")
    from govstack.inventory import InventoryError
    from govstack.settings import SettingsError

    try:
        hosts = load_inventory(inventory)
    except (InventoryError, SettingsError) as error:
        raise click.ClickException(str(error)) from None
    entry = next((h for h in hosts if host_name in (None, h.name)), None)
    if entry is None:
        raise click.ClickException(f"no host {host_name!r} in {inventory}")
    click.echo(render_runbook(path.read_text(encoding="utf-8"), entry.settings), nl=False)


@runbook_cli.command("run")
@inventory_option
@host_option
@click.option("--set", "assignments", multiple=True, metavar="NAME=VALUE", help="an extra variable for the blocks")
@click.option("--dry-run", is_flag=True, help="parse and list, run nothing")
@click.option("--section", default=None, metavar="HEADING",
              help='only the blocks under this heading, e.g. "If the restore fails" (such sections run only so)')
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
def run_command(inventory: str, host_name: str | None, assignments: tuple[str, ...], dry_run: bool,
                section: str | None, paths: tuple[str, ...]) -> None:
    """Run the executable blocks of each runbook, in order; stop at the first failure."""
    extra = {}
    for assignment in assignments:
        name, sep, value = assignment.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise click.BadParameter(f"{assignment!r} is not NAME=VALUE", param_hint="--set")
        extra[name] = value
    results = []
    escalation = ""
    try:
        env = {**stack_environment(inventory, host_name), **extra}
        settings = next(h.settings for h in load_inventory(inventory) if h.name == env["GOVSTACK_HOST"])
        escalation = escalation_markdown(settings)
        for path in paths:
            results.append(run_runbook(path, env, dry_run=dry_run, section=section))
    except RunbookError as error:
        if results:
            click.echo(summarize(results))
        click.echo(f"govstack: runbook failed: {error}", err=True)
        click.echo("The runbook's \"If a step fails\" says what this leaves behind.", err=True)
        if escalation:
            click.echo(escalation, err=True)
        raise SystemExit(1) from None
    click.echo(summarize(results))


def register(main_group: click.Group) -> None:
    """Add `govstack runbook …` to the main CLI."""
    main_group.add_command(runbook_cli)


if __name__ == "__main__":
    runbook_cli(prog_name=f"{Path(sys.executable).name} -m govstack.runbook")
