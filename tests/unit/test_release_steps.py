"""Pieces of the blue/green release and the restore that need no stack: the drain probe, the fault points."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from govstack import faults
from govstack.operations import edge_drain_command

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_the_drain_probe_does_not_find_its_own_command_line():
    """It looks for nginx workers "shutting down" in /proc/*/cmdline; its own
    shell's command line carries the pattern, so a literal pattern always
    matched and every drain waited its whole timeout. Here (no nginx) it must
    find nothing."""
    probe = re.search(r"exec -T nginx sh -c '(.*?)' >/dev/null", edge_drain_command("p", "f.yml", 30)).group(1)
    result = subprocess.run(["sh", "-c", probe], capture_output=True, text=True, timeout=30)
    # Non-zero: nothing found (1), or a process that ended while it read /proc (2).
    assert result.returncode != 0 and result.stdout.strip() == "", f"the probe found {result.stdout.strip()!r}"


def test_every_fault_point_is_a_step_of_the_release_in_order():
    source = (REPO_ROOT / "deploys" / "release.py").read_text()
    assert tuple(re.findall(r'^fault_point\("(\w+)"\)', source, re.M)) == faults.RELEASE_FAULT_POINTS


def test_every_restore_fault_point_is_a_step_of_the_restore_in_order():
    source = (REPO_ROOT / "govstack" / "backup" / "ops.py").read_text()
    # restore_postgres (the swap) is defined above restore(), which calls it between its two points.
    found = re.findall(r'crash_at\("(\w+)"\)', source)
    assert sorted(found) == sorted(faults.RESTORE_FAULT_POINTS) and len(found) == len(set(found))
    assert source.index("def restore_postgres") < source.index('crash_at("restore_before_swap")') < source.index(
        'ALTER DATABASE "{db}" RENAME TO "{kept}"')


def test_an_unknown_fault_point_is_refused(monkeypatch):
    monkeypatch.setenv(faults.FAULT_ENV, "after_swich")
    with pytest.raises(faults.FaultError, match="is not a fault point; choose one of before_start"):
        faults.wanted_fault()
    monkeypatch.setenv(faults.FAULT_ENV, "after_switch")
    assert faults.wanted_fault() == "after_switch"
    monkeypatch.delenv(faults.FAULT_ENV)
    assert faults.wanted_fault() is None


def test_the_release_record_keeps_the_settings_hash_of_each_release():
    from govstack.release import Release

    current = Release("green", "v2", previous=Release("blue", "v1", config_hash="aa"), config_hash="bb")
    assert Release.from_dict(json.loads(current.to_json())) == current
    assert current.without_previous() == Release("green", "v2", config_hash="bb")
    # A record written before releases carried it: no hash, so no kept-container rollback.
    old = Release.from_dict({"color": "blue", "version": "v0", "previous": None})
    assert old.config_hash is None


class _Host:
    """Answers the facts kept_color_unusable reads, as a host would."""

    def __init__(self, containers, desired=None, image_id="sha256:i"):
        self.facts = {"ComposeProject": {"desired": desired if desired is not None else {"api": "h1", "worker": "h2"},
                                         "containers": containers},
                      "ImageIds": {"govstack/app:v1": image_id},
                      "ContainerImageIds": {c["id"]: "sha256:i" for c in containers}}

    def get_fact(self, fact, **_):
        return self.facts[fact.__name__]


def _container(service, config_hash, image="govstack/app:v1"):
    return {"service": service, "state": "exited", "health": None, "config_hash": config_hash, "image": image,
            "id": f"id-{service}"}


@pytest.mark.parametrize(("host", "recorded_hash", "why"), [
    (_Host([_container("api", "h1"), _container("worker", "h2")]), "S", None),
    (_Host([_container("api", "h1"), _container("worker", "h2")]), None, "names no settings hash"),
    (_Host([_container("api", "h1"), _container("worker", "h2")]), "other", "the settings changed"),
    (_Host([_container("worker", "h2")]), "S", "the api container of p-blue was removed"),
    (_Host([_container("api", "h1"), _container("worker", "OLD")]), "S", "made from another definition"),
    (_Host([_container("api", "h1", "govstack/app:v9"), _container("worker", "h2")]), "S", "runs govstack/app:v9"),
    (_Host([_container("api", "h1"), _container("worker", "h2")], image_id=None), "S", "image govstack/app:v1 is gone"),
    (_Host([], desired={}), "S", "was removed"),
])
def test_a_rollback_starts_kept_containers_only_when_they_are_the_recorded_release(host, recorded_hash, why):
    from types import SimpleNamespace

    from govstack.release import Release, kept_color_unusable

    settings = SimpleNamespace(config_hash=lambda: "S")
    found = kept_color_unusable(host, settings, "p-blue", "/x/blue.yml", "govstack/app:v1",
                                Release("blue", "v1", config_hash=recorded_hash))
    assert found is None if why is None else why in found
