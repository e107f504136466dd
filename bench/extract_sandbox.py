"""What the extraction sandbox costs: extraction throughput on the normal corpus in-process and
in the sandbox (app/govstack_app/sandbox.py), in one run, as a ratio.

    .venv/bin/python bench/extract_sandbox.py [--rounds N] [--copies C]

Both sides do the same work: read the document from a file, apply every rule, extract and
chunk (the sandbox adds its child process, the caps and the JSON round trip). The rounds
interleave the two sides and alternate which goes first, so load from elsewhere on the host
hits both alike; throughput is the median round's. CPU time is counted too (for the sandbox:
this process plus the forkserver and the children it reaped), which a busy host disturbs less.
Prints; asserts nothing. Issue 11's budget: the sandbox may cost at most 20 %.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "app"))

from govstack_app.extract import ExtractionLimits, sniff  # noqa: E402
from govstack_app.sandbox import Sandbox, SandboxLimits, extract_chunks  # noqa: E402
from govstack_app.settings import Settings  # noqa: E402

from tests.support.corpus import normal_corpus  # noqa: E402

BUDGET = 0.20


def forkserver_cpu_seconds() -> float:
    """The forkserver's own CPU time plus that of the children it has reaped."""
    from multiprocessing import forkserver

    pid = forkserver._forkserver._forkserver_pid  # noqa: SLF001 - no public accessor
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return (utime + stime + cutime + cstime) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--copies", type=int, default=4, help="documents of each type in the corpus")
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    settings = Settings()  # the app's defaults: the limits a deployment gets unless it sets others
    limits = ExtractionLimits.from_settings(settings)
    sandbox = Sandbox(SandboxLimits.from_settings(settings), limits)
    with tempfile.TemporaryDirectory() as tmp:
        docs = []
        for name, data in normal_corpus(copies=args.copies):
            path = Path(tmp) / name
            path.write_bytes(data)
            docs.append((str(path), sniff(data, name), len(data)))
        total_bytes = sum(size for _, _, size in docs)
        kinds = Counter(Path(p).suffix.lstrip(".") for p, _, _ in docs)

        def in_process() -> None:
            for path, content_type, _ in docs:
                with open(path, "rb") as f:
                    extract_chunks(f.read(), content_type, limits)

        def sandboxed() -> None:
            for path, content_type, _ in docs:
                sandbox.extract_chunks(path, content_type)

        sandbox.warm_up()
        in_process()  # warm both sides once
        sandboxed()
        walls: dict[str, list[float]] = {"in-process": [], "sandbox": []}
        cpu = {"in-process": 0.0, "sandbox": 0.0}
        server_before = forkserver_cpu_seconds()
        for round_no in range(args.rounds):
            order = [("in-process", in_process), ("sandbox", sandboxed)]
            for name, run in order if round_no % 2 == 0 else order[::-1]:
                wall, process = time.perf_counter(), time.process_time()
                run()
                walls[name].append(time.perf_counter() - wall)
                cpu[name] += time.process_time() - process
        children = sandbox.children_started
        sandbox.close()  # its last child is reaped, so its CPU time is counted
        cpu["sandbox"] += forkserver_cpu_seconds() - server_before

    n = len(docs) * args.rounds
    median = {name: statistics.median(values) for name, values in walls.items()}
    rate = {name: len(docs) / median[name] for name in median}
    ratio = rate["sandbox"] / rate["in-process"]
    best_ratio = min(walls["in-process"]) / min(walls["sandbox"])
    cpu_ratio = cpu["sandbox"] / cpu["in-process"]
    print(
        f"normal corpus: {len(docs)} documents, {total_bytes / 1e6:.2f} MB "
        f"({', '.join(f'{k} {v}' for k, v in sorted(kinds.items()))}), {args.rounds} interleaved rounds; "
        f"host load average {load_before:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    for name in ("in-process", "sandbox"):
        print(
            f"{name:>10}: {rate[name]:6.1f} documents/s, {total_bytes / median[name] / 1e6:5.2f} MB/s "
            f"(median round {median[name]:.3f} s), CPU {1000 * cpu[name] / n:.1f} ms per document"
        )
    print(
        f"throughput ratio sandbox/in-process: {ratio:.2f} median round, {best_ratio:.2f} best round (cost "
        f"{100 * (1 - ratio):.0f} % / {100 * (1 - best_ratio):.0f} %, budget {100 * BUDGET:.0f} %); CPU ratio "
        f"{cpu_ratio:.2f}; {children} child processes for {n + len(docs)} documents"
    )


if __name__ == "__main__":
    main()
