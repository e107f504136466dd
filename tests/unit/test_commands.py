"""The command layer (govstack/commands.py): what each builder makes a shell
run, checked by running it in bash where it only prints."""

from __future__ import annotations

import subprocess

import pytest

from govstack.backup.plan import BACKUP_ROLE, BACKUP_ROLE_ATTRIBUTES, BACKUP_ROLE_GROUPS
from govstack.commands import (
    compose,
    compose_containers,
    compose_exec,
    compose_run,
    last_json,
    login_probe,
    login_role_sql,
    psql,
    words,
)


def _printed(shell: str) -> str:
    return subprocess.run(["bash", "-o", "pipefail", "-c", shell], capture_output=True, text=True,
                          timeout=30, check=True).stdout


@pytest.mark.parametrize("password", ["A" * 40, "pa'ss%s\\x\"$(id)`id`word!"])
def test_role_sql_reads_the_password_on_the_host_and_quotes_it_for_sql(tmp_path, password):
    secret = tmp_path / "postgres backup password"
    secret.write_text(password + "\n")
    shell = login_role_sql(BACKUP_ROLE, str(secret), attributes=BACKUP_ROLE_ATTRIBUTES,
                           member_of=BACKUP_ROLE_GROUPS, connect="govstack")
    assert password not in shell
    literal = password.replace("'", "''")
    assert _printed(shell).splitlines() == [
        f"SELECT 'CREATE ROLE {BACKUP_ROLE} LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = "
        f"'{BACKUP_ROLE}')\\gexec",
        f"ALTER ROLE {BACKUP_ROLE} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE BYPASSRLS PASSWORD '{literal}';",
        f"GRANT pg_read_all_data TO {BACKUP_ROLE};",
        f"GRANT CONNECT ON DATABASE govstack TO {BACKUP_ROLE};",
    ]


def test_a_role_that_owns_its_database(tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("B" * 40)
    lines = _printed(login_role_sql("app", str(secret), owns_database="docs")).splitlines()
    assert lines[1] == f"ALTER ROLE app WITH LOGIN PASSWORD '{'B' * 40}';"
    assert lines[2:] == [
        "SELECT 'CREATE DATABASE docs OWNER app' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = "
        "'docs')\\gexec",
        "REVOKE ALL ON DATABASE docs FROM PUBLIC;",
    ]


def test_compose_quotes_every_value_once():
    assert compose("gs", "ps", "-q", files="/srv/a b/compose.yml") == (
        "docker compose -p gs -f '/srv/a b/compose.yml' ps -q")
    assert compose("gs", "config", "--hash", "*", files=["/a.yml", "/b.yml"]) == (
        "docker compose -p gs -f /a.yml -f /b.yml config --hash '*'")
    assert compose_exec("gs", "/c.yml", "postgres", "sh", "-c", "echo $HOME") == (
        "docker compose -p gs -f /c.yml exec -T postgres sh -c 'echo $HOME'")
    assert compose_run("gs-blue", "/app/blue.yml", "api", "migrate") == (
        "docker compose -p gs-blue -f /app/blue.yml run --rm --no-deps -T api migrate")
    assert compose_run("gs-blue", "/app/blue.yml", "api", "-c", "x", entrypoint="python3").endswith(
        "run --rm --no-deps -T --entrypoint python3 api -c x")


def test_compose_containers_never_lists_one_off_containers():
    listing = compose_containers("gs; rm -rf /", "api")
    assert listing.startswith("docker ps -q ") and "'gs; rm -rf /'" in listing
    assert "com.docker.compose.oneoff=False" in listing and "status=running" in listing
    assert "status=running" not in compose_containers("gs", running_only=False)


def test_psql_reads_stdin_without_psqlrc():
    assert words(*psql("docs")) == "psql -X -q -v ON_ERROR_STOP=1 -U postgres -d docs"
    assert psql("docs", rows=True)[-3:] == ["-tA", "-F", "\t"]
    assert words(*psql("docs", csv=True, on_error_stop=False)) == "psql -X -q -U postgres -d docs --csv"
    assert "-h 127.0.0.1 -U govstack_monitor" in login_probe("govstack_monitor", "docs", member_of=("pg_monitor",))


@pytest.mark.parametrize(("text", "answer"), [
    ('log line\n{"ok": true}\n', {"ok": True}),
    ('{"first": 1}\n[1, 2]\nlast words\n', [1, 2]),
    ('{"ok": 1}\n{broken\n', {"ok": 1}),
    ("no json at all", None),
    ("", None),
])
def test_last_json_takes_the_last_line_that_parses(text, answer):
    assert last_json(text) == answer
