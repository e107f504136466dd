# ruff: noqa: F811  (pytest fixtures are imported from backup_support and used as arguments)
"""Bad paths of a backup run, each with a clear error, a non-zero exit, and nothing
deleted: a corrupted pack file, a full disk, and an offsite target that is down
(after a good copy to it)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import shutil
import subprocess
from pathlib import Path

import pytest

from govstack.backup.plan import host_paths
from tests.e2e.backup_support import (  # noqa: F401 - fixtures
    admin,
    cause,
    cli,
    cli_json,
    compose,
    in_test_stack,
    job,
    seeded,
    wait_for,
)


def _complete_runs(stack) -> set[str]:
    return {run["run"] for run in cli_json(stack, "backup", "--list") if run["complete"]}


def test_corrupted_pack_is_flagged_by_check_and_nothing_is_pruned(stack, seeded):
    in_test_stack(stack)
    cli_json(stack, "backup")
    before = _complete_runs(stack)
    packs = sorted(Path(host_paths(stack.settings).repository, "data").rglob("*"), key=lambda p: p.stat().st_size)
    pack = [p for p in packs if p.is_file()][-1]  # the largest: object or vector data
    original = pack.read_bytes()
    try:
        corrupted = bytearray(original)
        middle = len(corrupted) // 2
        corrupted[middle:middle + 64] = bytes(b ^ 0xFF for b in corrupted[middle:middle + 64])
        os.chmod(pack, 0o600)
        pack.write_bytes(bytes(corrupted))
        result = cli(stack, "backup", "--check-subset", "100%")
        assert result.returncode == 1
        message = cause(result)
        # Either the new run's read-back hits the damaged blob, or the check does.
        assert "restic check found errors" in message or "read back" in message, message
        # restic check itself flags the pack.
        check = compose(stack, "run", "--rm", "--no-deps", "-T", "--entrypoint", "restic", "backup",
                        "--repo", "/backups/restic", "--password-file", "/run/secrets/restic_password",
                        "--cache-dir", "/backups/cache", "check", "--read-data", check=False)
        assert check.returncode != 0 and pack.name in check.stdout + check.stderr
        assert before <= _complete_runs(stack)  # nothing pruned
    finally:
        pack.write_bytes(original)
        os.chmod(pack, 0o400)
    healed = cli(stack, "backup", "--check-subset", "100%")
    assert healed.returncode == 0, healed.stderr[-2000:]


def test_disk_too_full_for_the_dump_fails_clearly_and_keeps_the_repository(stack, seeded):
    """A 2 MB tmpfs repository; 4 MB of incompressible objects to back up."""
    in_test_stack(stack)
    volume = f"{stack.settings.project}-backup-full-test"
    filler = f"{stack.settings.project}-filler-test"
    s3 = stack.s3("admin")  # a bucket of its own: only the admin identity creates buckets
    subprocess.run(["docker", "volume", "rm", "-f", volume], capture_output=True)
    subprocess.run(["docker", "volume", "create", "--driver", "local", "--opt", "type=tmpfs", "--opt",
                    "device=tmpfs", "--opt", "o=size=2m,uid=10001,gid=10001,mode=0700", volume],
                   check=True, capture_output=True)
    try:
        if not s3.bucket_exists(filler):
            s3.make_bucket(filler)
        data = os.urandom(4 * 1024 * 1024)
        s3.put_object(filler, "random.bin", io.BytesIO(data), len(data))
        result = job(stack, "run", "--json", "--repository", "/spool/restic", extra=("-v", f"{volume}:/spool"),
                     check=False)
        assert result["_rc"] == 1 and result["ok"] is False
        assert "no space left on device" in result["error"], result
        # The partial repository holds no complete run, and the real one is untouched.
        probe = job(stack, "probe", extra=("-v", f"{volume}:/spool"), check=False)
        assert probe["ok"] is True
        assert cli(stack, "backup", "--list").returncode == 0
    finally:
        for obj in s3.list_objects(filler, recursive=True):
            s3.remove_object(filler, obj.object_name)
        s3.remove_bucket(filler)
        subprocess.run(["docker", "volume", "rm", "-f", volume], capture_output=True)


@pytest.fixture
def offsite(stack, tmp_path):
    """A second SeaweedFS on the stack's data network, with its own keys, and a job
    config naming it as the offsite repository (for one-off runs)."""
    name = f"{stack.settings.project}-offsite-test"
    keys = tmp_path / "keys"
    keys.mkdir()
    access, secret = secrets.token_hex(10), secrets.token_hex(20)
    (keys / "s3_access_key").write_text(access)
    (keys / "s3_secret_key").write_text(secret)
    for path in (keys, *keys.iterdir()):
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    subprocess.run(["docker", "rm", "-f", name], capture_output=True)
    subprocess.run(
        ["docker", "run", "-d", "--name", name, "--network", stack.plan.networks["data"], "--user", "10001:10001",
         "--tmpfs", "/data:uid=10001,gid=10001", "-v", f"{keys}:/run/secrets:ro", "--cap-drop", "ALL",
         "--security-opt", "no-new-privileges", stack.plan.image("seaweedfs")],
        check=True, capture_output=True)
    wait_for(lambda: subprocess.run(["docker", "exec", name, "busybox", "wget", "-q", "-O", "/dev/null",
                                     "http://127.0.0.1:8333/healthz"], capture_output=True).returncode == 0,
             120, "the offsite SeaweedFS")
    config = json.loads(Path(host_paths(stack.settings).config_file).read_text())
    config["offsite"] = {"repository": f"s3:http://{name}:8333/offsite-test/{stack.settings.project}",
                         "access_key_file": "/etc/offsite-test/keys/s3_access_key",
                         "secret_key_file": "/etc/offsite-test/keys/s3_secret_key", "region": "us-east-1"}
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "backup.json").write_text(json.dumps(config))
    shutil.copytree(keys, conf / "keys")
    for path in (conf, *conf.rglob("*")):
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    yield {"name": name, "extra": ("-v", f"{conf}:/etc/offsite-test:ro"), "config": "/etc/offsite-test/backup.json"}
    subprocess.run(["docker", "rm", "-f", name], capture_output=True)


def test_offsite_copy_then_offsite_down_fails_clearly_and_keeps_the_local_run(stack, seeded, offsite):
    in_test_stack(stack)
    first = job(stack, "--config", offsite["config"], "run", "--json", extra=offsite["extra"])
    assert first["ok"] and first["offsite"].startswith("s3:http://")
    copied = job(stack, "--config", offsite["config"], "runs", "--from", "offsite", extra=offsite["extra"])
    assert any(r["run"] == first["run"] and r["complete"] for r in copied["runs"])
    manifest = job(stack, "--config", offsite["config"], "manifest", first["run"], "--from", "offsite",
                   extra=offsite["extra"])
    assert manifest["manifest"]["components"]["postgres"]["tables"]  # readable from the offsite copy

    subprocess.run(["docker", "stop", "-t", "5", offsite["name"]], check=True, capture_output=True)
    second = job(stack, "--config", offsite["config"], "run", "--json", extra=offsite["extra"], check=False)
    assert second["_rc"] == 1 and second["ok"] is False
    assert second["step"] == "offsite" and "unreachable" in second["error"], second
    assert offsite["name"] in second["error"]
    # The local run itself completed and verified before the offsite step.
    local = job(stack, "runs")
    newest = max(r["run"] for r in local["runs"] if r["complete"])
    assert newest > first["run"]


def test_drill_evidence_is_filed_offsite_and_refused_clearly_when_it_cannot_be(stack, seeded, offsite):
    """`govstack-backup file-evidence`: the drill's evidence file into the local repository and
    the offsite one, each read back before it counts; a name that is not a drill's, and an
    offsite that is down, are refused with the cause."""
    in_test_stack(stack)
    evidence = json.dumps({"drill_id": "20261205T090000Z", "ok": True, "pad": "x" * 5000})
    name = "drill-20261205T090000Z.json"
    filed = job(stack, "--config", offsite["config"], "file-evidence", name, extra=offsite["extra"], input=evidence)
    assert filed["ok"] and filed["name"] == name and filed["bytes"] == len(evidence)
    assert filed["sha256"] == hashlib.sha256(evidence.encode()).hexdigest()
    assert filed["local"] and filed["offsite"] and filed["offsite_repository"].startswith("s3:http://")
    # Filing it again is another snapshot of the same content: nothing is lost or overwritten.
    again = job(stack, "--config", offsite["config"], "file-evidence", name, extra=offsite["extra"], input=evidence)
    assert again["ok"] and again["offsite"] != filed["offsite"]
    for bad in ("../../etc/passwd", "drill-20261205T090000Z.sh", "ledger.jsonl"):
        refused = job(stack, "file-evidence", bad, input=evidence, check=False)
        assert refused["_rc"] == 1 and not refused["ok"] and "not a drill evidence file name" in refused["error"]
    empty = job(stack, "file-evidence", name, input="", check=False)
    assert empty["_rc"] == 1 and "no evidence on stdin" in empty["error"]

    subprocess.run(["docker", "stop", "-t", "5", offsite["name"]], check=True, capture_output=True)
    down = job(stack, "--config", offsite["config"], "file-evidence", name, extra=offsite["extra"], input=evidence,
               check=False)
    assert down["_rc"] == 1 and down["step"] == "offsite" and "unreachable" in down["error"], down


def test_filed_evidence_outlives_retention_and_prune(stack, seeded, tmp_path):
    """Retention forgets after every run and prune (backup.prune_schedule) frees what it forgot;
    neither touches filed drill evidence. In a repository of its own (a scratch directory), keeping
    one run and pruning on every run that forgot something, so the stack's runs stay."""
    in_test_stack(stack)
    # A directory, not a tmpfs volume: that one empties whenever no container holds it.
    spool = tmp_path / "spool"
    spool.mkdir(mode=0o700)
    os.chown(spool, 10001, 10001)  # the job's user
    config = json.loads(Path(host_paths(stack.settings).config_file).read_text())
    config.update(repository="/spool/restic", retention={"keep_last": 1}, keep_pre_deploy=1, prune_schedule=None,
                  offsite=None)
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "backup.json").write_text(json.dumps(config))
    for path in (conf, *conf.iterdir()):
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    extra = ("-v", f"{spool}:/spool", "-v", f"{conf}:/etc/retention-test:ro")
    config_arg = ("--config", "/etc/retention-test/backup.json")
    try:
        first = job(stack, *config_arg, "run", "--json", extra=extra)
        assert first["ok"] and first["forgotten_snapshots"] == 0
        evidence = json.dumps({"drill_id": "20261205T091500Z", "ok": True, "pad": "y" * 3000})
        name = "drill-20261205T091500Z.json"
        filed = job(stack, *config_arg, "file-evidence", name, extra=extra, input=evidence)
        assert filed["ok"] and filed["local"]
        for _ in range(2):
            later = job(stack, *config_arg, "run", "--json", extra=extra)
            assert later["ok"] and later["forgotten_snapshots"] > 0 and later["pruned"], later
        restic = ("run", "--rm", "--no-deps", "-T", "-v", f"{spool}:/spool", "--entrypoint", "restic", "backup",
                  "--repo", "/spool/restic", "--password-file", "/run/secrets/restic_password",
                  "--cache-dir", "/backups/cache")
        runs = job(stack, *config_arg, "runs", extra=extra)["runs"]
        assert [r["run"] for r in runs if r["complete"]] == [later["run"]]  # retention did forget
        kept = json.loads(compose(stack, *restic, "snapshots", "--tag", "evidence", "--json").stdout)
        assert len(kept) == 1 and kept[0]["id"].startswith(filed["local"])  # filed names the short id
        dumped = compose(stack, *restic, "dump", filed["local"], f"evidence/{name}").stdout
        assert dumped == evidence
    finally:
        shutil.rmtree(spool, ignore_errors=True)
