"""The in-container scheduler: a crontab read by a small loop, times by croniter.

Debian's cron runs jobs through setuid (root only) and supercronic is not
packaged; croniter (pallets-eco) is the well-kept cron-expression library
Python schedulers use, so the loop itself is only "sleep until the next
time, run the job, repeat". It runs as the container's unprivileged user.

The crontab (``<config_dir>/backup/crontab`` on the host, rendered from
settings) uses cron's syntax: five fields or ``@hourly``/``@daily``/…, then
the command, whose first word must be ``govstack-backup``. It is re-read on
every wake-up, so a redeploy that changes it needs no restart.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from croniter import croniter

HEARTBEAT = "/tmp/govstack-backup.heartbeat"
MAX_SLEEP_S = 30
# The heartbeat is refreshed at least every MAX_SLEEP_S, also while a job runs.
HEARTBEAT_STALE_S = 120


class CrontabError(ValueError):
    pass


@dataclass(frozen=True)
class Entry:
    expression: str
    argv: tuple[str, ...]


def parse_crontab(text: str) -> list[Entry]:
    entries = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        if fields[0].startswith("@"):
            expression, command = fields[0], fields[1:]
        else:
            expression, command = " ".join(fields[:5]), fields[5:]
        if not croniter.is_valid(expression):
            raise CrontabError(f"line {number}: {expression!r} is not a cron expression")
        argv = tuple(shlex.split(" ".join(command)))
        if not argv or argv[0] != "govstack-backup":
            raise CrontabError(f"line {number}: the command must be govstack-backup …, got {' '.join(argv)!r}")
        entries.append(Entry(expression, argv))
    if not entries:
        raise CrontabError("no schedule line")
    return entries


def next_fire(expression: str, after: datetime) -> datetime:
    return croniter(expression, after).get_next(datetime)


def _log(message: str) -> None:
    print(f"{datetime.now(UTC).strftime('%Y-%m-%dT%H:%M:%SZ')} govstack-backup schedule: {message}", flush=True)


def _beat() -> None:
    with open(HEARTBEAT, "w", encoding="utf-8") as fh:
        fh.write(f"{time.time():.0f}\n")


def heartbeat_age(path: str = HEARTBEAT) -> float:
    try:
        return time.time() - os.stat(path).st_mtime
    except FileNotFoundError:
        return float("inf")


class Scheduler:
    def __init__(self, crontab_path: str) -> None:
        self.crontab_path = crontab_path
        self.stopping = False
        self.child: subprocess.Popen | None = None
        self.entries: list[Entry] = []

    def _on_term(self, signum: int, frame: object) -> None:
        self.stopping = True
        if self.child is not None and self.child.poll() is None:
            # The job's whole process group (restic, pg_dump): restic releases
            # its repository lock on SIGINT; the job records the run as failed.
            os.killpg(self.child.pid, signal.SIGINT)

    def _load(self) -> None:
        try:
            with open(self.crontab_path, encoding="utf-8") as fh:
                entries = parse_crontab(fh.read())
        except (OSError, CrontabError) as exc:
            if not self.entries:
                _log(f"cannot use {self.crontab_path}: {exc}")
            return
        if entries != self.entries:
            self.entries = entries
            for entry in entries:
                _log(f"schedule {entry.expression!r}: {' '.join(entry.argv)}")

    def _run(self, entry: Entry) -> None:
        started = time.monotonic()
        _log(f"starting {' '.join(entry.argv)}")
        self.child = subprocess.Popen(list(entry.argv), start_new_session=True)
        while True:
            try:
                code = self.child.wait(timeout=MAX_SLEEP_S)
                break
            except subprocess.TimeoutExpired:
                _beat()
        self.child = None
        _log(f"finished with exit code {code} after {time.monotonic() - started:.0f}s")

    def serve(self) -> int:
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        last = datetime.now(UTC)
        while not self.stopping:
            _beat()
            self._load()
            now = datetime.now(UTC)
            due = [entry for entry in self.entries if next_fire(entry.expression, last) <= now]
            if due:
                last = now
                # One run per wake-up: several lines due at once would back up the same state.
                self._run(due[0])
                # Missed times while a long run went on are skipped, not queued.
                last = datetime.now(UTC)
                continue
            upcoming = min((next_fire(e.expression, last) for e in self.entries), default=None)
            wait = MAX_SLEEP_S if upcoming is None else max(1.0, min(MAX_SLEEP_S, (upcoming - now).total_seconds()))
            deadline = time.monotonic() + wait
            while not self.stopping and time.monotonic() < deadline:
                time.sleep(min(1.0, deadline - time.monotonic()) if deadline > time.monotonic() else 0)
        _log("stopped")
        return 0


def main(crontab_path: str) -> int:
    return Scheduler(crontab_path).serve()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1]))
