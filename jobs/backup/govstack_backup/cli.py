"""``govstack-backup``: the container's entry point.

Commands that answer the host print exactly one JSON line on stdout (logs go
to stderr); ``dump`` writes a component's raw bytes to stdout instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from govstack_backup import __version__


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="govstack-backup", description=__doc__)
    p.add_argument("--version", action="version", version=f"govstack-backup {__version__}")
    p.add_argument("--config", default=None, help="backup.json (default: $GOVSTACK_BACKUP_CONFIG)")
    sub = p.add_subparsers(dest="cmd", required=True)
    schedule = sub.add_parser("schedule", help="run the crontab's schedule until stopped (the service's command)")
    schedule.add_argument("--crontab", help="another crontab than the config's schedule_file (the pgbackrest sidecar)")
    run = sub.add_parser("run", help="one backup run now")
    run.add_argument("--json", action="store_true", help="print the run's summary as JSON")
    run.add_argument("--repository", help="another local repository path, for this run only (no metrics)")
    run.add_argument("--check-subset", help="restic check --read-data-subset for this run (e.g. 100%%)")
    run.add_argument("--if-changed", action="store_true",
                     help="store nothing when nothing changed since the last complete run (the schedule's runs)")
    pre = sub.add_parser("pre-deploy", help="a release's safety copy of Postgres, before its migrations")
    pre.add_argument("--label", required=True, help="what is about to be deployed (the version)")
    sub.add_parser("healthcheck", help="exit 0 while the scheduler is alive")
    for name, helptext in (("runs", "list the runs as JSON"), ("probe", "open the repository; JSON")):
        cmd = sub.add_parser(name, help=helptext)
        cmd.add_argument("--from", dest="source", choices=("local", "offsite"), default="local")
    for name, helptext in (("manifest", "a run's manifest"), ("state", "which restore targets hold data"),
                           ("restore-objects", "put a run's objects back, then verify"),
                           ("restore-vectors", "put a run's collections back, then verify"),
                           ("verify-postgres", "compare a database with a run's manifest")):
        cmd = sub.add_parser(name, help=helptext)
        cmd.add_argument("run", help="latest, a run id or a snapshot id")
        cmd.add_argument("--from", dest="source", choices=("local", "offsite"), default="local")
        if name.startswith("restore-"):
            cmd.add_argument("--force", action="store_true", help="restore over existing data (kept aside)")
        if name == "verify-postgres":
            cmd.add_argument("--database", required=True)
    pitr = sub.add_parser("pitr", help="pgBackRest (the pgbackrest sidecar): one JSON line")
    pitr_sub = pitr.add_subparsers(dest="pitr_cmd", required=True)
    for name, helptext in (("state", "the stanza against the running cluster"),
                           ("ensure", "stanza created or upgraded, archiving checked, a full backup present"),
                           ("info", "the repository's backups and WAL (pgbackrest info)"),
                           ("verify", "read and check the whole repository"),
                           ("metrics", "rewrite the freshness metrics from the repository")):
        pitr_sub.add_parser(name, help=helptext)
    pitr_backup = pitr_sub.add_parser("backup", help="a base backup now")
    pitr_backup.add_argument("--type", dest="kind", choices=("full", "diff", "incr"), default="diff")
    life = sub.add_parser("bucket-config", help="a bucket's lifecycle rules and default encryption (admin keys "
                          "on stdin); JSON")
    life.add_argument("bucket")
    life.add_argument("--noncurrent-days", type=int, required=True)
    life.add_argument("--abort-multipart-days", type=int, required=True)
    life.add_argument("--encrypt", action="store_true", help="default encryption SSE-S3 (AES256)")
    life.add_argument("--check", action="store_true", help="only say whether the configuration is current")
    filing = sub.add_parser("file-evidence", help="a drill's evidence file (on stdin) into the local and offsite "
                            "repositories; JSON")
    filing.add_argument("name", help="its file name: drill-YYYYMMDDTHHMMSSZ.json or .md")
    dump = sub.add_parser("dump", help="a run's component stream to stdout")
    dump.add_argument("run")
    dump.add_argument("component", choices=("postgres", "postgres_globals", "objects", "vectors", "ledger",
                                               "manifest"))
    dump.add_argument("--from", dest="source", choices=("local", "offsite"), default="local")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.cmd == "healthcheck":
        from govstack_backup.schedule import HEARTBEAT_STALE_S, heartbeat_age

        age = heartbeat_age()
        if age > HEARTBEAT_STALE_S:
            print(f"scheduler heartbeat is {age:.0f}s old", file=sys.stderr)
            return 1
        return 0

    from govstack_backup.config import ConfigError, load

    try:
        cfg = load(args.config)
    except ConfigError as exc:
        print(f"govstack-backup: {exc}", file=sys.stderr)
        return 2

    if args.cmd == "schedule":
        import os

        from govstack_backup.schedule import main as schedule

        if args.config:  # the jobs it starts read the same file
            os.environ["GOVSTACK_BACKUP_CONFIG"] = args.config
        return schedule(args.crontab or cfg.schedule_file)
    if args.cmd == "run":
        return _run(cfg, args)
    if args.cmd == "pre-deploy":
        return _pre_deploy(cfg, args)
    if args.cmd == "pitr":
        return _pitr(cfg, args)
    if args.cmd == "bucket-config":
        return _bucket_config(cfg, args)
    if args.cmd == "file-evidence":
        return _file_evidence(cfg, args)
    return _restore_side(cfg, args)


def _pitr(cfg: Any, args: argparse.Namespace) -> int:
    from govstack_backup import pitr
    from govstack_backup.restore import emit

    if not cfg.pitr:
        emit({"ok": False, "kind": "config", "error": "point-in-time recovery is off (settings backup.pitr)"})
        return 2
    stanza, metrics_file = cfg.pitr["stanza"], cfg.pitr.get("metrics_file")
    try:
        result = {
            "state": lambda: {"ok": True, **pitr.state(stanza)},
            "ensure": lambda: pitr.ensure(stanza, metrics_file),
            "info": lambda: {"ok": True, **pitr.info(stanza)},
            "verify": lambda: pitr.verify(stanza, metrics_file),
            "metrics": lambda: {"ok": True, "stanza": stanza, "backups": len(pitr.record(stanza, metrics_file)
                                                                            .get("backup") or [])},
            "backup": lambda: pitr.backup(stanza, args.kind, metrics_file),
        }[args.pitr_cmd]()
    except pitr.PitrError as exc:
        print(f"govstack-backup: {exc}", file=sys.stderr)
        emit({"ok": False, "kind": exc.kind, "error": str(exc)})
        return 1
    emit(result)
    return 0 if result.get("ok") else 1


def _bucket_config(cfg: Any, args: argparse.Namespace) -> int:
    from govstack_backup import bucket_config as lifecycle

    try:
        result = lifecycle.apply(lifecycle.admin_client(cfg.s3), args.bucket, args.noncurrent_days,
                                 args.abort_multipart_days, args.encrypt, args.check)
    except Exception as exc:  # noqa: BLE001 - one JSON line, the cause, exit 1
        print(json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}"}, sort_keys=True))
        return 1
    print(json.dumps(result, sort_keys=True))
    return 0


def _run(cfg: Any, args: argparse.Namespace) -> int:
    from govstack_backup.job import BackupFailed, log, run_backup

    try:
        summary = run_backup(cfg, repository=args.repository, check_subset=args.check_subset,
                             if_changed=args.if_changed)
    except BackupFailed as exc:
        log(f"FAILED at {exc}")
        if args.json:
            print(json.dumps({"ok": False, "step": exc.step, "error": str(exc)}, sort_keys=True))
        return 1
    if summary.get("unchanged"):
        log(f"run {summary['run']} is current (nothing changed, nothing stored) after {summary['duration_s']:.1f}s")
    else:
        log(f"run {summary['run']} complete: {summary['bytes']} bytes in {summary['duration_s']:.1f}s")
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    return 0


def _file_evidence(cfg: Any, args: argparse.Namespace) -> int:
    """One JSON line: the snapshots that hold the evidence, or the cause."""
    from govstack_backup.evidence import file_evidence
    from govstack_backup.job import BackupFailed, log

    try:
        filed = file_evidence(cfg, args.name, sys.stdin.buffer)
    except BackupFailed as exc:
        log(f"filing evidence FAILED at {exc}")
        print(json.dumps({"ok": False, "kind": "evidence", "step": exc.step, "error": str(exc)}, sort_keys=True))
        return 1
    print(json.dumps(filed, sort_keys=True))
    return 0


def _pre_deploy(cfg: Any, args: argparse.Namespace) -> int:
    """One JSON line: the copy's run id and snapshots, or the cause."""
    from govstack_backup.job import BackupFailed, log, run_pre_deploy

    try:
        summary = run_pre_deploy(cfg, args.label)
    except BackupFailed as exc:
        log(f"pre-deploy copy FAILED at {exc}")
        print(json.dumps({"ok": False, "step": exc.step, "error": str(exc)}, sort_keys=True))
        return 1
    log(f"pre-deploy copy {summary['run']} ({args.label}): {summary['bytes']} bytes in {summary['duration_s']:.1f}s")
    print(json.dumps(summary, sort_keys=True))
    return 0


def _restore_side(cfg: Any, args: argparse.Namespace) -> int:
    from govstack_backup import restore

    try:
        repo = restore.repository(cfg, args.source)
        if args.cmd == "probe":
            runs = restore.runs(repo)
            restore.emit({"ok": True, "repository": repo.repository,
                          "complete_runs": sum(1 for r in runs.values() if r["complete"])})
            return 0
        if args.cmd == "runs":
            from govstack_backup.manifest import PRE_DEPLOY_TAG

            found = [*restore.runs(repo).values(), *restore.runs(repo, PRE_DEPLOY_TAG).values()]
            restore.emit({"ok": True, "repository": repo.repository, "runs": found})
            return 0
        entry = restore.find_run(repo, args.run)
        if args.cmd == "manifest":
            restore.emit({"ok": True, **entry})
        elif args.cmd == "dump":
            restore.stream_component(repo, entry, args.component, sys.stdout.buffer)
        elif args.cmd == "state":
            restore.emit({"ok": True, "run": entry["run"], **restore.state(cfg, entry["manifest"])})
        else:
            step = {
                "restore-objects": lambda: restore.restore_objects(cfg, repo, entry, args.force),
                "restore-vectors": lambda: restore.restore_vectors(cfg, repo, entry, args.force),
                "verify-postgres": lambda: restore.verify_postgres(cfg, entry, args.database),
            }[args.cmd]
            result = {"run": entry["run"], **step()}
            restore.emit(result)
            return 0 if result["ok"] else 1
        return 0
    except Exception as exc:  # noqa: BLE001 - one JSON line, the cause, exit 1
        result = restore.error_result(exc)
        print(f"govstack-backup: {result['error']}", file=sys.stderr)
        if args.cmd != "dump":
            restore.emit(result)
        return 1
