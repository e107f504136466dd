"""The users' CI workflow's supply-chain job (issue 17): pip-audit on the app's lock and the
bundle's own, judged against the allow-list (govstack/supply_chain.py).

The allow-list logic runs offline on pip-audit reports shaped like its JSON output. The
workflow's own command, and pip-audit against a known-vulnerable pin, run for real against
PyPI's vulnerability data; they skip, saying so, only when that service does not answer
here."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import tomllib
import urllib.error
import urllib.request
from functools import cache
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from govstack import supply_chain as sc

REPO = Path(__file__).resolve().parents[2]
WORKFLOW = REPO / ".github" / "workflows" / "deploy.yml"
TODAY = dt.date(2026, 12, 5)
# A release PyPI records vulnerabilities for (CVE-2019-10906, sandbox escape; fixed in 2.10.1).
KNOWN_VULNERABLE = ("jinja2", "2.10")


@cache
def vulnerability_service_problem() -> str | None:
    """None when PyPI's per-release JSON (where pip-audit's default service reads each pin's
    vulnerabilities) answers with vulnerabilities for a release known to have them; else why not."""
    name, version = KNOWN_VULNERABLE
    url = f"https://pypi.org/pypi/{name}/{version}/json"
    try:
        with urllib.request.urlopen(url, timeout=20) as response:  # noqa: S310 - a fixed https URL
            record = json.load(response)
    except urllib.error.HTTPError as error:
        return f"PyPI's vulnerability data is unreachable from here: GET {url} -> HTTP {error.code}"
    except (urllib.error.URLError, TimeoutError, OSError) as error:
        return f"PyPI's vulnerability data is unreachable from here: GET {url} -> {error}"
    if not record.get("vulnerabilities"):
        return f"PyPI's vulnerability data is unreachable from here: GET {url} lists no vulnerabilities"
    return None


def needs_vulnerability_service() -> None:
    problem = vulnerability_service_problem()
    if problem is not None:
        pytest.skip(problem)


# -- the allow-list, offline ------------------------------------------------------------------

def report(*dependencies: dict) -> dict:
    return {"dependencies": list(dependencies), "fixes": []}


def dep(name: str, version: str, *vulns: dict) -> dict:
    return {"name": name, "version": version, "vulns": list(vulns)}


def vuln(vid: str, *aliases: str, fixed: tuple[str, ...] = ("9.9",)) -> dict:
    return {"id": vid, "aliases": list(aliases), "fix_versions": list(fixed), "description": "..."}


def allow(tmp_path: Path, text: str) -> list[sc.Allowance]:
    path = tmp_path / "allow.toml"
    path.write_text(text)
    return sc.load_allow_list(path)


ENTRY = """
[[allow]]
package = "Demo_Pkg"
id = "CVE-2026-0001"
reason = "The parser it affects is never given untrusted input here."
expires = 2027-01-31
"""


def test_a_known_vulnerable_pin_fails_unless_an_entry_names_it(tmp_path):
    reports = {"app/requirements.txt": report(dep("demo-pkg", "1.0", vuln("GHSA-aaaa", "CVE-2026-0001")),
                                              dep("clean", "2.0"))}
    failed = sc.judge(reports, [], TODAY)
    assert not failed.ok
    assert failed.failures == ["app/requirements.txt: demo-pkg 1.0 has GHSA-aaaa (CVE-2026-0001; fixed in: 9.9)"]
    # matched by an alias and the normalized package name
    passed = sc.judge(reports, allow(tmp_path, ENTRY), TODAY)
    assert passed.ok and passed.unused == []
    assert "never given untrusted input" in passed.allowed[0] and "until 2027-01-31" in passed.allowed[0]


def test_an_entry_names_one_package_and_one_vulnerability(tmp_path):
    entries = allow(tmp_path, ENTRY)
    other_package = {"l": report(dep("other", "1.0", vuln("CVE-2026-0001")))}
    other_vuln = {"l": report(dep("demo-pkg", "1.0", vuln("CVE-2026-0002")))}
    assert not sc.judge(other_package, entries, TODAY).ok
    verdict = sc.judge(other_vuln, entries, TODAY)
    assert not verdict.ok and verdict.unused == ["Demo_Pkg CVE-2026-0001"]


def test_an_expired_entry_fails_the_run_even_if_nothing_matches_it(tmp_path):
    entries = allow(tmp_path, ENTRY)
    later = dt.date(2027, 2, 1)
    verdict = sc.judge({"l": report(dep("demo-pkg", "1.0", vuln("CVE-2026-0001")))}, entries, later)
    assert len(verdict.failures) == 2
    assert "expired on 2027-01-31" in verdict.failures[0] and "demo-pkg 1.0 has CVE-2026-0001" in verdict.failures[1]
    assert not sc.judge({"l": report(dep("clean", "1.0"))}, entries, later).ok
    assert sc.judge({"l": report(dep("clean", "1.0"))}, entries, dt.date(2027, 1, 31)).ok


def test_a_package_that_was_not_audited_fails_unless_an_entry_says_why(tmp_path):
    skipped = {"name": "local-model", "skip_reason": "Dependency not found on PyPI and could not be audited"}
    reports = {"l": report(dep("clean", "1.0"), skipped)}
    verdict = sc.judge(reports, [], TODAY)
    assert verdict.failures == [
        "l: local-model ? was not audited (Dependency not found on PyPI and could not be audited); "
        "an allow-list entry with id 'not-audited' can say why that is acceptable"]
    entries = allow(tmp_path, '[[allow]]\npackage = "local-model"\nid = "not-audited"\n'
                              'reason = "Built here from our own source; no PyPI record."\nexpires = 2027-06-30\n')
    assert sc.judge(reports, entries, TODAY).ok
    assert not sc.judge({"l": report()}, entries, TODAY).ok, "a lock with nothing audited in it fails"


@pytest.mark.parametrize(("text", "message"), [
    ('[[allow]]\npackage = "x"\nid = "CVE-1"\nexpires = 2027-01-01\n', "missing reason"),
    ('[[allow]]\npackage = "x"\nid = "CVE-1"\nreason = "fine, really"\n', "missing expires"),
    ('[[allow]]\npackage = "x"\nid = "CVE-1"\nreason = "fine, really"\nexpires = "soon"\n', "must be a TOML date"),
    ('[[allow]]\npackage = "x"\nid = "CVE-1"\nreason = "ok"\nexpires = 2027-01-01\n', "must say why"),
    ('[[allow]]\npackage = "x"\nid = "CVE-1"\nreason = "fine, really"\nexpires = 2027-01-01\nby = "me"\n',
     "unknown keys"),
    ('[[ignore]]\npackage = "x"\n', "unknown tables"),
    ('[[allow]\n', "not TOML"),
])
def test_a_malformed_allow_list_is_refused_naming_the_entry(tmp_path, text, message):
    with pytest.raises(sc.SupplyChainError, match=message):
        allow(tmp_path, text)


def test_the_repositorys_allow_list_is_valid_and_current():
    for entry in sc.load_allow_list(sc.ALLOW_LIST):
        assert entry.expires >= dt.date.today(), f"{entry.package} {entry.id} expired: fix the pin or renew it"


# -- the locks ---------------------------------------------------------------------------------

def test_the_bundles_lock_pins_every_runtime_dependency_exactly():
    pins = sc.read_lock(sc.BUNDLE_LOCK)
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    for text in declared:
        requirement = Requirement(text)
        name = sc.normalize(requirement.name)
        assert name in pins, f"{name} is a dependency of the bundle but not in {sc.BUNDLE_LOCK.name}"
        assert requirement.specifier.contains(pins[name], prereleases=True), (name, pins[name], str(requirement))
    assert list(pins) == sorted(pins)


def test_the_bundles_lock_is_what_the_tested_environment_runs():
    """Regenerated from this venv it is unchanged (python -m govstack.supply_chain lock)."""
    assert sc.read_lock(sc.BUNDLE_LOCK) == sc.runtime_closure(), (
        f"{sc.BUNDLE_LOCK.name} differs from the venv's packages: regenerate it (python -m govstack.supply_chain lock)")


def test_the_dev_lock_is_what_the_tested_environment_runs_and_agrees_with_the_bundles():
    dev = sc.read_lock(sc.DEV_LOCK)
    assert dev == sc.dev_closure(), (
        f"{sc.DEV_LOCK.name} differs from the venv's packages: regenerate it (python -m govstack.supply_chain lock)")
    runtime = sc.read_lock(sc.BUNDLE_LOCK)
    assert {name: dev[name] for name in runtime} == runtime
    assert list(dev) == sorted(dev)


def test_make_venv_installs_under_both_locks():
    recipe = (REPO / "Makefile").read_text()
    assert f"-c {sc.BUNDLE_LOCK.name} -c {sc.DEV_LOCK.name} -e '.[dev]'" in recipe
    assert f"-c {sc.DEV_LOCK.name} --upgrade pip" in recipe


# -- the workflow's job, executed ----------------------------------------------------------------

def workflow_job() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())["jobs"]["supply-chain"]


def test_the_workflow_audits_both_locks_with_the_pinned_pip_audit():
    runs = [step.get("run", "") for step in workflow_job()["steps"]]
    assert "python -m pip install pip-audit==2.10.1" in runs
    dev = tomllib_dev()
    assert "pip-audit==2.10.1" in dev, "the workflow and the dev extra pin the same pip-audit"
    audit = next(run for run in runs if "govstack.supply_chain audit" in run)
    for lock in sc.LOCKS:
        assert str(lock.relative_to(REPO)) in audit


def tomllib_dev() -> list[str]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["dev"]


def run_as_the_workflow(command: str) -> subprocess.CompletedProcess:
    """A step's ``run`` in the repository, with this venv's python first on PATH."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(["bash", "-e", "-o", "pipefail", "-c", command], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=sc.PIP_AUDIT_TIMEOUT_S + 60)


def test_the_workflows_audit_step_passes_on_the_repositorys_locks():
    needs_vulnerability_service()
    steps = workflow_job()["steps"]
    audit = next(step["run"] for step in steps if "govstack.supply_chain audit" in step.get("run", ""))
    result = run_as_the_workflow(audit)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "supply-chain: ok" in result.stdout


def test_pip_audit_fails_the_run_on_a_known_vulnerable_pin(tmp_path):
    needs_vulnerability_service()
    name, version = KNOWN_VULNERABLE
    lock = tmp_path / "requirements.txt"
    lock.write_text(f"{name}=={version}\n")
    empty = tmp_path / "allow.toml"
    empty.write_text("")
    failed = run_as_the_workflow(f"python -m govstack.supply_chain audit {lock} --allow-list {empty}")
    assert failed.returncode == 1 and f"FAIL: {lock}: {name} {version} has " in failed.stdout, failed.stdout
    ids = [line.split(" has ", 1)[1].split(" ", 1)[0] for line in failed.stdout.splitlines() if " has " in line]
    entries = "".join(f'[[allow]]\npackage = "{name}"\nid = "{vid}"\nreason = "A test: the pin is never installed."\n'
                      f"expires = {dt.date.today() + dt.timedelta(days=1)}\n" for vid in ids)
    (tmp_path / "allowed.toml").write_text(entries)
    allowed = tmp_path / "allowed.toml"
    passed = run_as_the_workflow(f"python -m govstack.supply_chain audit {lock} --allow-list {allowed}")
    assert passed.returncode == 0 and "supply-chain: ok" in passed.stdout, passed.stdout


def test_a_pin_pypi_has_no_record_of_fails_the_real_run_instead_of_passing_unchecked(tmp_path):
    """pip-audit itself exits 0 ("No known vulnerabilities found") when it could audit nothing;
    the workflow's command does not (here for real: PyPI answers 404 for a name it never had)."""
    lock = tmp_path / "requirements.txt"
    lock.write_text("govstack-test-no-such-distribution==0.0.1\n")
    empty = tmp_path / "allow.toml"
    empty.write_text("")
    result = run_as_the_workflow(f"python -m govstack.supply_chain audit {lock} --allow-list {empty}")
    assert result.returncode != 0 and "supply-chain: ok" not in result.stdout, result.stdout + result.stderr
    if result.returncode == 1:
        assert "govstack-test-no-such-distribution ? was not audited (Dependency not found on PyPI" in result.stdout
