"""The S3 gateway's identities, changed in place (`govstack secret rotate`, steps 2 and 4): the
image the deployed stack runs SeaweedFS from, in a container of this module's own (the stack's
is left alone), its entrypoint's `identities` mode, and the minio SDK the app uses. Each
identity's keys come from its secret files; a rotation passes the new pair on stdin as a second
pair of that identity, then switches the files and drops it. The reload behind it is
asynchronous (SIGHUP): the step must return only once the gateway answers with exactly the new
access keys."""

from __future__ import annotations

import subprocess
import time
import uuid

import pytest
from minio import Minio
from minio.error import S3Error

OLD = ("govstack", "AKold0000000000000001", "SKold/0000000000000000000000000000000000001")
NEW = ("govstack-next", "AKnew0000000000000002", "SKnew+0000000000000000000000000000000000002")
ENTRYPOINT = "/usr/local/bin/seaweedfs-entrypoint"


def docker(*args: str, stdin: str | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], input=stdin, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def gateway(stack, tmp_path_factory):
    """A SeaweedFS container as the stack runs it (read-only, no capabilities, uid 10001) whose
    S3 port is published on loopback only; yields (container name, endpoint, its secrets directory)."""
    running = docker("ps", "--filter", f"label=com.docker.compose.project={stack.settings.project}",
                     "--filter", "label=com.docker.compose.service=seaweedfs", "--format", "{{.Image}}")
    assert running.stdout.split(), f"the stack runs no seaweedfs service: {running.stderr}"
    image = running.stdout.split()[0]
    secrets = tmp_path_factory.mktemp("s3-secrets")
    secrets.chmod(0o755)
    for name, value in (("s3_access_key", OLD[1]), ("s3_secret_key", OLD[2])):
        (secrets / name).write_text(value)
        (secrets / name).chmod(0o644)
    name = f"govstack-unit-seaweedfs-{uuid.uuid4().hex[:8]}"
    started = docker("run", "-d", "--name", name, "--init", "--read-only", "--user", "10001:10001",
                     "--cap-drop", "ALL", "--security-opt", "no-new-privileges:true",
                     "--tmpfs", "/tmp:uid=10001,gid=10001,mode=0700", "--tmpfs", "/data:uid=10001,gid=10001",
                     "-v", f"{secrets}:/run/secrets:ro", "-p", "127.0.0.1::8333", image)
    assert started.returncode == 0, started.stderr
    try:
        endpoint = docker("port", name, "8333/tcp").stdout.split()[0]
        deadline = time.monotonic() + 60
        while docker("exec", name, "busybox", "wget", "-q", "-O", "/dev/null",
                     "http://127.0.0.1:8333/healthz").returncode != 0:
            assert time.monotonic() < deadline, docker("logs", name).stderr[-2000:]
            time.sleep(0.5)
        yield name, endpoint, secrets
    finally:
        docker("rm", "-f", "-v", name)


def answer(endpoint: str, pair: tuple[str, str, str]) -> str:
    """"accepted", or the S3 error code the gateway gives this key pair."""
    client = Minio(endpoint, access_key=pair[1], secret_key=pair[2], secure=False, region="us-east-1")
    try:
        client.list_buckets()
        return "accepted"
    except S3Error as error:
        return error.code


def set_identities(name: str, *pairs: tuple[str, str, str], env: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """The entrypoint's identities step with these extra key pairs on stdin."""
    lines = "".join(f"{n} {ak} {sk}\n" for n, ak, sk in pairs)
    return docker("exec", "-i", *(f"--env={e}" for e in env), name, ENTRYPOINT, "identities", stdin=lines)


def switch_files(secrets, pair: tuple[str, str, str]) -> None:
    """The rotation's step 3: the secret files rewritten in place (the container sees them)."""
    for file, value in (("s3_access_key", pair[1]), ("s3_secret_key", pair[2])):
        with open(secrets / file, "r+") as handle:
            handle.truncate(0)
            handle.write(value)


def weed_pid(name: str) -> str:
    # PID 1 is the init; weed is its child.
    pids = docker("exec", name, "sh", "-c", "for p in /proc/[0-9]*; do "
                  "[ \"$(cat $p/comm)\" = weed ] && echo ${p#/proc/}; done").stdout.split()
    assert len(pids) == 1, pids
    return pids[0]


def test_both_pairs_then_only_the_new_one_each_in_force_when_the_step_returns(gateway):
    name, endpoint, secrets = gateway
    assert answer(endpoint, OLD) == "accepted"
    assert answer(endpoint, NEW) == "InvalidAccessKeyId"

    both = set_identities(name, ("govstack", NEW[1], NEW[2]))
    assert both.returncode == 0, both.stderr
    assert (answer(endpoint, OLD), answer(endpoint, NEW)) == ("accepted", "accepted")

    switch_files(secrets, NEW)
    only_new = set_identities(name)
    assert only_new.returncode == 0, only_new.stderr
    assert (answer(endpoint, OLD), answer(endpoint, NEW)) == ("InvalidAccessKeyId", "accepted")
    # Nothing of the keys reaches the step's output.
    assert all(secret not in only_new.stdout + only_new.stderr for pair in (OLD, NEW) for secret in pair[1:])

    switch_files(secrets, OLD)
    back = set_identities(name)
    assert back.returncode == 0, back.stderr
    assert (answer(endpoint, OLD), answer(endpoint, NEW)) == ("accepted", "InvalidAccessKeyId")


def test_a_gateway_that_does_not_reload_fails_the_step(gateway):
    # weed stopped (SIGSTOP): the signal waits, the gateway keeps the old keys; the step must not
    # report them in force. Once weed runs again it reloads and the new pair works.
    name, endpoint, _ = gateway
    pid = weed_pid(name)
    assert docker("exec", name, "sh", "-c", f"kill -STOP {pid}").returncode == 0
    try:
        stalled = set_identities(name, ("govstack", NEW[1], NEW[2]), env=("S3_RELOAD_WAIT_S=2",))
    finally:
        docker("exec", name, "sh", "-c", f"kill -CONT {pid}")
    assert stalled.returncode != 0
    assert "did not load the new identities" in stalled.stderr, stalled.stderr
    deadline = time.monotonic() + 30
    while answer(endpoint, NEW) != "accepted":
        assert time.monotonic() < deadline, "the reload never happened after weed resumed"
        time.sleep(0.5)
    assert set_identities(name).returncode == 0
    assert answer(endpoint, NEW) == "InvalidAccessKeyId"


@pytest.mark.parametrize(("line", "why"), [
    ("govstack AK\"x SKsecret", "S3 keys may only contain"),
    ("govstack AKx SK}secret", "S3 keys may only contain"),
    ("govstack AKx SK$(id)", "S3 keys may only contain"),
    ("govstack AKx", "<identity> <access key> <secret key>"),
    ("nobody AKx SKx", "no S3 identity nobody"),
    ("govstack AKdup x1\ngovstack AKdup x2", "access key is given twice"),
    (f"govstack {OLD[1]} SKother", "access key is given twice"),
], ids=["quote", "brace", "substitution", "no-secret", "unknown-identity", "same-key", "key-in-force"])
def test_a_line_the_gateway_cannot_take_is_refused_and_the_keys_in_force_stay(gateway, line, why):
    name, endpoint, _ = gateway
    refused = docker("exec", "-i", name, ENTRYPOINT, "identities", stdin=line + "\n")
    assert refused.returncode != 0
    assert why in refused.stderr, refused.stderr
    assert (answer(endpoint, OLD), answer(endpoint, NEW)) == ("accepted", "InvalidAccessKeyId")


def test_two_calls_at_once_both_succeed_and_leave_no_scratch(gateway):
    name, endpoint, _ = gateway
    line = f"govstack {NEW[1]} {NEW[2]}\n"
    calls = [subprocess.Popen(["docker", "exec", "-i", name, ENTRYPOINT, "identities"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [call.communicate(line, timeout=120) for call in calls]
    assert [call.returncode for call in calls] == [0, 0], results
    assert (answer(endpoint, OLD), answer(endpoint, NEW)) == ("accepted", "accepted")
    assert set_identities(name).returncode == 0
    assert (answer(endpoint, OLD), answer(endpoint, NEW)) == ("accepted", "InvalidAccessKeyId")
    left = docker("exec", name, "ls", "/dev/shm/seaweedfs").stdout.split()
    assert sorted(f for f in left if f.startswith("s3.")) == ["s3.json", "s3.keys"], left
