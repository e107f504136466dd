"""Issue 18 §1 on the 4-host lane: the shipped pipeline's deploy job, run the
way a runner runs it.

The staging job of .github/workflows/deploy.yml is read from the YAML (not
copied): each ``run:`` step goes through ``bash --noprofile --norc -eo
pipefail`` as GitHub's runner does, with the workflow's, the job's and the
step's ``env`` (``${{ }}`` expressions filled from a fixed table: an
expression the table does not know fails the test), and ``$GITHUB_ENV``
carried from step to step. The runner's home is a fresh directory, so the
SSH key, known hosts and SSH config are only what the job's steps put there
from its secrets. The inventory is the lane's, written the way
inventories/production.py is: keys from the agent, host keys from
``~/.ssh/known_hosts``, strict checking.

Not run: the ``uses:`` steps (checkout, setup-python: the controller is the
checkout), the install (the controller's venv is installed) and the pull from
GHCR (the lane is offline: the test tags the image the pull would have made).
"""

from __future__ import annotations

import json
import os
import pprint
import re
import runpy
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from tests.multihost.conftest import Lane
from tests.multihost.harness import REPO_ROOT
from tests.multihost.test_multihost import release_on

pytestmark = pytest.mark.filterwarnings("ignore:Unknown ssh-:UserWarning")

WORKFLOW = REPO_ROOT / ".github" / "workflows" / "deploy.yml"
JOB = "staging"
NOT_RUN = {
    "actions/checkout@v5": "the controller is the checkout",
    "actions/setup-python@v6": "the controller's Python",
    "Install govstack": "the controller's venv is installed",
    "Pull the app image by digest (on the runner)": "no registry in the offline lane; the test tags the image",
    "Archive the SBOMs": "no artifact store offline; the test reads what the step would upload",
}
STEP_TIMEOUT_S = 1200
EXPRESSION = re.compile(r"\$\{\{\s*([^}]+?)\s*\}\}")


def agent_inventory(lane: Lane, path: Path) -> Path:
    """The lane's inventory as production.py is written: no key file, no known-hosts file."""
    groups = runpy.run_path(str(lane.inventory))
    hosts, shared = groups["all"]
    drop = {"ssh_key", "ssh_known_hosts_file", "ssh_allow_agent", "ssh_look_for_keys"}
    hosts = [(name, {k: v for k, v in data.items() if k not in drop} | {"ssh_strict_host_key_checking": "yes"})
             for name, data in hosts]
    lines = ['"""The lane as the pipeline sees it (tests/multihost/test_workflow_deploy.py)."""', "",
             f"all = ({pprint.pformat(hosts, width=110)},", f"       {pprint.pformat(shared, width=110)})"]
    lines += [f"{group} = {pprint.pformat(groups[group], width=110)}"
              for group in ("edge", "app", "data", "monitoring") if group in groups]
    path.write_text("\n".join(lines) + "\n")
    return path


def fill(text: str, values: dict[str, str]) -> str:
    def one(match: re.Match) -> str:
        expression = match.group(1)
        assert expression in values, f"the test does not know ${{{{ {expression} }}}}: add it to the table"
        return values[expression]

    return EXPRESSION.sub(one, str(text))


def test_the_staging_job_deploys_the_lane_as_a_runner_would(deployed, edge_ca, tmp_path):
    workflow = yaml.safe_load(WORKFLOW.read_text())
    job = workflow["jobs"][JOB]
    home = tmp_path / "runner-home"
    home.mkdir()
    runner_temp = tmp_path / "runner-temp"
    runner_temp.mkdir()
    github_env = tmp_path / "github-env"
    github_env.touch()
    current = release_on(deployed, deployed.group("app")[0].name)
    version = f"wf-{uuid.uuid4().hex[:8]}"
    # What the skipped pull step leaves on the runner: the pushed image under govstack/app:VERSION.
    subprocess.run(["docker", "tag", f"govstack/app:{current['version']}", f"govstack/app:{version}"], check=True)
    inventory = agent_inventory(deployed, tmp_path / "lane-agent.py")
    values = {
        "github.repository_owner": "site", "github.actor": "ci-test", "github.run_id": "4242",
        "needs.app-image.outputs.version": version,
        "needs.app-image.outputs.digest": "sha256:" + "0" * 64,
        "secrets.DEPLOY_SSH_KEY": Path(deployed.harness.key_path).read_text(),
        "secrets.DEPLOY_KNOWN_HOSTS": Path(deployed.harness.known_hosts).read_text(),
        "secrets.DEPLOY_SSH_CONFIG": "",
        "secrets.GITHUB_TOKEN": "not-used-offline",
        # Unset in this CI store: the job drops empty secrets.
        "secrets.ALERTMANAGER_SMTP_PASSWORD": "", "secrets.BACKUP_OFFSITE_ACCESS_KEY": "",
        "secrets.BACKUP_OFFSITE_SECRET_KEY": "",
        "vars.PUBLIC_URL": deployed.base_url,
        "vars.EDGE_CA_CERT": Path(edge_ca).read_text(),
    }
    values |= {f"env.{key}": fill(value, values) for key, value in workflow.get("env", {}).items()}
    base = {
        # The runner's own variables; PATH puts the controller's venv first (python, govstack).
        "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home), "RUNNER_TEMP": str(runner_temp), "GITHUB_ENV": str(github_env),
        "GITHUB_OUTPUT": str(tmp_path / "github-output"), "GITHUB_ACTOR": "ci-test", "CI": "true",
        "GITHUB_JOB": JOB,
        "GOVSTACK_SECRETS_HOME": os.environ["GOVSTACK_SECRETS_HOME"],
        **{key: fill(value, values) for key, value in workflow.get("env", {}).items()},
        **{key: fill(value, values) for key, value in job.get("env", {}).items()},
        # The lane instead of inventories/staging.py (the job's only site-specific value).
        "INVENTORY": str(inventory),
    }
    ran, skipped, agent_pid = [], [], None
    sboms = REPO_ROOT / "sboms"
    assert not sboms.exists(), f"{sboms} is left from an earlier run: remove it"
    try:
        for step in job["steps"]:
            name = step.get("name") or step.get("uses")
            if name in NOT_RUN:
                skipped.append(name)
                continue
            assert "run" in step, f"step {name!r} is neither run nor skipped with a reason"
            env = dict(base)
            for line in github_env.read_text().splitlines():
                key, _, value = line.partition("=")
                env[key] = value
            env |= {key: fill(value, values) for key, value in (step.get("env") or {}).items()}
            script = tmp_path / f"step-{len(ran) + len(skipped)}.sh"
            script.write_text(fill(step["run"], values))
            result = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)], env=env,
                                    cwd=REPO_ROOT, capture_output=True, text=True, timeout=STEP_TIMEOUT_S)
            (deployed.workdir / f"workflow-{len(ran)}.log").write_text(f"{result.stdout}\n---\n{result.stderr}")
            agent_pid = agent_pid or next((int(line.split("=", 1)[1]) for line in github_env.read_text().splitlines()
                                           if line.startswith("SSH_AGENT_PID=")), None)
            assert result.returncode == 0, f"step {name!r} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            ran.append((name, result.stdout))
    finally:
        if agent_pid:
            os.kill(agent_pid, signal.SIGTERM)
        subprocess.run(["docker", "rmi", f"govstack/app:{version}"], capture_output=True, check=False)
        archived = {path.name: path.read_text() for path in sboms.glob("*")} if sboms.is_dir() else {}
        shutil.rmtree(sboms, ignore_errors=True)
    assert sorted(skipped) == sorted(NOT_RUN), skipped
    names = [name for name, _ in ran]
    assert any(name.startswith("Smoke test") for name in names), names
    assert "govstack up (settings and secrets from the CI store)" in names
    # What the archive step would upload: one CycloneDX document and its summary, naming the app release.
    assert sorted(archived) == [f"{JOB}.cdx.json", f"{JOB}.txt"], sorted(archived)
    assert json.loads(archived[f"{JOB}.cdx.json"])["bomFormat"] == "CycloneDX"
    listed = archived[f"{JOB}.txt"]
    assert "govstack/app:" in listed and "\tdeb:" in listed, listed[:2000]
    shipped = dict(ran)["Put the image on every app host as govstack/app:VERSION"]
    for host in deployed.group("app"):
        assert f"root@{host.ip}: govstack/app:{version} is sha256:" in shipped, shipped
        assert release_on(deployed, host.name)["version"] == version
    # The key never reached a file in the workspace or the runner's home, only the agent.
    # (Its body, not the words "PRIVATE KEY": the Compose plugin cached under the home holds those.)
    body = max(Path(deployed.harness.key_path).read_text().splitlines(), key=len).encode()
    assert len(body) >= 40
    holding = [path for path in (*home.rglob("*"), *tmp_path.rglob("step-*.sh")) if path.is_file()
               and body in path.read_bytes()]
    assert not holding, holding
