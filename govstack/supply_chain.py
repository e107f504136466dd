"""The supply-chain checks of the users' CI workflow (.github/workflows/deploy.yml, job
``supply-chain``), runnable anywhere: ``python -m govstack.supply_chain``.

``audit LOCK...``: ``pip-audit`` on each lock (exact pins, ``--no-deps``: nothing is
resolved or installed) against PyPI's vulnerability data, then the allow-list
(:data:`ALLOW_LIST`): a known vulnerability of a pinned package fails the run unless an
entry names it (its id or one of its aliases, and the package) with a reason and an
expiry date that has not passed. A package that could not be audited (PyPI has no record
of it, or the service did not answer) fails too, unless an entry with the id
``not-audited`` gives the reason: a run that checked nothing must not pass. An entry past
its expiry fails the run (renew it with a new reason or fix the pin); an entry that
matched nothing is named, so it can be removed.

``lock``: writes the bundle's own lock (:data:`BUNDLE_LOCK`): the exact versions of
govstack-deploy's runtime dependencies, and theirs, as installed in this environment; and
the test tiers' lock (:data:`DEV_LOCK`): the same for the ``dev`` extra, so that a release
on PyPI (a linter's new rule, a library's new major) cannot change what CI runs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
ALLOW_LIST = REPO_ROOT / ".github" / "pip-audit-allow.toml"
BUNDLE_LOCK = REPO_ROOT / "requirements-lock.txt"
DEV_LOCK = REPO_ROOT / "requirements-dev-lock.txt"
# What the workflow audits: the app's lock and the bundle's own.
LOCKS = (REPO_ROOT / "app" / "requirements.txt", BUNDLE_LOCK)
NOT_AUDITED = "not-audited"
PIP_AUDIT_TIMEOUT_S = 600


class SupplyChainError(RuntimeError):
    pass


def normalize(name: str) -> str:
    """PEP 503's normal form of a distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Allowance:
    package: str
    id: str
    reason: str
    expires: dt.date

    def matches(self, package: str, ids: set[str]) -> bool:
        return normalize(self.package) == normalize(package) and self.id in ids


def load_allow_list(path: Path) -> list[Allowance]:
    """The entries of ``path`` (``[[allow]]`` tables: package, id, reason, expires); a missing
    file is an empty list, a malformed entry an error naming it."""
    if not path.exists():
        return []
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise SupplyChainError(f"{path}: not TOML: {error}") from error
    unknown = set(data) - {"allow"}
    if unknown:
        raise SupplyChainError(f"{path}: unknown tables {sorted(unknown)} (only [[allow]])")
    entries = []
    for number, entry in enumerate(data.get("allow", []), start=1):
        where = f"{path}: [[allow]] entry {number}"
        missing = [key for key in ("package", "id", "reason", "expires") if not entry.get(key)]
        if missing:
            raise SupplyChainError(f"{where}: missing {', '.join(missing)} (each entry names the package, the "
                                   "vulnerability id, why it is acceptable, and when that must be looked at again)")
        extra = set(entry) - {"package", "id", "reason", "expires"}
        if extra:
            raise SupplyChainError(f"{where}: unknown keys {sorted(extra)}")
        if not isinstance(entry["expires"], dt.date) or isinstance(entry["expires"], dt.datetime):
            raise SupplyChainError(f"{where}: expires must be a TOML date (e.g. 2027-01-31), not "
                                   f"{entry['expires']!r}")
        if len(str(entry["reason"]).strip()) < 10:
            raise SupplyChainError(f"{where}: the reason must say why (at least a sentence)")
        entries.append(Allowance(str(entry["package"]), str(entry["id"]), str(entry["reason"]).strip(),
                                 entry["expires"]))
    return entries


@dataclass
class Verdict:
    failures: list[str]
    allowed: list[str]
    unused: list[str]

    @property
    def ok(self) -> bool:
        return not self.failures


def judge(reports: dict[str, dict[str, Any]], allow: list[Allowance], today: dt.date) -> Verdict:
    """``reports``: lock name -> pip-audit's JSON report of it. What fails, what an entry allowed."""
    failures: list[str] = []
    allowed: list[str] = []
    used: set[Allowance] = set()
    for entry in allow:
        if entry.expires < today:
            failures.append(f"allow-list entry {entry.package} {entry.id} expired on {entry.expires} "
                            f"(reason was: {entry.reason}): fix the pin or renew the entry with a new reason")
    live = [entry for entry in allow if entry.expires >= today]

    def allowance(package: str, ids: set[str]) -> Allowance | None:
        return next((entry for entry in live if entry.matches(package, ids)), None)

    for lock, report in sorted(reports.items()):
        dependencies = report.get("dependencies", [])
        if not dependencies:
            failures.append(f"{lock}: pip-audit found no dependency in it")
        for dependency in dependencies:
            name, version = dependency["name"], dependency.get("version", "?")
            if "skip_reason" in dependency:
                entry = allowance(name, {NOT_AUDITED})
                if entry is None:
                    failures.append(f"{lock}: {name} {version} was not audited ({dependency['skip_reason']}); "
                                    f"an allow-list entry with id {NOT_AUDITED!r} can say why that is acceptable")
                else:
                    used.add(entry)
                    allowed.append(f"{lock}: {name} {version} not audited: {entry.reason} (until {entry.expires})")
                continue
            for vuln in dependency.get("vulns", []):
                ids = {vuln["id"], *vuln.get("aliases", [])}
                fixes = ", ".join(vuln.get("fix_versions", [])) or "none yet"
                entry = allowance(name, ids)
                if entry is None:
                    failures.append(f"{lock}: {name} {version} has {vuln['id']} "
                                    f"({', '.join(sorted(ids - {vuln['id']})) or 'no aliases'}; fixed in: {fixes})")
                else:
                    used.add(entry)
                    allowed.append(f"{lock}: {name} {version} {vuln['id']} allowed: {entry.reason} "
                                   f"(until {entry.expires})")
    unused = [f"{entry.package} {entry.id}" for entry in live if entry not in used]
    return Verdict(failures, allowed, unused)


def pip_audit(lock: Path, service: str = "pypi") -> dict[str, Any]:
    """pip-audit's JSON report of one lock (exact pins; nothing resolved or installed)."""
    result = subprocess.run(
        [sys.executable, "-m", "pip_audit", "-r", str(lock), "--no-deps", "--disable-pip", "--format", "json",
         "--progress-spinner", "off", "--vulnerability-service", service],
        capture_output=True, text=True, timeout=PIP_AUDIT_TIMEOUT_S, check=False,
    )
    # 0: nothing found, 1: vulnerabilities found; either way the report is on stdout.
    if result.returncode not in (0, 1) or not result.stdout.strip():
        raise SupplyChainError(f"pip-audit on {lock} failed ({result.returncode}): {result.stderr.strip()[-800:]}")
    return json.loads(result.stdout)


def audit(locks: list[Path], allow_list: Path, today: dt.date | None = None, service: str = "pypi") -> Verdict:
    allow = load_allow_list(allow_list)
    for lock in locks:
        if not lock.is_file():
            raise SupplyChainError(f"no lock {lock}")
    reports = {_display(lock): pip_audit(lock, service) for lock in locks}
    return judge(reports, allow, today or dt.date.today())


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


# -- the bundle's own lock ---------------------------------------------------------------------

LOCK_HEADER = """\
# govstack-deploy's runtime dependencies: the COMPLETE, exactly pinned set (the dependencies
# of pyproject.toml's [project] and theirs, not the dev extra), as the tests ran them. The
# users' CI workflow audits it (pip-audit, job supply-chain) beside the app's lock.
# Install with it: pip install -c requirements-lock.txt -e .
# Regenerate (in a venv made by `make venv`): python -m govstack.supply_chain lock
"""


def runtime_closure(distribution: str = "govstack-deploy", extras: frozenset[str] = frozenset()) -> dict[str, str]:
    """name -> installed version of every runtime dependency of ``distribution`` (with its
    ``extras``), transitively (extras are followed only where a requirement names them)."""
    from importlib import metadata

    from packaging.requirements import Requirement

    pins: dict[str, str] = {}
    queue: list[tuple[str, frozenset[str]]] = [(distribution, extras)]
    seen: set[tuple[str, frozenset[str]]] = set()
    while queue:
        name, extras = queue.pop()
        if (normalize(name), extras) in seen:
            continue
        seen.add((normalize(name), extras))
        dist = metadata.distribution(name)
        if name != distribution:
            pins[normalize(dist.metadata["Name"])] = dist.version
        for text in dist.requires or []:
            requirement = Requirement(text)
            marker = requirement.marker
            wanted = [{"extra": extra} for extra in extras] or [{"extra": ""}]
            if marker is not None and not any(marker.evaluate(env) for env in wanted):
                continue
            queue.append((requirement.name, frozenset(requirement.extras)))
    return dict(sorted(pins.items()))


DEV_LOCK_HEADER = """\
# The test tiers' environment: every package of govstack-deploy[dev], transitively, exactly
# pinned, as the tests ran them (runtime ones agree with requirements-lock.txt). `make venv`
# installs under both locks, so a release on PyPI cannot change what CI runs.
# Regenerate (in a venv made by `make venv`, after changing a pin): python -m govstack.supply_chain lock
"""


def dev_closure() -> dict[str, str]:
    return runtime_closure(extras=frozenset({"dev"}))


def write_lock(path: Path = BUNDLE_LOCK, dev_path: Path = DEV_LOCK) -> None:
    path.write_text(LOCK_HEADER + "".join(f"{name}=={version}\n" for name, version in runtime_closure().items()))
    dev_path.write_text(DEV_LOCK_HEADER + "".join(f"{name}=={version}\n" for name, version in dev_closure().items()))


def read_lock(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep or not version or " " in version:
            raise SupplyChainError(f"{path}: {line!r} is not an exact pin (name==version)")
        pins[normalize(name)] = version
    return pins


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m govstack.supply_chain", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("audit", help="pip-audit the locks, then the allow-list")
    run.add_argument("locks", nargs="*", type=Path, default=list(LOCKS))
    run.add_argument("--allow-list", type=Path, default=ALLOW_LIST)
    run.add_argument("--vulnerability-service", default="pypi", choices=["pypi", "osv"])
    commands.add_parser("lock", help=f"write {BUNDLE_LOCK.name} and {DEV_LOCK.name} from this environment")
    args = parser.parse_args(argv)
    try:
        if args.command == "lock":
            write_lock()
            print(f"wrote {BUNDLE_LOCK} and {DEV_LOCK}")
            return 0
        verdict = audit(args.locks, args.allow_list, service=args.vulnerability_service)
    except (SupplyChainError, subprocess.TimeoutExpired) as error:
        print(f"supply-chain: {error}", file=sys.stderr)
        return 2
    for line in verdict.allowed:
        print(f"allowed: {line}")
    for line in verdict.unused:
        print(f"note: allow-list entry {line} matched nothing: remove it")
    for line in verdict.failures:
        print(f"FAIL: {line}")
    audited = ", ".join(_display(lock) for lock in args.locks)
    print(f"supply-chain: {'ok' if verdict.ok else f'{len(verdict.failures)} problem(s)'} ({audited})")
    return 0 if verdict.ok else 1


if __name__ == "__main__":
    sys.exit(main())
