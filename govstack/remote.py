"""Reach an inventory host the way testinfra does (local or over SSH), for the
checks, operator reads and the CLI's remote jobs (backup, restore, drill,
compliance reports).

``StackHost`` is the one remote shell: everything that moves data runs *on
the host* as one shell pipeline built by govstack/commands.py (dumps never
cross the SSH connection, which carries only commands and answers).
testinfra's run() has no stdin and no timeout, so SQL travels as printf
arguments and every command is bounded by coreutils' timeout. Secrets are
read on the host inside printf's argument (a shell builtin): never an argv,
never in this process.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass
from typing import Any

from govstack.commands import (
    SUPERUSER,
    compose,
    compose_containers,
    compose_run,
    docker_exec,
    last_json,
    printf_lines,
    psql,
    q,
    words,
)
from govstack.inventory import load_inventory
from govstack.plan import StackPlan
from govstack.release import COLORS
from govstack.settings import Settings
from govstack.tuning import HostResources

# The app's Compose services (templates/compose/app.yml.j2): its writers (the analytics
# service writes its ledger).
APP_SERVICES = ("api", "worker", "analytics")


def testinfra_spec(name: str, data: dict[str, Any]) -> str:
    """testinfra backend URL for a pyinfra host: local, or paramiko over SSH.

    paramiko rather than the ssh backend: testinfra ignores --ssh-extra-args
    (pytest-testinfra#618), and paramiko takes the key and port from the URL.
    """
    if name == "@local":
        return "local://"
    hostname = data.get("ssh_hostname", name)
    user = data.get("ssh_user", "root")
    port = data.get("ssh_port", 22)
    spec = f"paramiko://{user}@{hostname}:{port}"
    if data.get("ssh_key"):
        spec += f"?ssh_identity_file={data['ssh_key']}"
    return spec


def testinfra_host(name: str, data: dict[str, Any]):
    import testinfra

    return testinfra.get_host(testinfra_spec(name, data))


def stack_plan(settings: Settings) -> StackPlan:
    """The plan the CLI's remote jobs use: paths, ports and names only. No tuning,
    so the host's real resources do not matter."""
    return StackPlan(settings, HostResources(memory_mb=1024, cpus=1))


def read_host_file(inventory: str, host_name: str, path: str) -> str:
    for entry in load_inventory(inventory):
        if entry.name == host_name:
            target = testinfra_host(entry.name, entry.data)
            file = target.file(path)
            if not file.exists:
                raise FileNotFoundError(path)
            return file.content_string.rstrip("\n")
    raise KeyError(host_name)


class RemoteError(RuntimeError):
    """A step on the host failed; the message is for the operator, ``kind`` for the caller."""

    def __init__(self, message: str, kind: str = "error") -> None:
        super().__init__(message)
        self.kind = kind


@dataclass
class Result:
    rc: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.rc == 0

    def tail(self, n: int = 3) -> str:
        lines = [line for line in (self.stderr or self.stdout).strip().splitlines() if line.strip()]
        return " | ".join(lines[-n:])


class StackHost:
    """One stack on one host: its Compose projects, containers, database and files.

    ``host`` is a testinfra host; ``name`` (the inventory host's) prefixes every
    error when given. Errors are ``error_class`` (a RemoteError), so a feature
    raises its own kind.
    """

    error_class: type[RemoteError] = RemoteError

    def __init__(self, host: Any, plan: StackPlan, name: str | None = None, default_timeout_s: int = 600) -> None:
        self.host = host
        self.plan = plan
        self.settings = plan.settings
        self.name = name
        self.default_timeout_s = default_timeout_s

    def error(self, message: str, kind: str = "error") -> RemoteError:
        return self.error_class(f"{self.name}: {message}" if self.name else message, kind)

    # -- shell ---------------------------------------------------------------------------------
    def sh(self, command: str, timeout: float | None = None, check: bool = False) -> Result:
        """``command`` in bash (pipefail) on the host, killed after ``timeout`` seconds."""
        seconds = int(timeout or self.default_timeout_s)
        out = self.host.run(f"timeout --kill-after=30 {seconds} bash -o pipefail -c {q(command)}")
        result = Result(out.rc, out.stdout, out.stderr)
        if result.rc == 124:
            raise self.error(f"timed out after {seconds}s: {command[:160]}", "timeout")
        if check and not result.ok:
            raise self.error(f"command failed ({result.rc}): {result.tail()}")
        return result

    def out(self, command: str, timeout: float | None = None) -> str:
        """The stdout of a command that must succeed."""
        return self.sh(command, timeout=timeout, check=True).stdout

    # -- compose projects and containers ---------------------------------------------------------
    def compose(self, *args: Any) -> str:
        """A ``docker compose`` command of the stack's data tier and edge project."""
        return compose(self.settings.project, *args, files=self.settings.compose_file)

    def containers(self, project: str, service: str, running_only: bool = True) -> list[str]:
        return self.sh(compose_containers(project, service, running_only=running_only), timeout=60).stdout.split()

    def container(self, service: str) -> str | None:
        ids = self.containers(self.settings.project, service)
        return ids[0] if ids else None

    def require_service(self, service: str) -> str:
        cid = self.container(service)
        if cid is None:
            raise self.error(f"the {service} service of {self.settings.project} is not running "
                             "(`govstack up` starts it)", "not-running")
        return cid

    def app_containers(self) -> list[str]:
        """Running api, worker and analytics containers of both colors: the writers."""
        ids = []
        for color in COLORS:
            for service in APP_SERVICES:
                ids += self.containers(self.plan.app_project(color), service)
        return ids

    def stop(self, ids: list[str], grace_s: int = 40) -> None:
        if ids:
            self.sh(f"docker stop -t {grace_s} {words(*ids)}", timeout=grace_s + 120, check=True)

    def start(self, ids: list[str]) -> None:
        if ids:
            self.sh(f"docker start {words(*ids)}", timeout=300, check=True)

    def wait_healthy(self, ids: list[str], timeout_s: float | None = None) -> None:
        deadline = time.monotonic() + (timeout_s or self.settings.healthy_timeout_s)
        pending = list(ids)
        while pending:
            fmt = "{{.Id}} {{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}"
            out = self.sh(f"docker inspect --format {q(fmt)} {words(*pending)}", timeout=60)
            states = {line.split()[0][:12]: line.split()[1:] for line in out.stdout.splitlines() if line.strip()}
            pending = [i for i in pending if states.get(i[:12], ["", ""])[1] not in ("healthy", "none")
                       or states.get(i[:12], [""])[0] != "running"]
            if not pending:
                return
            if time.monotonic() > deadline:
                raise self.error(f"containers not healthy in time: {', '.join(i[:12] for i in pending)}",
                                 "unhealthy")
            time.sleep(2)

    # -- the serving app color ------------------------------------------------------------------
    def serving_color(self) -> str:
        raw = self.sh(f"cat {q(self.settings.paths.release_file)}", timeout=30).stdout.strip()
        if not raw:
            raise self.error("no release yet; run `govstack up` first")
        return json.loads(raw)["color"]

    def serving_project(self) -> str:
        return self.plan.app_project(self.serving_color())

    def in_app(self, entrypoint: str) -> str:
        """The command prefix that runs ``entrypoint`` with the serving color's configuration: in its
        running API container, or, while the app is stopped (a maintenance window), in a one-off
        container of the same Compose service (same image, environment, secrets and networks)."""
        color = self.serving_color()
        project = self.plan.app_project(color)
        ids = self.containers(project, "api")
        if ids:
            return docker_exec(ids[0], entrypoint)
        return compose_run(project, self.plan.app_compose_file(color), "api", entrypoint=entrypoint)

    def app(self, *args: str, timeout: float = 900) -> str:
        """``govstack-app ARGS`` with the serving color's configuration; its stdout."""
        return self.out(f"{self.in_app('govstack-app')} {words(*args)}", timeout=timeout)

    def app_python(self, script: str, *args: str, timeout: float = 300) -> Any:
        """A Python snippet with the serving color's settings, clients and network; its JSON answer."""
        return last_json(self.out(f"{self.in_app('python3')} -c {q(script)} {words(*args)}", timeout=timeout))

    # -- postgres (the superuser over the server's local socket) --------------------------------
    def psql(self, sql: str, database: str = SUPERUSER, *, csv: bool = False, check: bool = True,
             timeout: float = 600) -> str:
        """Rows of SQL run by the superuser in the postgres container: tab-separated, or CSV with a header."""
        pg = self.require_service("postgres")
        command = f"{printf_lines(sql)} | {docker_exec(pg, *psql(database, rows=not csv, csv=csv))}"
        result = self.sh(command, timeout=timeout)
        if check and not result.ok:
            raise self.error(f"psql in {database} failed: {result.tail()}")
        return result.stdout

    def psql_script(self, script_shell: str, database: str = SUPERUSER, timeout: float = 600) -> None:
        """SQL printed by a shell snippet (so secrets stay on the host), run by the superuser."""
        pg = self.require_service("postgres")
        result = self.sh(f"{{ {script_shell}; }} | {docker_exec(pg, *psql(database))}", timeout=timeout)
        if not result.ok:
            raise self.error(f"psql in {database} failed: {result.tail()}")

    # -- files ---------------------------------------------------------------------------------
    def write_file(self, path: str, content: str, mode: str = "640") -> None:
        """``content`` into ``path`` (its directory made 0700 if missing): base64 in argument-sized
        chunks (testinfra has no stdin) into ``path.partial``, then chmod and rename, so a reader
        never sees half a file."""
        data = base64.b64encode(content.encode()).decode()
        partial = q(path + ".partial")
        self.sh(f"umask 077 && mkdir -p {q(path.rsplit('/', 1)[0] or '/')} && : > {partial}", timeout=60, check=True)
        for start in range(0, len(data), 60000):
            self.sh(f"printf %s {q(data[start:start + 60000])} | base64 -d >> {partial}", timeout=60, check=True)
        self.sh(f"chmod {mode} {partial} && mv -f {partial} {q(path)}", timeout=60, check=True)

    def read_file(self, path: str) -> str:
        return self.sh(f"cat {q(path)}", timeout=60, check=True).stdout
