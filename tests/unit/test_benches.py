"""The bench scripts stay runnable: they are not run by any tier (they print figures and
assert nothing), so an API they call can change under them unnoticed (an `extract()` that
took limits, a word list that shrank). Each must at least import and parse its options, and
the corpus the embedding benches share must still extract and chunk."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

BENCHES = sorted(p.name for p in (REPO_ROOT / "bench").glob("*.py"))
# No options to parse (positional arguments, or none): imported instead.
NO_OPTIONS = sorted(name for name in BENCHES if "argparse" not in (REPO_ROOT / "bench" / name).read_text())


def test_there_are_benches():
    assert "app_ingest_search.py" in BENCHES and len(BENCHES) >= 5


@pytest.mark.parametrize("name", [b for b in BENCHES if b not in NO_OPTIONS])
def test_a_bench_imports_and_parses_its_options(name):
    result = subprocess.run([sys.executable, str(Path("bench") / name), "--help"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage:" in result.stdout


@pytest.mark.parametrize("name", NO_OPTIONS)
def test_a_bench_without_options_imports(name):
    module = f"bench.{name.removesuffix('.py')}"
    result = subprocess.run([sys.executable, "-c", f"import {module}"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_the_embedding_benches_corpus_extracts_and_chunks():
    sys.path.insert(0, str(REPO_ROOT))
    from bench.app_ingest_search import WORDS, bench_chunks

    chunks = bench_chunks()
    assert len(chunks) >= 24 and all(chunk.strip() for chunk in chunks)
    assert len(set(chunks)) == len(chunks)
    assert len(WORDS) >= 2  # embeddings_int8's 24 queries index it modulo its length
