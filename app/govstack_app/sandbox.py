"""Extraction in a sandbox: every document is parsed, and its text chunked, in a child process,
under caps on memory (RLIMIT_AS), CPU time (RLIMIT_CPU) and wall-clock time, without the right
to write files (RLIMIT_FSIZE 0) or start processes (RLIMIT_NPROC 0). Whatever a document does
to the child, the worker only learns a cause and carries on.

Children come from multiprocessing's forkserver: a fresh, single-threaded interpreter that has
imported and warmed up the parsers once (sandbox_zygote.py), so no child inherits the worker's
threads, sockets, model weights or secrets. Forking that interpreter costs ~10 ms of CPU on the
reference host, as much as extracting a typical document, so a child is reused for the next
document as long as the last one went well: each job sets fresh caps (the CPU cap counts from
the job's start, the memory cap from what the child has mapped then). A child is retired after
any failure (a rule refused the document, an exception, a cap), after JOBS_PER_CHILD documents,
or once it has grown by half its memory cap, so one document's leftovers cannot pile up.
bench/extract_sandbox.py measures what the sandbox costs.

Results travel back as JSON, never pickle: a parser exploited into running code in the child
gets no way to run code in the worker.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import multiprocessing.connection
import os
import resource
import signal
import sys
import threading
import time
import types
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import structlog

from .chunking import Chunk, chunk_document
from .extract import EmptyDocument, ExtractionError, ExtractionLimits, TooLarge, UnsupportedType, extract

log = structlog.get_logger(__name__)

# Imported once by the forkserver: the parsers, warmed up, so no child pays for them.
PRELOAD = ["govstack_app.sandbox_zygote"]
EXIT_MEMORY = 86  # the child ran out of memory and could not even report it
JOBS_PER_CHILD = 50
JOIN_GRACE_S = 5.0
_RULE_ERRORS: dict[str, type[ExtractionError]] = {
    cls.__name__: cls for cls in (ExtractionError, UnsupportedType, TooLarge, EmptyDocument)
}
_MEMORY_PAYLOAD = b'{"ok": false, "cause": "memory"}'
_CRASH_SIGNALS = {signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE, signal.SIGABRT}


@dataclass(frozen=True)
class SandboxLimits:
    memory_bytes: int  # address space a child may add to what the forkserver already mapped
    cpu_seconds: int
    timeout_seconds: float

    @classmethod
    def from_settings(cls, settings: Any) -> SandboxLimits:
        return cls(
            memory_bytes=settings.extract_memory_bytes,
            cpu_seconds=settings.extract_cpu_seconds,
            timeout_seconds=float(settings.extract_timeout_seconds),
        )


class SandboxFailure(Exception):
    """The child ended without a result. ``cause`` is one of memory | cpu_time | timeout |
    crashed | killed | exception | exited; ``permanent`` when trying again cannot help (the same
    bytes meet the same limit)."""

    def __init__(self, cause: str, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.cause = cause
        self.permanent = permanent


class ExtractionInterrupted(Exception):
    """The worker was asked to stop while a child worked; the child is gone, the document untouched."""


def extract_chunks(data: bytes, content_type: str, limits: ExtractionLimits) -> list[Chunk]:
    """What a child computes, callable in-process (tests, the benchmark's baseline)."""
    return chunk_document(extract(data, content_type, limits), content_type)


# ---------------------------------------------------------------------------------------------
# the child
# ---------------------------------------------------------------------------------------------
def _mapped_bytes() -> int:
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _forbid_files_and_processes() -> None:
    for limit in (resource.RLIMIT_CORE, resource.RLIMIT_FSIZE, resource.RLIMIT_NPROC):
        resource.setrlimit(limit, (0, 0))


def _cap_job(memory_bytes: int, cpu_seconds: int) -> None:
    """This job's caps, counted from now. Only the soft limits: the next job raises them again
    (a child whose job failed is never reused)."""
    infinity = resource.RLIM_INFINITY
    resource.setrlimit(resource.RLIMIT_AS, (_mapped_bytes() + memory_bytes, infinity))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    resource.setrlimit(resource.RLIMIT_CPU, (int(usage.ru_utime + usage.ru_stime) + 1 + cpu_seconds, infinity))


def _run_job(job: dict[str, Any]) -> tuple[bytes, bool]:
    """(JSON answer, whether it is a success)."""
    try:
        _cap_job(job["memory_bytes"], job["cpu_seconds"])
        limits = ExtractionLimits(**job["limits"])
        with open(job["path"], "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > limits.max_upload:
                raise TooLarge(f"document is over the {limits.max_upload}-byte limit")
            data = f.read(size)  # read(n) allocates n up front: never more than the file
        chunks = extract_chunks(data, job["content_type"], limits)
        del data
        answer = {"ok": True, "chunks": [[c.text, c.page, c.section] for c in chunks], "mapped": _mapped_bytes()}
        return json.dumps(answer, ensure_ascii=False).encode("utf-8", "surrogatepass"), True
    except MemoryError:
        return _MEMORY_PAYLOAD, False
    except ExtractionError as exc:
        answer = {"ok": False, "cause": "rules", "type": type(exc).__name__, "message": str(exc)[:2000]}
    except BaseException as exc:  # noqa: BLE001 - the document made a parser fail: report it
        answer = {"ok": False, "cause": "exception", "message": f"{type(exc).__name__}: {exc}"[:2000]}
    return json.dumps(answer).encode(), False


def _child_main(
    job_conn: multiprocessing.connection.Connection, result_conn: multiprocessing.connection.Connection
) -> None:
    _forbid_files_and_processes()
    while True:
        try:
            job = json.loads(job_conn.recv_bytes(1 << 20))
        except (EOFError, OSError):
            return  # retired, or the worker went away
        try:
            answer, ok = _run_job(job)
        except MemoryError:  # even building the answer failed
            answer, ok = _MEMORY_PAYLOAD, False
        try:
            result_conn.send_bytes(answer)
        except MemoryError:
            os._exit(EXIT_MEMORY)
        if not ok:
            return


# ---------------------------------------------------------------------------------------------
# the parent
# ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _bare_main_module() -> Iterator[None]:
    """multiprocessing makes each child re-run the parent's __main__ (the console script, a
    script read from stdin, pytest...), which a child of the sandbox never needs: it runs
    govstack_app.sandbox._child_main. While a child starts, __main__ is a bare module, so
    nothing of the parent's entry point is re-run (and a `python3 -` parent works at all)."""
    real = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = real


@dataclass
class _Child:
    process: Any  # multiprocessing.context.ForkServerProcess
    job: multiprocessing.connection.Connection
    result: multiprocessing.connection.Connection
    jobs: int = 0
    mapped_at_start: int | None = None

    def retire(self) -> None:
        """Close its job pipe: it exits on EOF, and the forkserver reaps it."""
        self.job.close()
        self.result.close()

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(JOIN_GRACE_S)
        self.retire()


class Sandbox:
    """Runs extract+chunk for one document at a time in a capped child process."""

    def __init__(self, sandbox: SandboxLimits, limits: ExtractionLimits, jobs_per_child: int = JOBS_PER_CHILD) -> None:
        self.sandbox = sandbox
        self.limits = limits
        self.jobs_per_child = jobs_per_child
        self._ctx = multiprocessing.get_context("forkserver")
        self._ctx.set_forkserver_preload(PRELOAD)
        self._child: _Child | None = None
        self._lock = threading.Lock()
        self._result_cap = 3 * limits.max_text + (1 << 20)
        self.children_started = 0
        self.busy_pid: int | None = None  # the child extracting right now (tests, diagnostics)

    def _fork(self) -> _Child:
        job_r, job_w = self._ctx.Pipe(duplex=False)
        result_r, result_w = self._ctx.Pipe(duplex=False)
        process = self._ctx.Process(target=_child_main, args=(job_r, result_w), name="govstack-extract", daemon=True)
        with _bare_main_module():
            process.start()
        job_r.close()
        result_w.close()
        self.children_started += 1
        return _Child(process, job_w, result_r)

    def warm_up(self) -> None:
        """Start the forkserver and the first child now rather than on the first document."""
        with self._lock:
            if self._child is None:
                self._child = self._fork()

    def close(self) -> None:
        with self._lock:
            if self._child is not None:
                self._child.kill()
                self._child = None

    def _hand_job(self, job: bytes) -> _Child:
        for _ in range(2):
            child, self._child = self._child, None
            if child is None or not child.process.is_alive():
                if child is not None:
                    child.kill()
                child = self._fork()
            try:
                child.job.send_bytes(job)
                return child
            except OSError:  # it died while idle (killed from outside): fork another
                child.kill()
        raise SandboxFailure("exited", "extraction process could not be started", permanent=False)

    def extract_chunks(self, path: str, content_type: str, stop: threading.Event | None = None) -> list[Chunk]:
        """Chunks of the document at `path`, extracted in a child. Raises the extraction's own
        ExtractionError (a rule refused the document), SandboxFailure (the child died or ran
        out of time) or ExtractionInterrupted (`stop` was set)."""
        job = json.dumps(
            {
                "path": path,
                "content_type": content_type,
                "limits": self.limits.as_dict(),
                "memory_bytes": self.sandbox.memory_bytes,
                "cpu_seconds": self.sandbox.cpu_seconds,
            }
        ).encode()
        with self._lock:
            child = self._hand_job(job)
            self.busy_pid = child.process.pid
            try:
                result = json.loads(self._wait(child, stop))
            except BaseException:
                child.kill()
                raise
            finally:
                self.busy_pid = None
            child.jobs += 1
            if result.get("ok") and self._reusable(child, result.get("mapped", 0)):
                self._child = child
            else:
                child.retire()  # after a failure it has already exited
        return self._decode(result)

    def _reusable(self, child: _Child, mapped: int) -> bool:
        if child.mapped_at_start is None:
            child.mapped_at_start = mapped
        grown = mapped - child.mapped_at_start
        return child.jobs < self.jobs_per_child and grown < self.sandbox.memory_bytes // 2

    def _wait(self, child: _Child, stop: threading.Event | None) -> bytes:
        deadline = time.monotonic() + self.sandbox.timeout_seconds
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SandboxFailure(
                    "timeout",
                    f"extraction took longer than {self.sandbox.timeout_seconds:g} s (wall clock) and was killed",
                    permanent=False,
                )
            ready = multiprocessing.connection.wait([child.result, child.process.sentinel], min(remaining, 1.0))
            if child.result in ready or (ready and child.result.poll(0)):
                try:
                    return child.result.recv_bytes(self._result_cap)
                except EOFError:
                    pass  # died before answering: the exit status says why
                except OSError as exc:  # over the cap ("bad message length")
                    raise SandboxFailure(
                        "exception", f"extraction result over {self._result_cap} bytes: {exc}", permanent=True
                    ) from None
            if child.process.sentinel in ready or not child.process.is_alive():
                child.process.join(JOIN_GRACE_S)
                raise self._death(child.process.exitcode)
            if stop is not None and stop.is_set():
                raise ExtractionInterrupted("the worker is stopping")

    def _death(self, exitcode: int | None) -> SandboxFailure:
        memory = f"{self.sandbox.memory_bytes // (1 << 20)} MiB"
        if exitcode == EXIT_MEMORY:
            return SandboxFailure("memory", f"extraction ran out of memory (limit {memory})", permanent=True)
        if exitcode is not None and exitcode < 0:
            sig = signal.Signals(-exitcode)
            if sig == signal.SIGXCPU:
                return SandboxFailure(
                    "cpu_time", f"extraction used more than {self.sandbox.cpu_seconds} s of CPU time", permanent=True
                )
            if sig in _CRASH_SIGNALS:
                return SandboxFailure("crashed", f"extraction crashed ({sig.name})", permanent=True)
            return SandboxFailure(
                "killed", f"extraction process was killed by {sig.name} (memory limit {memory})", permanent=False
            )
        return SandboxFailure(
            "exited", f"extraction process exited with code {exitcode} and no result", permanent=False
        )

    def _decode(self, result: dict[str, Any]) -> list[Chunk]:
        if result.get("ok"):
            return [Chunk(i, text, page, section) for i, (text, page, section) in enumerate(result["chunks"])]
        cause = result.get("cause")
        if cause == "rules":
            raise _RULE_ERRORS.get(result.get("type"), ExtractionError)(result.get("message", ""))
        if cause == "memory":
            raise self._death(EXIT_MEMORY)
        raise SandboxFailure("exception", result.get("message", "extraction failed"), permanent=True)
