"""Backup and restore throughput against plain tools, in one run, as ratios.

    .venv/bin/python bench/backup_restore.py [-i INVENTORY] [--objects-mb 1024] [--rows 100000] [--no-deploy]

On the inventory's stack (default: the bench stack, deployed first), it
generates a dataset next to whatever is there: ``--rows`` rows in a table
``bench_backup_rows`` and ``--objects-mb`` of objects (4 MiB each, half
random, half repetitive text, like scanned PDFs next to Office files) in a
bucket ``bench-backup``. Then, timed:

- ``govstack backup``: the whole run (dump, objects, vectors, read-back,
  check, retention): cold (everything new), again unchanged, with 1 % of the
  objects rewritten, and at 2x the objects (cold for the new half, then
  unchanged again: the unchanged run must not grow with the data). The
  unchanged and 1 % runs are the schedule's (``run --if-changed``: nothing
  stored when nothing changed); an operator's run, which always stores one,
  is timed unchanged too;
- a plain S3 write of the same objects into a scratch bucket (what any S3-level
  restore must do);
- plain ``pg_dump -Fc`` to a file, and ``pg_restore`` of it into a scratch database;
- a plain ``cp -a`` of SeaweedFS' data directory (the object data as files),
  and a plain read of every object over S3 (what any S3-level copy must do);
- our Postgres restore path (``restic dump | pg_restore``) into a scratch
  database, and our objects restore (put back + re-read + sha256 verify).

Prints MB/s and ratios; asserts nothing. The generated table, bucket and
scratch databases are removed at the end.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from govstack.backup.remote import BackupHost  # noqa: E402
from govstack.catalog import s3_pair  # noqa: E402
from govstack.commands import q  # noqa: E402
from govstack.inventory import load_inventory  # noqa: E402
from govstack.plan import StackPlan  # noqa: E402
from govstack.remote import testinfra_host  # noqa: E402
from govstack.tuning import HostResources  # noqa: E402

INVENTORY = REPO / "bench" / "inventories" / "bench_local.py"
BUCKET = "bench-backup"
TABLE = "bench_backup_rows"
OBJECT_MB = 4
# The job image's interpreter (its venv: minio, psycopg), for one-off measurements.
JOB_PYTHON = "/opt/backup/bin/python3"

# Runs in a one-off backup container (it has the S3 keys and the SDK).
_SEED_OBJECTS = r"""
import io, os, sys
from govstack_backup.config import load
from govstack_backup import bucket_config
n, size, bucket = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
first = int(sys.argv[4]) if len(sys.argv) > 4 else 0
mc = bucket_config.admin_client(load().s3)
if not mc.bucket_exists(bucket):
    mc.make_bucket(bucket)
for i in range(first, first + n):
    half = size // 2
    text = (b"The records retention schedule of the ministry, section %d. " % i) * (size // 40 + 1)
    body = os.urandom(half) + text[: size - half]
    mc.put_object(bucket, f"obj/{i:05d}.bin", io.BytesIO(body), len(body), content_type="application/octet-stream")
print(n)
"""

# The S3 side alone: every object read once, nothing hashed or stored.
_READ_ALL = r"""
from govstack_backup.config import load
from govstack_backup import objects
mc = objects.client(load().s3)
total = 0
for bucket in objects.buckets(mc):
    for obj in mc.list_objects(bucket, recursive=True):
        resp = mc.get_object(bucket, obj.object_name)
        for chunk in resp.stream(1 << 20):
            total += len(chunk)
        resp.close()
        resp.release_conn()
print(total)
"""

# The S3 side of a restore alone: the same number and size of objects written once.
_WRITE_ALL = r"""
import io, os, sys
from govstack_backup.config import load
from govstack_backup import bucket_config
n, size, bucket = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
mc = bucket_config.admin_client(load().s3)
if not mc.bucket_exists(bucket):
    mc.make_bucket(bucket)
body = os.urandom(size)
for i in range(n):
    mc.put_object(bucket, f"obj/{i:05d}.bin", io.BytesIO(body), size, content_type="application/octet-stream")
print(n)
"""

# Rewrite every k-th object (new random half): the "1 % changed" run.
_CHANGE_SOME = r"""
import io, os, sys
from govstack_backup.config import load
from govstack_backup import bucket_config
n, size, bucket, every = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
mc = bucket_config.admin_client(load().s3)
changed = 0
for i in range(0, n, every):
    body = os.urandom(size)
    mc.put_object(bucket, f"obj/{i:05d}.bin", io.BytesIO(body), size, content_type="application/octet-stream")
    changed += 1
print(changed)
"""

_DROP_BUCKET = r"""
import sys
from govstack_backup.config import load
from govstack_backup import bucket_config
mc = bucket_config.admin_client(load().s3)
bucket = sys.argv[1]
if mc.bucket_exists(bucket):
    for obj in mc.list_objects(bucket, recursive=True):
        mc.remove_object(bucket, obj.object_name)
    mc.remove_bucket(bucket)
"""


class Bench:
    def __init__(self, inventory: str) -> None:
        entry = load_inventory(inventory)[0]
        self.settings = entry.settings
        plan = StackPlan(entry.settings, HostResources(memory_mb=1024, cpus=1))  # paths and names only
        self.stack = BackupHost(testinfra_host(entry.name, entry.data), plan)
        self.results: dict[str, tuple[float, float]] = {}  # name -> (seconds, MB)

    def sh(self, command: str, timeout: int = 7200) -> str:
        result = self.stack.sh(command, timeout=timeout)
        if not result.ok:
            raise SystemExit(f"bench: command failed: {command[:200]}\n{result.tail(5)}")
        return result.stdout

    def timed(self, name: str, command: str, mb: float) -> str:
        start = time.monotonic()
        result = self.stack.sh(command, timeout=7200)
        if not result.ok:
            raise SystemExit(f"bench: {name} failed: {result.tail(5)}")
        self.results[name] = (time.monotonic() - start, mb)
        print(f"  {name:58} {self.results[name][0]:8.1f} s   {mb / max(self.results[name][0], 1e-9):8.1f} MB/s",
              flush=True)
        self.last_log = result.stderr
        return result.stdout

    def admin_keys(self) -> str:
        """Shell that prints the S3 admin key pair, one per line (what ``bucket_config.admin_client``
        reads on stdin): the bench writes buckets, and the backup job's own identity only reads."""
        access, secret = (q(f"{self.settings.secrets_dir}/{name}") for name in s3_pair(self.settings, "admin"))
        return f"{{ cat {access}; echo; cat {secret}; }}"

    def admin_oneoff(self, script: str, *args: str) -> str:
        """A one-off job container running ``script`` with the admin keys on its stdin."""
        return f"{self.admin_keys()} | " + self.stack.compose("run", "--rm", "--no-deps", "-T", "--entrypoint",
                                                               JOB_PYTHON, "backup", "-c", script, *args)

    def python_oneoff(self, script: str, *args: str) -> str:
        return self.sh(self.admin_oneoff(script, *args))

    def psql(self, sql: str, database: str | None = None) -> str:
        return self.stack.psql(sql, database or self.settings.postgres.database, timeout=3600)

    def du_mb(self, path: str) -> float:
        return int(self.sh(f"du -sb {q(path)} | cut -f1").strip()) / 1e6


def _phase(log: str, name: str) -> float | None:
    """Seconds of one phase of a run, from the job's log ("objects done in 3.2s")."""
    for line in log.splitlines():
        if f"govstack-backup: {name} done in " in line:
            return float(line.rsplit(" done in ", 1)[1].rstrip("s"))
    return None


def _counters(summary: dict) -> str:
    c = (summary.get("objects") or {}).get("counters") or {}
    r = (summary.get("objects") or {}).get("restic") or {}
    v = (summary.get("vectors") or {}).get("counters") or {}
    return (f"objects: {c.get('listed', '?')} listed, {c.get('fetched', '?')} downloaded "
            f"({c.get('fetched_bytes', 0) / 1e6:.0f} MB), {c.get('unchanged', '?')} unchanged; restic: "
            f"{r.get('files_new', '?')} new, {r.get('files_changed', '?')} changed, {r.get('files_unmodified', '?')} "
            f"unmodified files, {r.get('data_added', 0) / 1e6:.1f} MB added; vectors: {v.get('exported', '?')} "
            f"collections exported, {v.get('unchanged', '?')} unchanged")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-i", "--inventory", default=str(INVENTORY))
    parser.add_argument("--objects-mb", type=int, default=512)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--no-deploy", action="store_true", help="the stack is already deployed")
    args = parser.parse_args()
    if not args.no_deploy:
        subprocess.run([sys.executable, "-m", "govstack.cli", "up", "-i", args.inventory], cwd=REPO, check=True,
                       stdout=subprocess.DEVNULL)
    b = Bench(args.inventory)
    s, stack = b.settings, b.stack
    db = s.postgres.database
    pg = stack.require_service("postgres")
    tmp = f"{s.stack_root}/bench-backup-tmp"
    count = max(1, args.objects_mb // OBJECT_MB)
    size = OBJECT_MB * 1024 * 1024
    every = 100 if count >= 100 else count  # 1 % of the objects (at least one)
    summaries: dict[str, dict] = {}
    logs: dict[str, str] = {}

    def backup(name: str, label: str, mb: float, *flags: str) -> None:
        summaries[name] = json.loads(b.timed(label, stack.job("run", "--json", *flags), mb).strip().splitlines()[-1])
        logs[name] = b.last_log
        print(f"    {_counters(summaries[name])}", flush=True)
        phases = [line.split("govstack-backup: ", 1)[1] for line in logs[name].splitlines() if " done in " in line]
        print("    phases: " + "; ".join(phases), flush=True)

    try:
        print(f"generating {args.rows} rows and {count} x {OBJECT_MB} MiB objects …", flush=True)
        b.psql(f"DROP TABLE IF EXISTS {TABLE}; CREATE TABLE {TABLE} AS SELECT g AS id, md5(g::text) AS key, "  # noqa: S608
               f"repeat(md5((g * 7)::text), 6) AS payload, now() - g * interval '1 minute' AS at "
               f"FROM generate_series(1, {args.rows}) g; ALTER TABLE {TABLE} ADD PRIMARY KEY (id)")
        # As a stack idle at night: analysed, so autovacuum does not commit statistics mid-bench.
        b.psql(f"VACUUM ANALYZE {TABLE}")
        b.python_oneoff(_SEED_OBJECTS, str(count), str(size), BUCKET)
        db_mb = float(b.psql(f"SELECT pg_database_size('{db}') / 1e6").strip())
        objects_mb = b.du_mb(stack.plan.data_path("seaweedfs"))
        bench_mb = count * size / 1e6
        b.sh(f"rm -rf {q(tmp)} && mkdir -p {q(tmp)}")
        print(f"dataset: database {db_mb:.0f} MB, object data {objects_mb:.0f} MB "
              f"({bench_mb:.0f} MB in {BUCKET})\n", flush=True)

        print("backup", flush=True)
        total_mb = db_mb + objects_mb
        backup("cold", "govstack backup (cold: everything new)", total_mb)
        backup("unchanged", "scheduled run (again, unchanged)", total_mb, "--if-changed")
        backup("unchanged_full", "operator's run (again, unchanged: stores a run)", total_mb)
        changed = int(b.python_oneoff(_CHANGE_SOME, str(count), str(size), BUCKET, str(every)).strip())
        backup("changed", f"scheduled run (1 % changed: {changed} of {count} objects rewritten)", total_mb,
               "--if-changed")
        read_mb = int(b.timed("plain S3 read of every object (no hash, no store)",
                              stack.compose("run", "--rm", "--no-deps", "-T", "--entrypoint", JOB_PYTHON, "backup",
                                            "-c", _READ_ALL), objects_mb).strip().splitlines()[-1]) / 1e6
        b.timed("plain pg_dump -Fc to a file", f"docker exec {q(pg)} pg_dump -U postgres -Fc {q(db)} "
                                              f"> {q(tmp + '/plain.dump')}", db_mb)
        b.timed("plain cp -a of the object data", f"cp -a {q(stack.plan.data_path('seaweedfs'))} "
                                                 f"{q(tmp + '/seaweedfs-copy')}", objects_mb)

        print("restore", flush=True)
        for scratch in ("bench_restore_plain", "bench_restore_ours"):
            b.psql(f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)', "postgres")
            b.psql(f'CREATE DATABASE "{scratch}"', "postgres")
        b.timed("plain pg_restore into a scratch database",
                f"docker exec -i {q(pg)} pg_restore -U postgres -d bench_restore_plain --no-owner "
                f"< {q(tmp + '/plain.dump')}", db_mb)
        b.timed("ours: restic dump | pg_restore into a scratch database",
                f"{stack.job('dump', summaries['changed']['run'], 'postgres', oneoff=True)} | docker exec -i {q(pg)} "
                "pg_restore -U postgres -d bench_restore_ours --no-owner --single-transaction", db_mb)
        b.sh(f"rm -rf {q(tmp + '/seaweedfs-copy')}")
        b.timed("plain cp -a of the object data (again, as the restore)",
                f"cp -a {q(stack.plan.data_path('seaweedfs'))} {q(tmp + '/seaweedfs-copy')}", objects_mb)
        b.timed("plain S3 write of the same objects (scratch bucket, no verify)",
                b.admin_oneoff(_WRITE_ALL, str(count), str(size), BUCKET + "-plain"), bench_mb)
        b.python_oneoff(_DROP_BUCKET, BUCKET + "-plain")
        restored = json.loads(b.timed("ours: objects put back over S3, re-read, sha256-verified",
                                      stack.job("restore-objects", summaries["changed"]["run"], "--force",
                                                oneoff=True, restore_keys=True), objects_mb).strip().splitlines()[-1])
        print(f"    restored {restored.get('restored')}, ok={restored.get('ok')}", flush=True)

        print("scaling: twice the objects", flush=True)
        b.python_oneoff(_SEED_OBJECTS, str(count), str(size), BUCKET, str(count))
        objects2_mb = b.du_mb(stack.plan.data_path("seaweedfs"))
        backup("grown", f"govstack backup (2x objects: {count} new)", db_mb + objects2_mb)
        backup("unchanged2", "scheduled run (2x objects, again unchanged)", db_mb + objects2_mb, "--if-changed")
    finally:
        print("\ncleaning up …", flush=True)
        b.psql(f"DROP TABLE IF EXISTS {TABLE}")
        for scratch in ("bench_restore_plain", "bench_restore_ours"):
            b.psql(f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)', "postgres")
        b.python_oneoff(_DROP_BUCKET, BUCKET)
        b.python_oneoff(_DROP_BUCKET, BUCKET + "-plain")
        b.sh(f"rm -rf {q(tmp)}")

    r = {name: seconds for name, (seconds, _) in b.results.items()}
    cold = r["govstack backup (cold: everything new)"]
    unchanged = r["scheduled run (again, unchanged)"]
    unchanged_full = r["operator's run (again, unchanged: stores a run)"]
    changed_s = next(v for k, v in r.items() if k.startswith("scheduled run (1 % changed"))
    grown_unchanged = r["scheduled run (2x objects, again unchanged)"]
    s3_read = r["plain S3 read of every object (no hash, no store)"]
    s3_write = r["plain S3 write of the same objects (scratch bucket, no verify)"]
    ours_objects_restore = r["ours: objects put back over S3, re-read, sha256-verified"]
    objects_phase = _phase(logs["cold"], "objects")
    plain_backup = r["plain pg_dump -Fc to a file"] + r["plain cp -a of the object data"]
    plain_restore = r["plain pg_restore into a scratch database"] + r[
        "plain cp -a of the object data (again, as the restore)"]
    ours_restore = r["ours: restic dump | pg_restore into a scratch database"] + ours_objects_restore
    print("\nratios (time ours / time other, unless said otherwise)")
    print(f"  backup unchanged / cold:                             {unchanged / cold:6.2f}   (target <= 0.10)")
    print(f"  operator's run unchanged (stores a run) / cold:      {unchanged_full / cold:6.2f}")
    print(f"  backup 1 % changed / cold:                           {changed_s / cold:6.2f}")
    print(f"  backup unchanged at 2x objects / unchanged at 1x:    {grown_unchanged / unchanged:6.2f}   "
          "(must not grow: about 1)")
    # The same two runs by the job's own clock (without `docker exec` and the interpreter's start).
    own1, own2 = summaries["unchanged"]["duration_s"], summaries["unchanged2"]["duration_s"]
    print(f"  the same, by the job's own clock ({own1:.2f} s, {own2:.2f} s):      {own2 / max(own1, 1e-3):6.2f}")
    # Throughputs in logical bytes: what the run stored / what S3 served or took.
    cold_mb = summaries["cold"]["bytes"] / 1e6
    restored_mb = (restored.get("restored") or {}).get("bytes", 0) / 1e6
    print(f"  cold throughput, whole run ({cold_mb:.0f} MB), vs plain S3 read ({read_mb:.0f} MB): "
          f"{(cold_mb / cold) / (read_mb / s3_read):6.2f}   (MB/s ratio, target >= 0.5)")
    if objects_phase:
        print(f"  cold throughput, objects phase alone, vs plain S3 read:   "
              f"{(read_mb / objects_phase) / (read_mb / s3_read):6.2f}   (MB/s ratio)")
    print(f"  objects restore ({restored_mb:.0f} MB, incl. re-read + verify) vs plain S3 write: "
          f"{(restored_mb / ours_objects_restore) / (bench_mb / s3_write):6.2f}   (MB/s ratio, target >= 0.5)")
    print(f"  backup cold / plain pg_dump + cp -a:                 {cold / plain_backup:6.2f}")
    print(f"  postgres restore / plain pg_restore:                 "
          f"{r['ours: restic dump | pg_restore into a scratch database'] / r['plain pg_restore into a scratch database']:6.2f}")  # noqa: E501
    print(f"  restore, all / plain pg_restore + cp -a:             {ours_restore / plain_restore:6.2f}")


if __name__ == "__main__":
    main()
