"""restic, driven as a subprocess: streams in (``backup --stdin``) and out
(``dump``), snapshots by tag, check, forget/prune and copy to an offsite repo.

The repository password reaches restic as a file path (``--password-file``);
offsite S3 keys as an AWS credentials *file* written to the container's
private tmpfs (minio-go's credential chain reads ``AWS_SHARED_CREDENTIALS_FILE``),
so no secret is ever in an environment variable or an argv.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import threading
from collections.abc import Callable, Iterator
from typing import IO, Any

CHUNK = 1 << 20

# restic's stderr -> what went wrong, in the words an operator needs.
_KINDS = (
    ("wrong-password", ("wrong password or no key found",)),
    ("disk-full", ("no space left on device", "disk quota exceeded")),
    # Before no-repository: an unreachable S3 repo also prints "Is there a repository…".
    ("unreachable", ("connection refused", "no such host", "i/o timeout", "network is unreachable",
                     "connection reset", "context deadline exceeded", "Client.Timeout")),
    ("locked", ("repository is already locked",)),
    ("missing-snapshot", ("no matching ID found", "no snapshot found", "invalid id")),
    ("no-repository", ("Is there a repository at the following location?", "repository does not exist",
                       "unable to open config file", "config file does not exist")),
    ("corrupt", ("repository contains errors", "ciphertext verification failed", "Pack ID does not match",
                 "invalid data returned", "unexpected EOF", "error for tree", "pack file cannot be listed")),
)


class ResticError(RuntimeError):
    """restic failed; ``kind`` is one of the _KINDS names or "error"."""

    def __init__(self, message: str, kind: str = "error") -> None:
        super().__init__(message)
        self.kind = kind


def classify(stderr: str) -> str:
    text = stderr.lower()
    for kind, needles in _KINDS:
        if any(needle.lower() in text for needle in needles):
            return kind
    return "error"


def last_lines(text: str, n: int = 3) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " | ".join(lines[-n:])


class HashingWriter:
    """Counts and hashes what passes through to ``sink``."""

    def __init__(self, sink: IO[bytes]) -> None:
        self.sink = sink
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sink.write(data)
        self.sha256.update(data)
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        self.sink.flush()


def _drain(stream: IO[bytes], into: list[bytes]) -> threading.Thread:
    def run() -> None:
        for chunk in iter(lambda: stream.read(65536), b""):
            into.append(chunk)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


class Restic:
    def __init__(
        self,
        repository: str,
        password_file: str,
        cache_dir: str,
        host: str,
        *,
        label: str = "local",
        s3_keys: tuple[str, str] | None = None,
        s3_region: str | None = None,
    ) -> None:
        self.repository = repository
        self.password_file = password_file
        self.cache_dir = cache_dir
        self.host = host
        self.label = label
        self.s3_region = s3_region
        self._env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": "/tmp",
            "TZ": "UTC",
        }
        if s3_keys:
            self._env["AWS_SHARED_CREDENTIALS_FILE"] = self._credentials_file(*s3_keys)
            self._env["AWS_PROFILE"] = "default"

    def _credentials_file(self, access_key_file: str, secret_key_file: str) -> str:
        from govstack_backup.config import read_secret

        path = f"/tmp/govstack-backup-{self.label}.aws"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(
                "[default]\n"
                f"aws_access_key_id = {read_secret(access_key_file)}\n"
                f"aws_secret_access_key = {read_secret(secret_key_file)}\n"
            )
        return path

    def argv(self, *args: str) -> list[str]:
        base = ["restic", "--repo", self.repository, "--password-file", self.password_file,
                "--cache-dir", self.cache_dir]
        if self.repository.startswith("s3:") and self.s3_region:
            base += ["--option", f"s3.region={self.s3_region}"]
        return [*base, *args]

    def _fail(self, what: str, stderr: str) -> ResticError:
        kind = classify(stderr)
        where = f"restic repository {self.repository}"
        reason = {
            "wrong-password": f"{where}: wrong password (the restic_password secret does not open it)",
            "no-repository": f"{where} does not exist or is not a restic repository",
            "missing-snapshot": f"{where}: no such snapshot",
            "disk-full": f"{where}: no space left on device",
            "unreachable": f"{where} is unreachable",
            "locked": f"{where} is locked by another restic process",
            "corrupt": f"{where} has errors",
        }.get(kind, f"{where}: {what} failed")
        return ResticError(f"{reason} ({last_lines(stderr)})", kind)

    def run(self, *args: str, timeout: float | None = None, check: bool = True) -> subprocess.CompletedProcess:
        try:
            proc = subprocess.run(self.argv(*args), env=self._env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise ResticError(f"restic {args[0]} on {self.repository} timed out after {timeout}s",
                              "unreachable") from None
        if check and proc.returncode != 0:
            raise self._fail(args[0], proc.stderr)
        return proc

    def json(self, *args: str, timeout: float | None = None) -> Any:
        out = self.run(*args, "--json", timeout=timeout).stdout
        return json.loads(out) if out.strip() else None

    # -- repository --------------------------------------------------------------------------
    def exists(self, timeout: float = 120) -> bool:
        """True when the repository opens with the password; False when there is none.
        A wrong password or an unreachable repository raises."""
        proc = self.run("cat", "config", timeout=timeout, check=False)
        if proc.returncode == 0:
            return True
        error = self._fail("open", proc.stderr)
        if error.kind == "no-repository":
            return False
        raise error

    def init(self, *, copy_chunker_from: Restic | None = None) -> None:
        args = ["init"]
        if copy_chunker_from is not None:
            # Same chunker parameters as the source: `restic copy` then deduplicates.
            args += ["--from-repo", copy_chunker_from.repository, "--from-password-file",
                     copy_chunker_from.password_file, "--copy-chunker-params"]
        self.run(*args, timeout=300)

    def is_local(self) -> bool:
        return "://" not in self.repository and not self.repository.startswith(("s3:", "sftp:", "rest:", "rclone:"))

    def ensure(self, *, copy_chunker_from: Restic | None = None) -> bool:
        """Open the repository, creating it when there is none. True when created.

        A local repository whose ``config`` file is there is taken as it is, without a restic
        process: each one derives the key with scrypt first (~0.5 s of CPU), and the run's first
        restic command (its first backup) opens the repository anyway, failing with the same
        classified error (wrong password, corrupt) before anything is stored."""
        if self.is_local() and os.path.isfile(os.path.join(self.repository, "config")):
            return False
        if self.exists():
            return False
        self.init(copy_chunker_from=copy_chunker_from)
        return True

    # -- streams -----------------------------------------------------------------------------
    def backup_stream(self, filename: str, tags: list[str], produce: Callable[[HashingWriter], Any]) -> dict:
        """``produce(writer)`` writes one file's content, which restic stores as
        ``/<filename>`` in a new snapshot. Returns its id, size and sha256."""
        args = ["backup", "--stdin", "--stdin-filename", filename, "--host", self.host, "--json", "--quiet"]
        for tag in tags:
            args += ["--tag", tag]
        proc = subprocess.Popen(self.argv(*args), env=self._env, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out: list[bytes] = []
        err: list[bytes] = []
        threads = [_drain(proc.stdout, out), _drain(proc.stderr, err)]  # type: ignore[arg-type]
        writer = HashingWriter(proc.stdin)  # type: ignore[arg-type]
        produced: Any = None
        producer_error: BaseException | None = None
        try:
            produced = produce(writer)
        except BrokenPipeError:
            producer_error = None  # restic died: its own error below says why
        except BaseException as exc:  # noqa: BLE001 - re-raised after restic is stopped
            producer_error = exc
            proc.terminate()
        finally:
            with contextlib.suppress(BrokenPipeError, OSError):
                proc.stdin.close()  # type: ignore[union-attr]
        code = proc.wait()
        for thread in threads:
            thread.join(timeout=30)
        stderr = b"".join(err).decode(errors="replace")
        if code != 0:
            error = self._fail("backup", stderr)
            if producer_error is not None and error.kind == "error":
                raise producer_error
            raise error
        if producer_error is not None:
            raise producer_error
        summary = {}
        for line in b"".join(out).decode().splitlines():
            with contextlib.suppress(ValueError):
                message = json.loads(line)
                if message.get("message_type") == "summary":
                    summary = message
        if not summary.get("snapshot_id"):
            raise ResticError(f"restic backup of {filename} printed no snapshot id ({last_lines(stderr)})")
        return {
            "snapshot": summary["snapshot_id"],
            "file": f"/{filename}",
            "bytes": writer.size,
            "sha256": writer.sha256.hexdigest(),
            "data_added": summary.get("data_added", 0),
            "produced": produced,
        }

    def backup_paths(self, paths: list[str], tags: list[str], timeout: float | None = None) -> dict[str, Any]:
        """``restic backup`` of files and directories: restic picks the newest snapshot of the
        same paths and host as the parent and re-reads only files whose mtime, ctime, inode or
        size changed. Returns the snapshot id and restic's own counters."""
        args = ["backup", "--host", self.host, "--json", "--quiet"]
        for tag in tags:
            args += ["--tag", tag]
        proc = self.run(*args, *paths, timeout=timeout)
        summary: dict[str, Any] = {}
        for line in proc.stdout.splitlines():
            with contextlib.suppress(ValueError):
                message = json.loads(line)
                if message.get("message_type") == "summary":
                    summary = message
        if not summary.get("snapshot_id"):
            raise ResticError(f"restic backup of {paths} printed no snapshot id ({last_lines(proc.stderr)})")
        return {"snapshot": summary["snapshot_id"],
                **{k: summary.get(k, 0) for k in ("files_new", "files_changed", "files_unmodified",
                                                   "data_added", "total_files_processed",
                                                   "total_bytes_processed")}}

    @contextlib.contextmanager
    def dump(self, snapshot: str, filename: str) -> Iterator[IO[bytes]]:
        """The content of ``/<filename>`` in ``snapshot``, as a stream."""
        proc = subprocess.Popen(self.argv("dump", snapshot, f"/{filename}"), env=self._env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        err: list[bytes] = []
        thread = _drain(proc.stderr, err)  # type: ignore[arg-type]
        try:
            yield proc.stdout  # type: ignore[misc]
        except BaseException:
            proc.kill()
            raise
        finally:
            with contextlib.suppress(OSError):
                rest = proc.stdout.read()  # type: ignore[union-attr]
                del rest
            code = proc.wait()
            thread.join(timeout=30)
        if code != 0:
            raise self._fail("dump", b"".join(err).decode(errors="replace"))

    def read_sha256(self, snapshot: str, filename: str) -> tuple[str, int]:
        digest, size = hashlib.sha256(), 0
        with self.dump(snapshot, filename) as stream:
            for chunk in iter(lambda: stream.read(CHUNK), b""):
                digest.update(chunk)
                size += len(chunk)
        return digest.hexdigest(), size

    def read_bytes(self, snapshot: str, filename: str) -> bytes:
        with self.dump(snapshot, filename) as stream:
            return stream.read()

    # -- snapshots, check, retention ---------------------------------------------------------
    def snapshots(self, *tags: str) -> list[dict]:
        args = ["snapshots", "--host", self.host]
        for tag in tags:
            args += ["--tag", tag]
        return self.json(*args, timeout=600) or []

    def check(self, read_data_subset: str | None) -> subprocess.CompletedProcess:
        args = ["check"]
        if read_data_subset:
            args.append(f"--read-data-subset={read_data_subset}")
        return self.run(*args, check=False)

    def forget_plan(self, keep_args: list[str], tag: str) -> list[dict]:
        """restic's own policy engine, dry run: which ``tag`` snapshots it would keep/remove."""
        return self.json("forget", "--dry-run", "--host", self.host, "--tag", tag, "--group-by", "host",
                         *keep_args, timeout=600) or []

    def forget(self, snapshot_ids: list[str]) -> None:
        for start in range(0, len(snapshot_ids), 100):
            self.run("forget", *snapshot_ids[start:start + 100], timeout=600)

    def prune(self) -> None:
        self.run("prune")

    def copy_from(self, source: Restic, snapshot_ids: list[str]) -> None:
        self.run("copy", "--from-repo", source.repository, "--from-password-file", source.password_file,
                 *snapshot_ids)

    def version(self) -> str:
        proc = subprocess.run(["restic", "version"], capture_output=True, text=True, env=self._env)
        return proc.stdout.strip()
