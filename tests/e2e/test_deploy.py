"""Deploy behaviour of the whole stack on this machine: idempotence, repair and
clear failures. Runs against the test inventory (its own root, project, ports).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import textwrap

import pytest

from govstack.inventory import load_inventory
from tests.conftest import run_govstack


@pytest.fixture(scope="module")
def settings(deployed_stack):
    return load_inventory(deployed_stack)[0].settings


def container_ids(project: str) -> dict[str, str]:
    out = subprocess.run(
        ["docker", "ps", "-a", "--no-trunc", "--filter", f"label=com.docker.compose.project={project}",
         "--format", '{{.Label "com.docker.compose.service"}} {{.ID}}'],
        capture_output=True, text=True, check=True,
    ).stdout
    return dict(line.split() for line in out.splitlines())


def changed_operations(pyinfra_output: str) -> list[str]:
    """Operation names that pyinfra reported as changed ("Success" rather than "No changes")."""
    changed, current = [], None
    for line in pyinfra_output.splitlines():
        start = re.match(r"--> Starting operation: (.*?)\s*$", line)
        if start:
            current = start.group(1)
        elif current and re.search(r"\] Success\s*$", line):
            changed.append(current)
    return changed


def health(project: str) -> dict[str, str]:
    out = subprocess.run(
        ["docker", "ps", "-a", "--filter", f"label=com.docker.compose.project={project}",
         "--format", '{{.Label "com.docker.compose.service"}} {{.Status}}'],
        capture_output=True, text=True, check=True,
    ).stdout
    return {line.split()[0]: line for line in out.splitlines()}


def test_second_deploy_changes_nothing_and_recreates_no_container(deployed_stack, settings):
    before = container_ids(settings.project)
    assert before, "the first deploy left no containers"
    result = run_govstack("up", "-i", deployed_stack)
    assert result.returncode == 0, result.stderr[-2000:]
    assert changed_operations(result.stdout + result.stderr) == []
    assert container_ids(settings.project) == before


def served_certificate(settings) -> bytes:
    import ssl

    pem = ssl.get_server_certificate(("127.0.0.1", settings.edge.https_port), timeout=30)
    return ssl.PEM_cert_to_DER_cert(pem)


def test_up_serves_a_swapped_certificate_and_prints_the_url_but_no_secret(deployed_stack, settings, tmp_path):
    """A renewed or replaced certificate on disk is what clients get after
    `govstack up` (nginx reads it only at start or reload). One `up` serves
    both checks, to keep the shared stack's tier short."""
    import ssl

    from govstack.operations import sans_for
    from govstack.secrets import TLS_KEY_OWNER_UID

    tls_dir = f"{settings.config_dir}/nginx/tls"
    # A new pair with the names `up` wants, so `up` keeps it rather than issuing its own.
    san = ",".join(name.replace("IP Address:", "IP:") for name in sans_for(settings.edge.hostname))
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-days", "397", "-subj", f"/CN={settings.edge.hostname}", "-addext", f"subjectAltName={san}",
         "-keyout", str(tmp_path / "tls.key"), "-out", str(tmp_path / "tls.crt")],
        check=True, capture_output=True,
    )
    new = ssl.PEM_cert_to_DER_cert((tmp_path / "tls.crt").read_text())
    assert served_certificate(settings) != new
    for name, mode in (("tls.key", 0o600), ("tls.crt", 0o644)):
        target = f"{tls_dir}/{name}"
        shutil.copyfile(tmp_path / name, target)
        os.chown(target, TLS_KEY_OWNER_UID, TLS_KEY_OWNER_UID)
        os.chmod(target, mode)

    result = run_govstack("up", "-i", deployed_stack)
    assert result.returncode == 0, result.stderr[-2000:]
    assert served_certificate(settings) == new
    assert settings.public_url in result.stdout
    assert settings.secrets_dir in result.stdout
    for name in os.listdir(settings.secrets_dir):
        with open(os.path.join(settings.secrets_dir, name)) as secret:
            assert secret.read().strip() not in result.stdout + result.stderr


def test_deploy_repairs_a_broken_stack(deployed_stack, settings):
    chroma = container_ids(settings.project)["chroma"]
    nginx = container_ids(settings.project)["nginx"]
    subprocess.run(["docker", "stop", "-t", "5", chroma], check=True, capture_output=True)
    subprocess.run(["docker", "rm", "-f", nginx], check=True, capture_output=True)

    result = run_govstack("up", "-i", deployed_stack)
    assert result.returncode == 0, result.stderr[-2000:]
    assert any("Compose project" in name for name in changed_operations(result.stdout + result.stderr))
    assert all("(healthy)" in status for status in health(settings.project).values())
    # Converged again: the next run is a no-op.
    again = run_govstack("up", "-i", deployed_stack)
    assert changed_operations(again.stdout + again.stderr) == []


def _one_line_cause(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("govstack: ")]
    assert lines, f"no 'govstack:' cause in stderr:\n{result.stderr[-2000:]}"
    return lines[-1]


def test_bad_setting_stops_before_touching_the_host(deployed_stack, settings):
    before = container_ids(settings.project)
    result = run_govstack("up", "-i", deployed_stack, env={"GOVSTACK__EDGE__HTTPS_PORT": "99999"}, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "govstack: @local: setting govstack.edge.https_port: Input should be less than or equal to 65535"
    )
    assert result.stdout == ""
    assert container_ids(settings.project) == before


def test_failed_image_build_names_the_image(deployed_stack):
    # An unreachable mirror changes the base image's inputs and makes
    # debootstrap fail fast; the existing images stay as they are.
    result = run_govstack("up", "-i", deployed_stack, env={"GOVSTACK__IMAGES__DEBIAN_MIRROR": "http://127.0.0.1:9/debian"})
    assert result.returncode != 0
    assert "govstack: building the base image govstack/base:bookworm failed" in result.stdout + result.stderr
    assert _one_line_cause(result).startswith(
        "govstack: deploy failed: @local: building the base image govstack/base:bookworm failed"
    )


def test_unreachable_host_fails_with_the_cause(tmp_path):
    inventory = tmp_path / "unreachable.py"
    inventory.write_text(textwrap.dedent("""
        hosts = [("unreachable", {"ssh_hostname": "127.0.0.1", "ssh_port": 1, "ssh_user": "root",
                                  "govstack": {"stack_root": "/var/lib/govstack-unreachable"}})]
    """))
    result = run_govstack("up", "-i", str(inventory), timeout=120)
    assert result.returncode != 0
    assert "unreachable" in (result.stdout + result.stderr)
    # The stack lock is the first thing `up` needs from a host.
    assert _one_line_cause(result).startswith("govstack: unreachable: cannot reach the host"), result.stderr[-500:]


def test_service_that_never_gets_healthy_fails_the_deploy_then_a_good_deploy_repairs(deployed_stack, settings):
    env = {
        # A value Postgres cannot parse: the server refuses to start.
        "GOVSTACK__POSTGRES__OVERRIDES": json.dumps({"work_mem": "lots"}),
        "GOVSTACK__HEALTHY_TIMEOUT_S": "30",
    }
    broken = run_govstack("up", "-i", deployed_stack, env=env)
    assert broken.returncode != 0
    output = broken.stdout + broken.stderr
    assert f"govstack: compose project {settings.project} did not become healthy" in output
    assert "postgres" in output

    repaired = run_govstack("up", "-i", deployed_stack)
    assert repaired.returncode == 0, repaired.stderr[-2000:]
    assert all("(healthy)" in status for status in health(settings.project).values())
