"""Commands on the stack's host, through a testinfra host (local or SSH).

Everything that moves data runs *on the host* as one shell pipeline (dumps
never cross the SSH connection, which carries only commands and the JSON
answers). testinfra's run() has no stdin and no timeout, so SQL travels as
printf arguments and every command is bounded by coreutils' timeout.
Secrets are read on the host by ``$(cat FILE)`` inside printf (a shell
builtin): never an argv, never in this process.
"""

from __future__ import annotations

import base64
import json
import shlex
import time
from dataclasses import dataclass
from typing import Any

from govstack.backup.plan import SERVICE, backup_settings, host_paths
from govstack.release import COLORS

APP_SERVICES = ("api", "worker")


class BackupError(RuntimeError):
    """A backup, restore or drill step failed; the message is for the operator."""

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


def q(value: Any) -> str:
    return shlex.quote(str(value))


def last_json(text: str) -> dict[str, Any] | None:
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                return None
    return None


class StackHost:
    """One stack on one host: its compose projects, containers and files."""

    def __init__(self, host: Any, plan: Any) -> None:
        self.host = host
        self.plan = plan
        self.settings = plan.settings
        self.backup = backup_settings(plan.settings)
        self.paths = host_paths(plan.settings)

    # -- shell ---------------------------------------------------------------------------------
    def sh(self, command: str, timeout: float | None = None, check: bool = False) -> Result:
        seconds = int(timeout or self.backup.timeout_s)
        wrapped = f"timeout --kill-after=30 {seconds} bash -o pipefail -c {q(command)}"
        out = self.host.run(wrapped)
        result = Result(out.rc, out.stdout, out.stderr)
        if result.rc == 124:
            raise BackupError(f"timed out after {seconds}s: {command[:160]}", "timeout")
        if check and not result.ok:
            raise BackupError(f"command failed ({result.rc}): {result.tail()}")
        return result

    @property
    def compose(self) -> str:
        s = self.settings
        return f"docker compose -p {q(s.project)} -f {q(s.compose_file)}"

    def job(self, *args: str, oneoff: bool = False) -> str:
        """A govstack-backup command in the running service, or in a one-off
        container of the same definition (while the service is stopped)."""
        words = " ".join(q(a) for a in args)
        if oneoff:
            return f"{self.compose} run --rm --no-deps -T {SERVICE} {words}"
        return f"{self.compose} exec -T {SERVICE} govstack-backup {words}"

    def job_json(self, *args: str, oneoff: bool = False, timeout: float | None = None) -> dict[str, Any]:
        result = self.sh(self.job(*args, oneoff=oneoff), timeout=timeout)
        answer = last_json(result.stdout)
        if answer is None:
            raise BackupError(f"govstack-backup {args[0]} gave no answer (exit {result.rc}): {result.tail()}")
        if not answer.get("ok", result.ok) and "kind" in answer:
            raise BackupError(answer.get("error", "failed"), answer.get("kind", "error"))
        return answer

    # -- containers ----------------------------------------------------------------------------
    def containers(self, project: str, service: str, running_only: bool = True) -> list[str]:
        flt = (f"--filter label=com.docker.compose.project={q(project)} "
               f"--filter label=com.docker.compose.service={q(service)} "
               "--filter label=com.docker.compose.oneoff=False")
        state = "--filter status=running" if running_only else ""
        out = self.sh(f"docker ps -q {'' if running_only else '-a'} {flt} {state}", timeout=60).stdout
        return out.split()

    def container(self, service: str) -> str | None:
        ids = self.containers(self.settings.project, service)
        return ids[0] if ids else None

    def require_service(self, service: str) -> str:
        cid = self.container(service)
        if cid is None:
            raise BackupError(f"the {service} service of {self.settings.project} is not running "
                              "(`govstack up` starts it)", "not-running")
        return cid

    def app_containers(self) -> list[str]:
        """Running api and worker containers of both colors: the writers."""
        ids = []
        for color in COLORS:
            for service in APP_SERVICES:
                ids += self.containers(self.plan.app_project(color), service)
        return ids

    def stop(self, ids: list[str], grace_s: int = 40) -> None:
        if ids:
            self.sh(f"docker stop -t {grace_s} {' '.join(q(i) for i in ids)}", timeout=grace_s + 120, check=True)

    def start(self, ids: list[str]) -> None:
        if ids:
            self.sh(f"docker start {' '.join(q(i) for i in ids)}", timeout=300, check=True)

    def wait_healthy(self, ids: list[str], timeout_s: float | None = None) -> None:
        deadline = time.monotonic() + (timeout_s or self.settings.healthy_timeout_s)
        pending = list(ids)
        while pending:
            fmt = "{{.Id}} {{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}"
            out = self.sh(f"docker inspect --format {q(fmt)} {' '.join(q(i) for i in pending)}", timeout=60)
            states = {line.split()[0][:12]: line.split()[1:] for line in out.stdout.splitlines() if line.strip()}
            pending = [i for i in pending if states.get(i[:12], ["", ""])[1] not in ("healthy", "none")
                       or states.get(i[:12], [""])[0] != "running"]
            if not pending:
                return
            if time.monotonic() > deadline:
                raise BackupError(f"containers not healthy in time: {', '.join(i[:12] for i in pending)}",
                                  "unhealthy")
            time.sleep(2)

    # -- postgres (the superuser over the server's local socket) --------------------------------
    def psql(self, sql: str, database: str = "postgres", *, check: bool = True, timeout: float = 600) -> str:
        """Rows (tab-separated) of SQL run by the superuser in the postgres container."""
        pg = self.require_service("postgres")
        cmd = (f"printf '%s\\n' {q(sql)} | docker exec -i {q(pg)} psql -X -q -v ON_ERROR_STOP=1 -U postgres "
               f"-d {q(database)} -tA -F '\t'")
        result = self.sh(cmd, timeout=timeout)
        if check and not result.ok:
            raise BackupError(f"psql in {database} failed: {result.tail()}")
        return result.stdout

    def psql_script(self, script_shell: str, database: str = "postgres", timeout: float = 600) -> None:
        """SQL printed by a shell snippet (so secrets stay in $(cat …)), run by the superuser."""
        pg = self.require_service("postgres")
        result = self.sh(f"{{ {script_shell}; }} | docker exec -i {q(pg)} psql -X -q -v ON_ERROR_STOP=1 "
                         f"-U postgres -d {q(database)}", timeout=timeout)
        if not result.ok:
            raise BackupError(f"psql in {database} failed: {result.tail()}")

    # -- files ---------------------------------------------------------------------------------
    def write_file(self, path: str, content: str, mode: str = "640") -> None:
        data = base64.b64encode(content.encode()).decode()
        self.sh(f"umask 077 && : > {q(path)}", timeout=60, check=True)
        for start in range(0, len(data), 60000):
            self.sh(f"printf %s {q(data[start:start + 60000])} | base64 -d >> {q(path)}", timeout=60, check=True)
        self.sh(f"chmod {mode} {q(path)}", timeout=60, check=True)

    def read_file(self, path: str) -> str:
        return self.sh(f"cat {q(path)}", timeout=60, check=True).stdout
