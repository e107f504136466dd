"""`govstack-app` console entry point: migrate | api | worker | analytics | healthcheck | cleanup |
cleanup-state | reconcile | quarantine | adopt | rebuild-collection | set-admin-key | purge-audit-partitions |
purge-events | privacy-report."""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.request
from datetime import timedelta

from .settings import Settings


def _settings() -> Settings:
    return Settings()


def to_json(obj: object) -> str:
    return json.dumps(obj, default=str, sort_keys=True)


def cmd_migrate(args: argparse.Namespace) -> int:
    from .db import MigrationFailed, migrate, pending

    if args.check:
        todo = pending(_settings(), wait_s=args.wait)
        print(json.dumps({"pending": todo}))
        return 1 if todo else 0
    try:
        applied = migrate(_settings(), wait_s=args.wait)
    except MigrationFailed as exc:  # one line, the last of the output: the deploy's cause
        print(f"govstack-app: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"applied": applied}))
    return 0


def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    from .api import create_app

    settings = _settings()
    app = create_app(settings)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        proxy_headers=True,
        forwarded_allow_ips=settings.trusted_proxy_list or "127.0.0.1",
        timeout_graceful_shutdown=args.graceful_timeout,
        timeout_keep_alive=75,  # longer than nginx's upstream keepalive_timeout (60s)
        access_log=False,
        log_config=None,
        server_header=False,
    )
    return 0


def cmd_analytics(args: argparse.Namespace) -> int:
    import uvicorn

    from .analytics.api import create_analytics_app
    from .analytics.settings import AnalyticsSettings

    settings = AnalyticsSettings()
    uvicorn.run(
        create_analytics_app(settings),
        host=args.host,
        port=args.port,
        proxy_headers=True,
        forwarded_allow_ips=_settings().trusted_proxy_list or "127.0.0.1",
        timeout_graceful_shutdown=args.graceful_timeout,
        timeout_keep_alive=75,
        access_log=False,
        log_config=None,
        server_header=False,
    )
    return 0


def cmd_privacy_report(args: argparse.Namespace) -> int:
    """The ledger for auditors, as JSON (run in the analytics container: its role reads the ledger)."""
    from datetime import date

    import psycopg

    from .analytics.ledger import privacy_report
    from .analytics.settings import AnalyticsSettings

    with psycopg.connect(AnalyticsSettings().conninfo()) as conn:
        print(to_json(privacy_report(conn, date.fromisoformat(args.since))))
    return 0


def cmd_purge_events(args: argparse.Namespace) -> int:
    from .retention import purge_events

    report = purge_events(_settings().conninfo(), args.days, dry_run=args.dry_run, actor=args.actor)
    print(json.dumps(report, sort_keys=True, default=str))
    return 0 if report["ok"] else 1


def cmd_worker(args: argparse.Namespace) -> int:
    from .worker import run_worker

    return run_worker(_settings())


def cmd_healthcheck(args: argparse.Namespace) -> int:
    if args.what in ("api", "analytics"):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{args.port}/ready", timeout=args.timeout) as r:
                ok = r.status == 200
                body = r.read(500).decode(errors="replace")
        except Exception as exc:  # noqa: BLE001 - HTTPError (503), URLError, timeout
            ok, body = False, str(exc)
        print(body)
        return 0 if ok else 1
    from .worker import healthcheck

    ok, msg = healthcheck(_settings())
    print(msg)
    return 0 if ok else 1


def cmd_config(args: argparse.Namespace) -> int:
    """The effective, non-secret configuration (secret *files* are named, never read)."""
    from . import __version__

    settings = _settings()
    out = settings.model_dump(mode="json")
    out["embedding_model_name"] = settings.embedding_model_name
    out["package_version"] = __version__
    print(json.dumps(out, sort_keys=True))
    return 0


def _with_services(fn):  # noqa: ANN001, ANN202 - fn(svc) -> answer
    from .services.backends import build_services
    from .services.errors import AppError

    svc = build_services(_settings(), pool_max=4)
    try:
        print(to_json(fn(svc)))
    except AppError as exc:
        print(to_json({"ok": False, "error": exc.detail}))
        print(f"govstack-app: {exc.detail}", file=sys.stderr)
        return 1
    finally:
        svc.close()
    return 0


def _min_age(args: argparse.Namespace) -> timedelta | None:
    return None if args.min_age is None else timedelta(seconds=args.min_age)


def cmd_cleanup(args: argparse.Namespace) -> int:
    from .services.maintenance import run_cleanup

    return _with_services(
        lambda svc: run_cleanup(svc, min_age=_min_age(args), dry_run=args.dry_run, with_vectors=args.vectors)
    )


def cmd_cleanup_state(args: argparse.Namespace) -> int:
    from .services import maintenance
    from .services.backends import db

    def state(svc):  # noqa: ANN001, ANN202
        if args.action == "pause":
            return {"paused": maintenance.set_pause(svc, args.reason, args.actor)}
        if args.action == "resume":
            return {"paused": None, "was": maintenance.resume(svc, args.actor)}
        with db(svc.pool) as conn:
            return {"paused": maintenance.pause_state(conn)}

    return _with_services(state)


def cmd_reconcile(args: argparse.Namespace) -> int:
    from .services.reconciliation import reconciliation

    return _with_services(lambda svc: reconciliation(svc, min_age=_min_age(args)))


def cmd_quarantine(args: argparse.Namespace) -> int:
    from .services.reconciliation import quarantine_listing

    return _with_services(quarantine_listing)


def cmd_adopt(args: argparse.Namespace) -> int:
    import re

    from .schemas import COLLECTION_RE
    from .services.reconciliation import adopt

    if not args.all and not args.keys:
        print("govstack-app: name the objects to adopt, or --all", file=sys.stderr)
        return 2
    if args.collection is not None and not re.fullmatch(COLLECTION_RE, args.collection):
        print(f"govstack-app: {args.collection!r} is not a collection name ({COLLECTION_RE})", file=sys.stderr)
        return 2
    return _with_services(
        lambda svc: adopt(
            svc, args.keys, everything=args.all, collection=args.collection, min_age=_min_age(args),
            dry_run=args.dry_run, actor=args.actor,
        )
    )


def cmd_rebuild(args: argparse.Namespace) -> int:
    from .services.backends import build_services
    from .services.maintenance import rebuild_collection

    if not args.yes:
        print(
            "refusing without --yes: this drops the collection's vectors and re-indexes every document", file=sys.stderr
        )
        return 2
    svc = build_services(_settings())
    try:
        print(to_json(rebuild_collection(svc, args.collection)))
    finally:
        svc.close()
    return 0


def cmd_purge_audit(args: argparse.Namespace) -> int:
    from .retention import RetentionRefused, purge_audit_partitions

    try:
        report = purge_audit_partitions(
            _settings().conninfo(), args.months, args.floor, dry_run=args.dry_run, actor=args.actor
        )
    except RetentionRefused as exc:
        print(json.dumps({"ok": False, "error": str(exc)}))
        print(f"govstack-app: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, sort_keys=True))
    return 0 if report["ok"] else 1


def limit_blas_threads_to_cpu_quota() -> None:
    """numpy's OpenBLAS sizes its thread pool from the host's cores when numpy is first imported;
    in a container with a smaller CPU quota the extra threads only get throttled. An operator's
    OPENBLAS_NUM_THREADS wins."""
    from .cpulimit import thread_budget

    os.environ.setdefault("OPENBLAS_NUM_THREADS", str(thread_budget()))


def cmd_set_admin_key(args: argparse.Namespace) -> int:
    """The operator's way in that needs no API key (`govstack admin-key rotate` runs it in the
    serving API container): the key read from stdin becomes the secret of admin key NAME,
    active and reaching every collection. Prints the key's name and prefix, never the key."""
    from .db import BOOTSTRAP_KEY_NAME, connect_with_retry, record_bootstrap_seed
    from .security import key_prefix
    from .services.keys import set_admin_key

    key = sys.stdin.readline().strip()
    if len(key) < 32 or not key.isprintable() or " " in key:
        print("govstack-app: the key on stdin must be 32+ printable characters without spaces", file=sys.stderr)
        return 2
    with connect_with_retry(_settings(), 30.0) as conn, conn.transaction():
        set_admin_key(conn, args.name, key, actor=args.actor)
        if args.name == BOOTSTRAP_KEY_NAME:
            # This is the secret file's key now: a restart must not apply it again.
            record_bootstrap_seed(conn, key)
    print(json.dumps({"name": args.name, "key_prefix": key_prefix(key)}))
    return 0


def main(argv: list[str] | None = None) -> int:
    limit_blas_threads_to_cpu_quota()
    parser = argparse.ArgumentParser(prog="govstack-app")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("migrate", help="apply database migrations (idempotent)")
    p.add_argument("--wait", type=float, default=60.0, help="seconds to wait for postgres")
    p.add_argument("--check", action="store_true",
                   help="change nothing; exit 1 and list what a migrate run would change")
    p.set_defaults(fn=cmd_migrate)
    p = sub.add_parser("api", help="serve the HTTP API")
    p.add_argument("--host", default="0.0.0.0")  # noqa: S104 - inside a container
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--graceful-timeout", type=int, default=30)
    p.set_defaults(fn=cmd_api)
    p = sub.add_parser("worker", help="run the indexing worker")
    p.set_defaults(fn=cmd_worker)
    p = sub.add_parser("analytics", help="serve the privacy-preserving analytics API")
    p.add_argument("--host", default="0.0.0.0")  # noqa: S104 - inside a container
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--graceful-timeout", type=int, default=30)
    p.set_defaults(fn=cmd_analytics)
    p = sub.add_parser("healthcheck", help="exit 0 if healthy (for Docker HEALTHCHECK)")
    p.add_argument("what", choices=["api", "worker", "analytics"])
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--timeout", type=float, default=5.0)
    p.set_defaults(fn=cmd_healthcheck)
    p = sub.add_parser("config", help="print the effective non-secret configuration as JSON")
    p.set_defaults(fn=cmd_config)
    p = sub.add_parser("cleanup", help="move orphan objects to the quarantine; delete expired quarantine entries")
    p.add_argument("--min-age", type=float, default=None,
                   help="only objects older than this (seconds; default GOVSTACK_ORPHAN_MIN_AGE_S)")
    p.add_argument("--dry-run", action="store_true", help="report what would move and expire, change nothing")
    p.add_argument("--vectors", action="store_true",
                   help="also list vectors of unknown documents (reads every vector; they are never deleted)")
    p.set_defaults(fn=cmd_cleanup)
    p = sub.add_parser("cleanup-state", help="pause, resume or show the automatic cleanup")
    p.add_argument("action", choices=["status", "pause", "resume"])
    p.add_argument("--reason", default="paused by an operator")
    p.add_argument("--actor", default="cli", help="who, for the audit record")
    p.set_defaults(fn=cmd_cleanup_state)
    p = sub.add_parser("reconcile", help="objects without rows, rows without objects, the quarantine (JSON)")
    p.add_argument("--min-age", type=float, default=None, help="younger objects are flagged as maybe in flight")
    p.set_defaults(fn=cmd_reconcile)
    p = sub.add_parser("quarantine", help="the quarantine per collection (JSON)")
    p.set_defaults(fn=cmd_quarantine)
    p = sub.add_parser("adopt", help="register orphaned or quarantined objects as documents again")
    p.add_argument("keys", nargs="*", help="object keys or quarantine keys")
    p.add_argument("--all", action="store_true", help="every orphaned and quarantined object")
    p.add_argument("--collection", default=None, help="for objects whose collection is not recorded")
    p.add_argument("--min-age", type=float, default=None,
                   help="skip objects younger than this (seconds; default GOVSTACK_ORPHAN_MIN_AGE_S)")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--actor", default="cli", help="who, for the audit record")
    p.set_defaults(fn=cmd_adopt)
    p = sub.add_parser("rebuild-collection", help="re-embed a collection with the configured model")
    p.add_argument("collection")
    p.add_argument("--yes", action="store_true")
    p.set_defaults(fn=cmd_rebuild)
    p = sub.add_parser("set-admin-key", help="set an admin key's secret from stdin (no API key needed)")
    p.add_argument("--name", default="bootstrap-admin", help="admin key name (created when missing)")
    p.add_argument("--actor", default="operator", help="who sets it, for the audit record")
    p.set_defaults(fn=cmd_set_admin_key)
    p = sub.add_parser("purge-audit-partitions", help="drop monthly audit_logs partitions older than the retention")
    p.add_argument("--months", type=int, required=True, help="retention: keep at least this many months")
    p.add_argument("--floor", type=int, required=True, help="refuse a retention shorter than this (months)")
    p.add_argument("--dry-run", action="store_true", help="report what would be dropped, drop nothing")
    p.add_argument("--actor", default="cli", help="who runs it, for the audit record")
    p.set_defaults(fn=cmd_purge_audit)
    p = sub.add_parser("purge-events", help="delete usage events older than the retention")
    p.add_argument("--days", type=int, required=True, help="retention: keep this many days of events")
    p.add_argument("--dry-run", action="store_true", help="count what would be deleted, delete nothing")
    p.add_argument("--actor", default="cli", help="who runs it, for the audit record")
    p.set_defaults(fn=cmd_purge_events)
    p = sub.add_parser("privacy-report", help="the privacy-budget ledger as JSON (analytics container)")
    p.add_argument("--since", default="1970-01-01", help="first budget period to include (YYYY-MM-DD)")
    p.set_defaults(fn=cmd_privacy_report)
    args = parser.parse_args(argv)

    from .logs import setup_logging

    try:
        settings = _settings()
        setup_logging(settings.log_level, service=args.cmd, version=settings.app_version, color=settings.app_color)
    except Exception as exc:  # noqa: BLE001 - configuration errors: one clear line, exit 2
        print(f"govstack-app: invalid configuration: {exc}", file=sys.stderr)
        return 2
    return int(args.fn(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
