"""Every rendered file of every inventory host, both lanes, byte for byte as
stored under tests/unit/golden/ (see tests/unit/golden.py; regenerate with
`make golden` only when a change means to alter what hosts get)."""

from __future__ import annotations

import difflib

import pytest

from tests.unit import golden


@pytest.mark.parametrize("case", golden.case_names())
def test_renders_match_the_golden_files(case):
    want = golden.stored(case)
    got = golden.rendered(case)
    assert want, f"no golden files for {case}: run `make golden`"
    assert sorted(got) == sorted(want), f"{case}: the set of rendered files changed (`make golden` if intended)"
    for path in sorted(got):
        if got[path] != want[path]:
            diff = "".join(difflib.unified_diff(want[path].splitlines(True), got[path].splitlines(True),
                                                f"golden/{case}/{path}", "rendered", n=2))
            pytest.fail(f"{case}: {path} differs from its golden file (`make golden` if intended):\n{diff[:4000]}")
