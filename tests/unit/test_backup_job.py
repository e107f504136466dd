"""The backup job's pure parts (jobs/backup: govstack_backup), in seconds:
manifest checksums and comparisons, run grouping and retention, the objects tar
stream and the vectors JSONL round trip (against in-memory fakes), metrics,
restic error classification, the config file and the crontab."""

from __future__ import annotations

import hashlib
import io
import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
from govstack_backup import manifest, metrics, objects, vectors
from govstack_backup.config import ConfigError, load, read_secret
from govstack_backup.files import write_if_changed
from govstack_backup.restic import classify

from tests.support.s3_response import S3Response


# -- manifest ----------------------------------------------------------------------------------
def test_table_checksum_folds_postgres_signed_sums_into_64_bits():
    assert manifest.table_checksum(0) == "0000000000000000"
    assert manifest.table_checksum(-1) == "ffffffffffffffff"
    assert manifest.table_checksum(2**64 + 5) == "0000000000000005"
    assert manifest.table_checksum("12345678901234567890123") == f"{12345678901234567890123 & (2**64 - 1):016x}"


def test_bucket_digest_depends_on_every_key_hash_and_size_in_order():
    entries = {"a": {"sha256": "1" * 64, "size": 3}, "b": {"sha256": "2" * 64, "size": 4}}
    base = manifest.bucket_digest(entries)
    assert base == manifest.bucket_digest(dict(reversed(list(entries.items()))))
    assert base != manifest.bucket_digest({**entries, "b": {"sha256": "2" * 64, "size": 5}})
    assert base != manifest.bucket_digest({**entries, "c": {"sha256": "3" * 64, "size": 1}})


def test_collection_digest_is_order_independent_and_content_sensitive():
    recs = [("a", [0.1, 0.2], {"k": 1}, "doc a"), ("b", [0.3, 0.4], None, None)]
    one, two = manifest.CollectionDigest(), manifest.CollectionDigest()
    for rec in recs:
        one.add(*rec)
    for rec in reversed(recs):
        two.add(*rec)
    assert one.hexdigest() == two.hexdigest() and one.count == 2
    three = manifest.CollectionDigest()
    three.add("a", [0.1, 0.2], {"k": 2}, "doc a")
    three.add(*recs[1])
    assert three.hexdigest() != one.hexdigest()
    # Embedding values are compared with a tolerance elsewhere; their shape is in the digest.
    four = manifest.CollectionDigest()
    four.add("a", [0.1, 0.2000001], {"k": 1}, "doc a")
    four.add(*recs[1])
    assert four.hexdigest() == one.hexdigest()
    five = manifest.CollectionDigest()
    five.add("a", [0.1], {"k": 1}, "doc a")
    five.add(*recs[1])
    assert five.hexdigest() != one.hexdigest()


def test_compare_tables_names_each_difference():
    want = {"public.a": {"rows": 2, "checksum": "x"}, "public.b": {"rows": 1, "checksum": "y"},
            "public.c": {"rows": 0, "checksum": "0"}}
    got = {"public.a": {"rows": 3, "checksum": "x"}, "public.b": {"rows": 1, "checksum": "z"},
           "public.d": {"rows": 1, "checksum": "w"}}
    problems = manifest.compare_tables(want, got)
    assert problems == [
        "table public.a: 3 rows, snapshot has 2",
        "table public.b: content checksum z != y",
        "table public.c: missing after restore (snapshot has 0 rows)",
        "table public.d: not in the snapshot (1 rows restored)",
    ]
    assert manifest.compare_tables(want, want) == []


def test_compare_objects_counts_missing_mismatched_and_extra():
    want = {"k1": {"sha256": "a", "size": 1}, "k2": {"sha256": "b", "size": 2}, "k3": {"sha256": "c", "size": 3}}
    result = manifest.compare_objects(want, [("k1", "a", 1), ("k2", "B", 2), ("zz", "q", 9)])
    assert result["missing"] == ["k3"] and result["mismatched"] == ["k2"] and result["extra_count"] == 1
    assert result["verified"] == 1 and not result["ok"]
    assert manifest.compare_objects(want, [("k1", "a", 1), ("k2", "b", 2), ("k3", "c", 3)])["ok"]


def test_compare_collections_and_sequences():
    want = {"db/c": {"count": 2, "digest": "d"}}
    assert manifest.compare_collections(want, {"db/c": {"count": 2, "digest": "d"}}) == []
    assert "missing" in manifest.compare_collections(want, {})[0]
    assert "1 vectors" in manifest.compare_collections(want, {"db/c": {"count": 1, "digest": "d"}})[0]
    assert manifest.compare_sequences({"s": "5"}, {"s": "4"}) == [
        "sequence s: last_value '4', below the snapshot's '5'"]
    assert manifest.compare_sequences({"s": "5", "t": ""}, {"s": "7", "t": ""}) == []  # read later by pg_dump
    assert manifest.compare_sequences({"s": "5"}, {}) != []


def _snap(sid, run, component, time="2026-01-01T00:00:00Z"):
    return {"id": sid, "time": time, "tags": ["govstack", f"run:{run}", f"component:{component}"]}


def test_runs_group_by_tag_and_only_manifested_runs_are_complete():
    snaps = [_snap("a1", "R1", "postgres"), _snap("a2", "R1", "manifest"), _snap("b1", "R2", "postgres"),
             {"id": "x", "tags": ["other"]}]
    runs = manifest.group_runs(snaps)
    assert list(runs) == ["R1", "R2"]
    assert runs["R1"]["complete"] and not runs["R2"]["complete"]
    assert manifest.resolve_run(runs, "latest") == "R1"
    assert manifest.resolve_run(runs, "R1") == "R1"
    assert manifest.resolve_run(runs, "R2") is None  # incomplete runs never restore
    assert manifest.resolve_run({"R9": {"complete": True, "snapshots": {"postgres": "abcdef0123"}}},
                                "abcdef01") == "R9"
    assert manifest.resolve_run(runs, "deadbeef") is None


def test_retention_args_follow_the_policy_and_refuse_keeping_nothing():
    assert manifest.retention_args({"keep_daily": 7, "keep_weekly": 4, "keep_monthly": 0, "keep_last": 2}) == [
        "--keep-last", "2", "--keep-daily", "7", "--keep-weekly", "4"]
    with pytest.raises(ValueError, match="keeps nothing"):
        manifest.retention_args({"keep_daily": 0})
    with pytest.raises(ValueError, match="unknown retention key"):
        manifest.retention_args({"keep_forever": 1})


def test_runs_to_forget_takes_whole_runs_and_never_the_newest():
    runs = manifest.group_runs([
        _snap("o1", "R1", "postgres"), _snap("o2", "R1", "manifest"),
        _snap("p1", "R2", "postgres"),  # an incomplete, failed run
        _snap("n1", "R3", "postgres"), _snap("n2", "R3", "manifest"),
        _snap("z1", "R4", "postgres"),  # incomplete but newer than the newest complete run: in progress
    ])
    plan = [{"keep": [_snap("n2", "R3", "manifest")], "remove": [_snap("o2", "R1", "manifest"),
                                                                  _snap("n2", "R3", "manifest")]}]
    assert sorted(manifest.runs_to_forget(plan, runs, newest="R3")) == ["o1", "o2", "p1"]


# -- objects: the tar stream against an in-memory S3 --------------------------------------------
class _Obj:
    def __init__(self, name):
        self.object_name = name


class _Bucket:
    def __init__(self, name):
        self.name = name


class FakeMinio:
    def __init__(self, buckets=None):
        self.data = buckets or {}

    def list_buckets(self):
        return [_Bucket(name) for name in self.data]

    def bucket_exists(self, bucket):
        return bucket in self.data

    def make_bucket(self, bucket):
        self.data[bucket] = {}

    def list_objects(self, bucket, recursive=True):
        return [_Obj(key) for key in sorted(self.data.get(bucket, {}))]

    def get_object(self, bucket, key):
        body, ctype, meta = self.data[bucket][key]
        headers = {"Content-Length": str(len(body)), "Content-Type": ctype,
                   "Last-Modified": "Mon, 02 Jan 2026 03:04:05 GMT",
                   **{f"x-amz-meta-{k}": v for k, v in meta.items()}}
        return S3Response(body, headers)

    def put_object(self, bucket, key, body, length, content_type=None, metadata=None, part_size=None):
        data = body.read(length)
        assert len(data) == length
        self.data[bucket][key] = (data, content_type, dict(metadata or {}))


def _store():
    return FakeMinio({
        "documents": {
            "c1/aa": (b"hello", "text/plain", {"sha256": hashlib.sha256(b"hello").hexdigest(),
                                                "original-filename": "h%C3%A9llo.txt"}),
            "c1/bb": (b"\x00" * 70000, "application/pdf", {}),
            "dir/with space/ü.bin": (b"x", "application/octet-stream", {}),
            "folder/": (b"", "application/x-directory", {}),
        },
        "empty": {},
    })


def test_objects_round_trip_keeps_bytes_keys_types_and_metadata():
    source = _store()
    stream = io.BytesIO()
    part = objects.export(source, objects.buckets(source), stream)
    docs = part["buckets"]["documents"]
    assert docs["count"] == 4 and docs["bytes"] == 5 + 70000 + 1
    assert docs["objects"]["c1/aa"] == {"sha256": hashlib.sha256(b"hello").hexdigest(), "size": 5}
    assert docs["digest"] == manifest.bucket_digest(docs["objects"])
    assert part["buckets"]["empty"]["count"] == 0

    target = FakeMinio()
    stream.seek(0)
    put = objects.restore(target, stream, part)
    assert put == {"objects": 4, "bytes": 70006}
    assert target.data["documents"] == source.data["documents"]
    assert target.data["empty"] == {}  # empty buckets come back too
    checks = objects.verify(target, part)
    assert all(check["ok"] for check in checks.values())


def test_objects_verify_catches_a_changed_and_a_missing_object():
    source = _store()
    stream = io.BytesIO()
    part = objects.export(source, ["documents"], stream)
    source.data["documents"]["c1/aa"] = (b"HELLO", "text/plain", {})
    del source.data["documents"]["c1/bb"]
    check = objects.verify(source, part)["documents"]
    assert check["mismatched"] == ["c1/aa"] and check["missing"] == ["c1/bb"] and not check["ok"]
    assert objects.non_empty(source, ["documents", "nope"]) == {"documents": 3}


# -- vectors: JSONL against an in-memory Chroma -------------------------------------------------
class FakeChroma(vectors.Chroma):
    def __init__(self, collections=None):
        self.tenant = "default_tenant"
        self.cols = collections or {}
        self.renamed = []

    def version(self):
        return "1.0.0"

    def max_batch(self):
        return 2

    def databases(self):
        return sorted({db for db, _ in self.cols} or ["default_database"])

    def ensure_database(self, database):
        pass

    def collections(self, database):
        return [{"id": f"{db}/{name}", "name": name, "metadata": col["metadata"],
                 "configuration_json": col["configuration"], "dimension": 2}
                for (db, name), col in sorted(self.cols.items()) if db == database]

    def collection(self, database, name):
        found = [c for c in self.collections(database) if c["name"] == name]
        return found[0] if found else None

    def count(self, database, cid):
        return len(self.cols[tuple(cid.split("/", 1))]["records"])

    def page(self, database, cid, offset, limit=vectors.PAGE):
        recs = self.cols[tuple(cid.split("/", 1))]["records"][offset:offset + limit]
        return {"ids": [r["id"] for r in recs], "embeddings": [r["embedding"] for r in recs],
                "metadatas": [r["metadata"] for r in recs], "documents": [r["document"] for r in recs],
                "uris": [None for _ in recs]}

    def create_collection(self, database, name, metadata, configuration):
        self.cols[(database, name)] = {"metadata": metadata, "configuration": configuration, "records": []}
        return {"id": f"{database}/{name}"}

    def rename_collection(self, database, cid, new_name):
        self.cols[(database, new_name)] = self.cols.pop(tuple(cid.split("/", 1)))
        self.renamed.append(new_name)

    def delete_collection(self, database, name):
        self.cols.pop((database, name), None)

    def upsert(self, database, cid, batch):
        self.cols[tuple(cid.split("/", 1))]["records"].extend(
            {k: r[k] for k in ("id", "embedding", "metadata", "document", "uri")} for r in batch)


def _chroma(n=1201):
    records = [{"id": f"{i}:0", "embedding": [i / 7, -i / 3], "metadata": {"document_id": i}, "document": f"t{i}",
                "uri": None} for i in range(n)]
    return FakeChroma({("default_database", "govstack_a"): {"metadata": {"embedding_model": "m"},
                                                           "configuration": {"hnsw": {"space": "cosine"}},
                                                           "records": records}})


def test_vectors_round_trip_pages_and_digests():
    source = _chroma()
    out = io.BytesIO()
    part = vectors.export(source, out)
    entry = part["collections"]["default_database/govstack_a"]
    assert entry["count"] == 1201 and not entry["changed_during_export"]
    lines = out.getvalue().splitlines()
    assert json.loads(lines[0])["type"] == "export" and len(lines) == 1 + 1 + 1201

    target = FakeChroma()
    result = vectors.restore(target, io.BytesIO(out.getvalue()), force=False, aside_suffix="__old")
    assert result["collections"] == {"default_database/govstack_a": 1201}
    assert vectors.observe(target, ["default_database/govstack_a"])["default_database/govstack_a"] == {
        "count": 1201, "digest": entry["digest"]}


def test_vectors_restore_refuses_a_non_empty_collection_unless_forced_then_keeps_it_aside():
    source = _chroma(3)
    out = io.BytesIO()
    vectors.export(source, out)
    with pytest.raises(vectors.ChromaError, match="use --force"):
        vectors.restore(_chroma(2), io.BytesIO(out.getvalue()), force=False, aside_suffix="__old")
    target = _chroma(2)
    result = vectors.restore(target, io.BytesIO(out.getvalue()), force=True, aside_suffix="__old")
    assert result["set_aside"] == ["default_database/govstack_a__old"]
    assert len(target.cols[("default_database", "govstack_a__old")]["records"]) == 2
    assert len(target.cols[("default_database", "govstack_a")]["records"]) == 3


def test_embeddings_compare_within_float32_tolerance_record_by_record():
    source = _chroma(5)
    out = io.BytesIO()
    vectors.export(source, out)
    records = source.cols[("default_database", "govstack_a")]["records"]
    records[1]["embedding"] = [x + 3e-8 for x in records[1]["embedding"]]  # a re-normalisation's last bit
    records[2], records[3] = records[3], records[2]  # out of order
    check = vectors.compare_embeddings(source, io.BytesIO(out.getvalue()))["default_database/govstack_a"]
    assert check["compared"] == 5 and check["missing"] == 0 and check["over_tolerance"] == 0
    assert 0 < check["max_difference"] < manifest.EMBEDDING_TOLERANCE
    records[4]["embedding"] = [x + 0.01 for x in records[4]["embedding"]]
    del records[0]
    check = vectors.compare_embeddings(source, io.BytesIO(out.getvalue()))["default_database/govstack_a"]
    assert check["missing"] == 1 and check["over_tolerance"] == 1


def test_an_empty_chroma_still_exports_a_non_empty_stream():
    out = io.BytesIO()
    part = vectors.export(FakeChroma(), out)
    assert part["collections"] == {} and out.getvalue()  # restic refuses an empty stdin


# -- metrics -------------------------------------------------------------------------------------
def test_metrics_keep_the_last_success_across_a_failure_and_count_failures(tmp_path):
    path = str(tmp_path / "backup.prom")
    metrics.record(path, ok=True, finished_at=1000.0, duration_s=12.5, size_bytes=4096)
    metrics.record(path, ok=False, finished_at=2000.0, duration_s=3, size_bytes=0)
    values = metrics.record(path, ok=False, finished_at=3000.0, duration_s=3, size_bytes=0)
    assert values["govstack_backup_last_success_timestamp_seconds"] == 1000
    assert values["govstack_backup_last_duration_seconds"] == 12.5
    assert values["govstack_backup_last_size_bytes"] == 4096
    assert values["govstack_backup_failures_total"] == 2
    assert values["govstack_backup_last_failure_timestamp_seconds"] == 3000
    text = Path(path).read_text()
    assert metrics.parse(text) == values
    for name in ("govstack_backup_last_success_timestamp_seconds", "govstack_backup_last_duration_seconds",
                 "govstack_backup_last_size_bytes", "govstack_backup_failures_total"):
        assert f"# TYPE {name} " in text and f"\n{name} " in text
    assert [p.name for p in tmp_path.iterdir()] == ["backup.prom"]  # no temp file left behind


# -- restic errors, config, secrets ------------------------------------------------------------
@pytest.mark.parametrize(("stderr", "kind"), [
    ("Fatal: wrong password or no key found", "wrong-password"),
    ("Fatal: unable to open config file: Stat: stat /backups/restic/config: no such file or directory\n"
     "Is there a repository at the following location?", "no-repository"),
    ("Fatal: unable to open config file: Stat: Get \"http://x:8333/b/?location=\": dial tcp 1.2.3.4:8333: "
     "connect: connection refused\nIs there a repository at the following location?", "unreachable"),
    ("Save(<data/1234>) returned error: write /backups/restic/data/12/1234: no space left on device", "disk-full"),
    ("Fatal: no matching ID found for prefix \"deadbeef\"", "missing-snapshot"),
    ("Fatal: repository contains errors", "corrupt"),
    ("something else", "error"),
])
def test_restic_errors_are_classified(stderr, kind):
    assert classify(stderr) == kind


def test_config_load_and_secrets(tmp_path):
    cfg = {"project": "p", "repository": "/r", "cache_dir": "/c", "password_file": "/pw", "pg": {}, "s3": {},
           "chroma": {}, "retention": {"keep_daily": 1}, "check_read_data_subset": "5%", "readback": True,
           "metrics_file": "/m", "schedule_file": "/s", "object_refs": None,
           "offsite": {"repository": "s3:http://h:1/b/p", "access_key_file": "/a", "secret_key_file": "/s"}}
    path = tmp_path / "backup.json"
    path.write_text(json.dumps(cfg))
    loaded = load(str(path))
    assert loaded.offsite.repository == "s3:http://h:1/b/p" and loaded.host_tag == "p"
    del cfg["repository"]
    path.write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="lacks repository"):
        load(str(path))
    secret = tmp_path / "secret"
    secret.write_text("s3cr3t\n")
    assert read_secret(str(secret)) == "s3cr3t"
    secret.write_text("\n")
    with pytest.raises(ConfigError, match="empty"):
        read_secret(str(secret))


# -- the crontab (croniter: in the image, and a dev dependency of the bundle) -----------------------
def test_crontab_parsing_and_next_time():
    from govstack_backup.schedule import CrontabError, next_fire, parse_crontab

    entries = parse_crontab("# comment\n\n15 2 * * * govstack-backup run\n@hourly govstack-backup run --json\n")
    assert [e.expression for e in entries] == ["15 2 * * *", "@hourly"]
    assert entries[1].argv == ("govstack-backup", "run", "--json")
    after = datetime(2026, 3, 1, 2, 20, tzinfo=UTC)
    assert next_fire("15 2 * * *", after) == datetime(2026, 3, 2, 2, 15, tzinfo=UTC)
    for bad, why in (("61 2 * * * govstack-backup run", "not a cron"), ("15 2 * * * rm -rf /", "must be"),
                     ("# nothing", "no schedule")):
        with pytest.raises(CrontabError, match=why):
            parse_crontab(bad)


# -- vectors, incrementally: one file per collection, re-read only when it changed -------------
class _CountingChroma(FakeChroma):
    def __init__(self, collections=None):
        super().__init__(collections)
        self.pages = 0

    def page(self, database, cid, offset, limit=vectors.PAGE):
        self.pages += 1
        return super().page(database, cid, offset, limit)


def _two_collections():
    chroma = _CountingChroma(_chroma(30).cols)
    chroma.cols[("default_database", "govstack_b")] = {
        "metadata": None, "configuration": {}, "records": [{"id": "b1", "embedding": [1.0, 0.0], "metadata": None,
                                                            "document": "b", "uri": None}]}
    return chroma


def _dir_tar(root: Path) -> io.BytesIO:
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(root, arcname="backups/mirror/vectors")
    buf.seek(0)
    return buf


def test_vectors_export_dir_reads_only_changed_collections_and_round_trips(tmp_path):
    chroma, root = _two_collections(), tmp_path / "vectors"
    marks = {"default_database/govstack_a": ["30", "t1", "h1"], "default_database/govstack_b": ["1", "t1", "h2"]}
    first = vectors.export_dir(chroma, str(root), marks)
    assert first["counters"] == {"exported": 2, "unchanged": 0, "records_read": 31, "no_watermark": 0}

    chroma.pages = 0
    again = vectors.export_dir(chroma, str(root), marks)
    assert again["counters"]["exported"] == 0 and chroma.pages == 0
    assert again["collections"] == first["collections"]

    # The app indexed a document into b: only b is read again.
    chroma.cols[("default_database", "govstack_b")]["records"].append(
        {"id": "b2", "embedding": [0.0, 1.0], "metadata": None, "document": "b2", "uri": None})
    third = vectors.export_dir(chroma, str(root), {**marks, "default_database/govstack_b": ["2", "t2", "h3"]})
    assert third["counters"] == {"exported": 1, "unchanged": 1, "records_read": 2, "no_watermark": 0}
    # A change the watermark misses but the count shows (vectors deleted after the row's commit).
    chroma.cols[("default_database", "govstack_a")]["records"].pop()
    fourth = vectors.export_dir(chroma, str(root), {**marks, "default_database/govstack_b": ["2", "t2", "h3"]})
    assert fourth["counters"]["exported"] == 1 and fourth["collections"]["default_database/govstack_a"]["count"] == 29
    # No watermark: exported every run.
    assert vectors.export_dir(chroma, str(root), {})["counters"]["exported"] == 2
    assert vectors.export_dir(chroma, str(root), {})["counters"]["no_watermark"] == 2
    # A removed collection's file leaves the directory.
    del chroma.cols[("default_database", "govstack_b")]
    last = vectors.export_dir(chroma, str(root), marks)
    assert sorted(p.name for p in root.iterdir()) == sorted(["state.json", last["collections"][
        "default_database/govstack_a"]["file"]])

    target = FakeChroma()
    files = [e["file"] for e in last["collections"].values()]
    put = vectors.restore(target, vectors.lines_of_dir_tar(_dir_tar(root), files), force=False, aside_suffix="_x")
    assert put["collections"] == {"default_database/govstack_a": 29}
    assert target.cols[("default_database", "govstack_a")]["records"] == \
        chroma.cols[("default_database", "govstack_a")]["records"]


def test_vectors_export_dir_redoes_a_collection_whose_file_was_lost_or_half_written(tmp_path):
    chroma, root = _two_collections(), tmp_path / "vectors"
    marks = {"default_database/govstack_a": ["30", "t1", "h1"], "default_database/govstack_b": ["1", "t1", "h2"]}
    first = vectors.export_dir(chroma, str(root), marks)
    (root / first["collections"]["default_database/govstack_a"]["file"]).write_bytes(b"truncated")
    (root / "leftover.jsonl.tmp").write_bytes(b"a crashed run's")
    again = vectors.export_dir(chroma, str(root), marks)
    assert again["counters"]["exported"] == 1 and not (root / "leftover.jsonl.tmp").exists()


def test_the_deploy_ledger_is_read_whole_or_not_at_all(tmp_path):
    from govstack_backup.job import BackupFailed, _read_ledger

    assert _read_ledger(None) is None
    assert _read_ledger(str(tmp_path / "ledger.jsonl")) is None  # no command has written one yet
    ledger = tmp_path / "ledger.jsonl"
    ledger.write_bytes(b'{"action": "up"}\n{"action": "deploy"}\n')
    assert _read_ledger(str(ledger)) == ledger.read_bytes()
    with pytest.raises(BackupFailed, match="cannot read the deploy ledger"):
        _read_ledger(str(tmp_path))  # a directory: an error the run reports, never a silent skip


def test_the_job_config_names_the_ledger_the_compose_block_mounts():
    from govstack.backup.render import job_config
    from govstack.catalog import BackupContainerPaths
    from tests.unit.test_backup_host import plan_for

    plan = plan_for()
    assert job_config(plan)["ledger_file"] == BackupContainerPaths().ledger_file
    assert BackupContainerPaths().ledger_file.startswith(BackupContainerPaths().state_dir + "/")


def test_drill_evidence_names_and_sizes_are_checked_before_anything_is_stored():
    from govstack_backup import evidence
    from govstack_backup.job import BackupFailed

    assert evidence.NAME.fullmatch("drill-20261205T090000Z.json") and evidence.NAME.fullmatch(
        "drill-20261205T090000Z.md")
    for bad in ("drill-20261205T090000Z.json/../x", "../drill-20261205T090000Z.md", "drill-x.json", "ledger.jsonl",
                "drill-20261205T090000Z.json\n"):
        with pytest.raises(BackupFailed, match="not a drill evidence file name"):
            evidence.file_evidence(None, bad, io.BytesIO(b"{}"))  # type: ignore[arg-type]
    assert evidence.read_bounded(io.BytesIO(b"x" * evidence.MAX_BYTES)) == b"x" * evidence.MAX_BYTES
    with pytest.raises(BackupFailed, match="over 16 MiB"):
        evidence.read_bounded(io.BytesIO(b"x" * (evidence.MAX_BYTES + 1)))
    with pytest.raises(BackupFailed, match="no evidence on stdin"):
        evidence.read_bounded(io.BytesIO(b""))


# -- the run's fixed cost: prune on its schedule, read back only what a run added -------------
def _job_config(tmp_path, **extra):
    from govstack_backup.config import Config

    return Config(project="p", repository=str(tmp_path / "repo"), cache_dir=str(tmp_path), password_file="/pw",
                  pg={}, s3={}, chroma={}, retention={"keep_last": 1}, check_read_data_subset="5%", readback=True,
                  metrics_file="", schedule_file="", **extra)


def test_prune_follows_its_schedule_and_without_one_every_forgetting_run(tmp_path):
    from govstack_backup import job
    from govstack_backup.restic import Restic

    restic = Restic(str(tmp_path / "repo"), "/pw", str(tmp_path), "p")
    assert job.prune_due(_job_config(tmp_path), restic, ["a"]) is True
    assert job.prune_due(_job_config(tmp_path), restic, []) is False
    cfg = _job_config(tmp_path, prune_schedule="30 3 * * 0")  # Sundays 03:30
    saturday = datetime(2026, 3, 7, 12, 0, tzinfo=UTC).timestamp()
    # The first run under a schedule notes the time and prunes nothing.
    assert job.prune_due(cfg, restic, ["a"], now=saturday) is False
    assert job.prune_due(cfg, restic, ["a"], now=saturday + 3600) is False
    monday = datetime(2026, 3, 9, 2, 15, tzinfo=UTC).timestamp()
    assert job.prune_due(cfg, restic, [], now=monday) is True  # due whatever this run forgot
    # A prune moves the stamp: not due again until next Sunday.
    job._write_prune_stamp(job._prune_stamp(cfg, restic), monday)
    assert job.prune_due(cfg, restic, ["a"], now=monday + 86400) is False
    assert job.prune_due(cfg, restic, [], now=monday + 7 * 86400) is True
    # One stamp per repository.
    other = Restic(str(tmp_path / "other"), "/pw", str(tmp_path), "p")
    assert job._prune_stamp(cfg, other) != job._prune_stamp(cfg, restic)


class _DumpCounter:
    def __init__(self, content):
        self.content, self.calls = content, []

    def read_sha256(self, snapshot, filename):
        self.calls.append(snapshot)
        data = self.content[snapshot]
        return hashlib.sha256(data).hexdigest(), len(data)


def test_read_back_reads_what_the_run_added_and_fails_on_a_difference():
    from govstack_backup import job

    good, bad = b"dump", b"state"
    restic = _DumpCounter({"s1": good, "s2": bad, "s3": b"tampered"})
    streams = {
        "postgres": {"snapshot": "s1", "bytes": 4, "sha256": hashlib.sha256(good).hexdigest(), "data_added": 9},
        # An unchanged mirror: restic stored nothing new, the earlier run read it back.
        "objects": {"snapshot": "s2", "readback_file": "m/state.json", "bytes": 99, "state_bytes": 5,
                    "sha256": hashlib.sha256(bad).hexdigest(), "data_added": 0},
    }
    assert job._read_back(restic, streams) == ["postgres"] and restic.calls == ["s1"]
    streams["objects"]["data_added"] = 1
    assert job._read_back(restic, streams) == ["postgres", "objects"]
    streams["ledger"] = {"snapshot": "s3", "bytes": 4, "sha256": hashlib.sha256(good).hexdigest(), "data_added": 3}
    with pytest.raises(job.BackupFailed, match="reads back as"):
        job._read_back(restic, streams)


def test_an_unchanged_file_is_skipped_only_when_this_repository_gave_back_that_content(tmp_path):
    from govstack_backup import job
    from govstack_backup.restic import Restic

    ledger = b"ledger lines"
    digest = hashlib.sha256(ledger).hexdigest()
    restic = _DumpCounter({"v1": ledger})
    streams = {"ledger": {"snapshot": "v1", "readback_file": "m/run/ledger", "bytes": len(ledger),
                          "sha256": digest, "data_added": 7, "written": False}}
    # Nothing known of this repository (another one, one made again, or a run that failed
    # after storing it): read back, and remembered.
    verified: dict[str, str] = {}
    assert job._read_back(restic, streams, verified) == ["ledger"] and verified == {"m/run/ledger": digest}
    # Now it was: skipped while the content stays the same.
    assert job._read_back(restic, streams, verified) == [] and restic.calls == ["v1"]
    # Another content under the same name (restored from an older run, say): read back again.
    assert job._read_back(restic, streams, {"m/run/ledger": "0" * 64}) == ["ledger"]
    # No place to remember (a remote repository): always read back.
    assert job._read_back(restic, streams, None) == ["ledger"]

    cfg = type("Cfg", (), {"cache_dir": str(tmp_path / "cache")})()
    (tmp_path / "cache").mkdir()
    repo = tmp_path / "repo"
    repo.mkdir()
    local = Restic(str(repo), "/pw", str(tmp_path / "cache"), "p")
    assert job._verified_file(cfg, local) is None  # no config yet: nothing was ever read back from it
    (repo / "config").write_bytes(b"first")
    first = job._verified_file(cfg, local)
    job._write_verified(first, {"m/run/ledger": digest})
    assert job._load_verified(first) == {"m/run/ledger": digest}
    (repo / "config").write_bytes(b"made again")
    assert job._verified_file(cfg, local) != first
    assert job._load_verified(job._verified_file(cfg, local)) == {}
    assert job._verified_file(cfg, Restic("s3:http://h:1/b/p", "/pw", "/c", "p")) is None
    # A damaged file is worth nothing, not an error.
    Path(first).write_text('{"m/run/ledger": 5')
    assert job._load_verified(first) == {}
    Path(first).write_text('["m/run/ledger"]')
    assert job._load_verified(first) == {}


def test_an_existing_local_repository_opens_without_a_restic_process(tmp_path, monkeypatch):
    from govstack_backup.restic import Restic

    calls = []
    restic = Restic(str(tmp_path), "/pw", str(tmp_path / "cache"), "p")
    monkeypatch.setattr(restic, "exists", lambda: calls.append("exists") or False)
    monkeypatch.setattr(restic, "init", lambda **kw: calls.append("init"))
    assert restic.ensure() is True and calls == ["exists", "init"]  # no config file: restic decides
    (tmp_path / "config").write_bytes(b"x")
    calls.clear()
    assert restic.ensure() is False and calls == []
    remote = Restic("s3:http://h:1/b/p", "/pw", "/c", "p")
    monkeypatch.setattr(remote, "exists", lambda: calls.append("remote") or True)
    assert remote.ensure() is False and calls == ["remote"]  # a remote one is always asked


def test_a_snapshot_holding_several_components_serves_each_and_is_forgotten_once():
    shared = {"id": "v1", "time": "t", "tags": ["govstack", "run:R1", "component:vectors",
                                                "component:postgres_globals", "component:ledger"]}
    runs = manifest.group_runs([_snap("p1", "R1", "postgres"), shared, _snap("m1", "R1", "manifest"),
                                _snap("n1", "R2", "postgres"), _snap("n2", "R2", "manifest")])
    assert runs["R1"]["snapshots"] == {"postgres": "p1", "vectors": "v1", "postgres_globals": "v1",
                                       "ledger": "v1", "manifest": "m1"}
    plan = [{"remove": [_snap("m1", "R1", "manifest")]}]
    assert manifest.runs_to_forget(plan, runs, newest="R2") == ["p1", "v1", "m1"]


def test_run_files_are_rewritten_only_when_their_content_changes(tmp_path):
    from govstack_backup import job

    path = str(tmp_path / "ledger.jsonl")
    assert write_if_changed(path, b"a\n") == (True, b"a\n")
    before = job._stat_key(path)
    assert write_if_changed(path, b"a\n") == (False, b"a\n") and job._stat_key(path) == before
    assert write_if_changed(path, b"a\nb\n")[0] is True and job._stat_key(path) != before
    assert Path(path).read_bytes() == b"a\nb\n" and oct(os.stat(path).st_mode & 0o777) == "0o600"
    # The roles' dump: a new random \restrict key every time (Postgres 15.14+) is no change; the
    # file keeps its own (consistent) key and the run records the bytes the file holds.
    roles = str(tmp_path / "postgres-globals.sql")
    first = b"--\n\\restrict AAA\nCREATE ROLE app;\n\\unrestrict AAA\n"
    again = b"--\n\\restrict BBB\nCREATE ROLE app;\n\\unrestrict BBB\n"
    write_if_changed(roles, first, job._without_restrict_key)
    assert write_if_changed(roles, again, job._without_restrict_key) == (False, first)
    changed = b"--\n\\restrict CCC\nCREATE ROLE app;\nCREATE ROLE other;\n\\unrestrict CCC\n"
    assert write_if_changed(roles, changed, job._without_restrict_key) == (True, changed)


class _RetentionRestic:
    """restic's listing and dry-run plan as a repository holding runs, pre-deploy copies and
    filed drill evidence would answer them; records what is forgotten."""

    def __init__(self, listed, plans):
        self.listed, self.plans, self.forgotten = listed, plans, []

    def snapshots(self, *tags):
        return [s for s in self.listed if all(t in s["tags"] for t in tags)]

    def forget_plan(self, keep_args, tag):
        return self.plans.get(tag, [])

    def forget(self, ids):
        self.forgotten += ids


def test_retention_forgets_whole_runs_and_never_filed_drill_evidence(tmp_path):
    """Drill evidence (tag "evidence", govstack_backup.evidence) sits in the same repository as
    the runs; one listing of every snapshot feeds retention, which must select runs only (a prune,
    on its schedule, keeps the data of every snapshot not forgotten, the evidence among them)."""
    from govstack_backup import evidence, job

    shared = {"id": "v1", "time": "t", "tags": ["govstack", "run:R1", "component:vectors",
                                                "component:postgres_globals", "component:ledger"]}
    filed = [{"id": f"e{i}", "time": "t", "tags": [evidence.TAG, f"{evidence.TAG}:drill-2026010{i}T000000Z"]}
             for i in (1, 2)]
    copy = {"id": "c1", "time": "t", "tags": ["govstack-pre-deploy", "run:P1", "component:postgres"]}
    copy_manifest = {"id": "c2", "time": "t", "tags": ["govstack-pre-deploy", "run:P1", "component:manifest"]}
    listed = [_snap("p1", "R1", "postgres"), shared, _snap("m1", "R1", "manifest"), *filed,
              _snap("n1", "R2", "postgres"), _snap("n2", "R2", "manifest"), copy, copy_manifest]
    # restic's dry run, told to forget everything it may: the old run, and the evidence were it asked.
    plans = {"govstack,component:manifest": [{"remove": [_snap("m1", "R1", "manifest"), *filed]}]}
    restic = _RetentionRestic(listed, plans)
    cfg = _job_config(tmp_path, keep_pre_deploy=0)
    forgotten = job.apply_retention(restic, cfg, newest="R2")
    assert sorted(forgotten) == ["m1", "p1", "v1"] and restic.forgotten == forgotten
    assert not {"e1", "e2"} & set(restic.forgotten)
