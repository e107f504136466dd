"""The one command layer: every shell command govstack runs on a host, built
by small pure functions, in the spirit of pyinfra's ``make_psql_command``.

The pyinfra operations and facts (deploys) and the CLI's remote jobs
(govstack/remote.py: backup, restore, drill, compliance reports) build their
commands here, so quoting, Compose invocations, psql flags and the Postgres
role SQL each exist once. Every function returns a shell string; every value
that is not a fixed word of ours is quoted with :func:`q`.

Passwords never reach an argv: role SQL reads them on the host with
``$(cat FILE)`` inside ``printf`` (a shell builtin) and psql reads the SQL on
stdin.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterable, Sequence
from typing import Any


def q(value: Any) -> str:
    """One shell word."""
    return shlex.quote(str(value))


def words(*args: Any) -> str:
    """Shell words, each quoted."""
    return " ".join(q(arg) for arg in args)


def last_json(text: str) -> Any:
    """The last line of ``text`` that parses as a JSON object or array (the
    jobs' and the app's answers end with one); None when there is none."""
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith(("{", "[")):
            try:
                return json.loads(line)
            except ValueError:
                continue
    return None


# -- docker and compose ---------------------------------------------------------------------------

def compose(project: str, *args: Any, files: str | Sequence[str]) -> str:
    """``docker compose -p PROJECT -f FILE… ARGS…``."""
    paths = [files] if isinstance(files, str) else list(files)
    return " ".join(["docker compose", "-p", q(project), *(f"-f {q(path)}" for path in paths), words(*args)]).rstrip()


def compose_exec(project: str, files: str | Sequence[str], service: str, *command: Any) -> str:
    """``COMMAND`` in the running container of a Compose service, without a TTY (stdin passes)."""
    return compose(project, "exec", "-T", service, *command, files=files)


def bucket_versioned(project: str, files: str | Sequence[str], bucket: str) -> str:
    """The bucket exists in the stack's SeaweedFS with versioning on: ``weed shell`` in the gateway's
    container (its entrypoint's ``bucket``; creating a bucket takes the Admin action, which no S3
    client of the stack holds). Idempotent."""
    return compose_exec(project, files, "seaweedfs", "/usr/local/bin/seaweedfs-entrypoint", "bucket", bucket)


def bucket_configured(project: str, files: str | Sequence[str], bucket: str, noncurrent_days: int, abort_days: int,
                      access_file: str, secret_file: str, encrypt: bool,
                      oneoff: bool = False) -> tuple[tuple[str, ...], str]:
    """The backup service's ``bucket-config`` (lifecycle rules, default encryption), with the admin
    pair on its stdin for that one call: its argv, and the command that applies it and fails
    unless the client answers ok. ``oneoff``: in a one-off container of the service (a restore
    runs while the service is stopped; the image's entrypoint is ``govstack-backup``)."""
    argv = ("govstack-backup", "bucket-config", bucket, "--noncurrent-days", str(noncurrent_days),
            "--abort-multipart-days", str(abort_days), *(("--encrypt",) if encrypt else ()))
    apply = (compose_run(project, files, "backup", *argv[1:]) if oneoff
             else compose_exec(project, files, "backup", *argv))
    return argv, (f"{{ cat {q(access_file)}; echo; cat {q(secret_file)}; echo; }} | {apply} | tail -n 1 "
                  "| grep -q '\"ok\": true' || { echo 'govstack: the bucket configuration could not be set' >&2; "
                  "exit 1; }")


def compose_run(project: str, files: str | Sequence[str], service: str, *command: Any,
                entrypoint: str | None = None, pass_env: Sequence[str] = ()) -> str:
    """``COMMAND`` in a one-off container of a Compose service (same image, environment,
    secrets and networks), removed afterwards; its dependencies are not started.
    ``pass_env``: variables the container gets from the calling shell's environment."""
    extra = ["--entrypoint", entrypoint] if entrypoint else []
    for name in pass_env:
        extra += ["-e", name]
    return compose(project, "run", "--rm", "--no-deps", "-T", *extra, service, *command, files=files)


def compose_containers(project: str, service: str | None = None, *, running_only: bool = True) -> str:
    """``docker ps -q`` of a Compose project's (or one service's) containers; one-off
    containers (``compose run``) are never listed."""
    filters = [f"--filter label=com.docker.compose.project={q(project)}"]
    if service is not None:
        filters.append(f"--filter label=com.docker.compose.service={q(service)}")
    filters.append("--filter label=com.docker.compose.oneoff=False")
    if running_only:
        filters.append("--filter status=running")
    return " ".join(["docker ps -q" if running_only else "docker ps -aq", *filters])


# The app's migrate records the stamp it is given in this variable (app Settings.schema_stamp).
SCHEMA_STAMP_ENV = "GOVSTACK_SCHEMA_STAMP"
SCHEMA_STAMP_SQL = "SELECT stamp FROM schema_stamp"


def schema_stamp(image: str, files: Sequence[str]) -> str:
    """Shell printing the digest of what a migrate run is made from: the id of the app image
    and the content of ``files`` (the color's compose file, the secrets migrate reads). Any
    change to them (a new image, a setting in the compose file, a rotated admin key) makes
    another stamp, so the deploy asks again; a missing one too (its read prints nothing)."""
    reads = "; ".join(f"sha256sum < {q(path)}" for path in files)
    return (f"{{ docker image inspect --format '{{{{.Id}}}}' {q(image)}; {reads}; }} 2>/dev/null "
            "| sha256sum | cut -c1-64")


# Where the Compose v2 plugin may be (docker's own search path for root, and govstack's).
COMPOSE_PLUGIN_PATHS = ("/usr/local/lib/docker/cli-plugins/docker-compose",
                        "/usr/local/libexec/docker/cli-plugins/docker-compose",
                        "/usr/lib/docker/cli-plugins/docker-compose",
                        "/usr/libexec/docker/cli-plugins/docker-compose",
                        "/root/.docker/cli-plugins/docker-compose")


def compose_hashes(project: str, compose_file: str, cache: str = "") -> str:
    """Shell printing ``compose config --hash '*'`` of a project ("SERVICE HASH" lines), or
    ``__invalid__`` when the file is missing or invalid.

    With ``cache`` (a file of the deploy's own): the answer is kept there under a key of what
    Compose computes it from, and printed from there while the key is the same: the compose
    file's content, the ``.env`` beside it, the COMPOSE_/DOCKER_ variables, and the plugin's
    binaries (size, mtime, inode). A compose file that reads other files (``env_file``,
    ``extends``, ``include``) or interpolates ``${…}`` is asked every time. Each Compose CLI
    start cost a no-op deploy 0.1-0.6 s (it parses the whole project); the key, 0.01 s."""
    ask = f"{compose(project, 'config', '--hash', '*', files=compose_file)} 2>/dev/null"
    if not cache:
        return f"{ask} || echo __invalid__"
    directory = compose_file.rsplit("/", 1)[0] or "/"
    new = q(f"{cache}.new")
    plugins = " ".join(q(path) for path in COMPOSE_PLUGIN_PATHS)
    return (
        f"key=; if [ -f {q(compose_file)} ] && ! grep -qE 'env_file|extends|^include|[$][{{]' {q(compose_file)}; "
        f"then key=$({{ echo compose-hash-1; sha256sum < {q(compose_file)}; cat {q(directory + '/.env')}; "
        f"env | grep -E '^(COMPOSE|DOCKER)_' | sort; stat -L -c '%n %s %Y %i' {plugins}; }} 2>/dev/null "
        "| sha256sum | cut -c1-64); fi; "
        f"if [ -n \"$key\" ] && [ \"$(head -n 1 {q(cache)} 2>/dev/null)\" = \"$key\" ]; then tail -n +2 {q(cache)}; "
        f"elif hashes=$({ask}); then printf '%s\n' \"$hashes\"; "
        f"[ -z \"$key\" ] || {{ printf '%s\n%s\n' \"$key\" \"$hashes\" > {new} && mv -f {new} {q(cache)}; }} "
        "2>/dev/null; "
        f"else echo __invalid__; rm -f {q(cache)}; fi"
    )


def pitr_stanza_key(project: str, service: str, pgdata: str, config_file: str, repository: str,
                    stanza: str) -> str:
    """Shell printing the digest of everything an answer of ``pitr state`` (the stanza matches
    the running cluster and holds a base backup) rests on, read on the host: the running
    sidecar's container id, the cluster's system identifier (pg_control's first 8 bytes) and
    major version (PG_VERSION), the rendered pgbackrest.conf, and the stanza's info files in the
    repository (backup.info changes with every backup, expire, stanza-create or -upgrade;
    archive.info with the stanza). A restore into a new cluster, a deleted or replaced stanza, a
    new config or a recreated sidecar each make another key; a missing file too (its read prints
    "-")."""
    infos = [f"{repository}/backup/{stanza}/backup.info", f"{repository}/backup/{stanza}/backup.info.copy",
             f"{repository}/archive/{stanza}/archive.info", f"{repository}/archive/{stanza}/archive.info.copy"]
    reads = "; ".join(f"{{ sha256sum < {q(path)} || echo -; }}" for path in (config_file, *infos))
    return (f"{{ echo pitr-stanza-1; {compose_containers(project, service)}; "
            f"od -An -tu8 -N8 {q(pgdata + '/global/pg_control')} || echo -; "
            f"cat {q(pgdata + '/PG_VERSION')} || echo -; {reads}; }} 2>/dev/null | sha256sum | cut -c1-64")


def pitr_stanza_checked(probe: str, stamp: str) -> str:
    """Shell that runs ``probe`` (``pitr state``, which exits 0 only when the stanza is ok),
    prints its answer, and records ``$key`` (pitr_stanza_key, read before the probe, so that
    whatever changed meanwhile makes the next key differ) in ``stamp`` when it was ok, or
    removes the stamp when not. A cache of the answer, never a change to the stack: the
    stamp file is the deploy's own (state directory)."""
    new = q(f"{stamp}.new")
    return (f"if out=$({probe} 2>/dev/null); then printf '%s\\n' \"$out\"; "
            f"{{ printf '%s\\n' \"$key\" > {new} && mv -f {new} {q(stamp)}; }} 2>/dev/null; "
            f"else printf '%s\\n' \"$out\"; rm -f {q(stamp)}; fi")


def schema_stamp_cleared_sql() -> str:
    """SQL (run in the app's database) that forgets the recorded stamp, so the next deploy asks
    ``migrate --check`` again: for a deploy step that changed a database role itself."""
    return ("DO $$ BEGIN IF to_regclass('public.schema_stamp') IS NOT NULL THEN "
            "DELETE FROM schema_stamp; END IF; END $$;")


def service_exec(project: str, service: str, *command: Any) -> str:
    """``COMMAND`` in the running container of a Compose service, found by its
    labels, stdin attached: what ``compose exec -T`` does, without starting
    the Compose CLI, which parses the whole project first (the facts a no-op
    deploy reads this way cost one engine round trip each, not a Compose start)."""
    return f'docker exec -i "$({compose_containers(project, service)} | head -n 1)" {words(*command)}'


def docker_exec(container: str, *command: Any) -> str:
    """``COMMAND`` in a running container, stdin attached."""
    return f"docker exec -i {q(container)} {words(*command)}"


# -- postgres --------------------------------------------------------------------------------------

SUPERUSER = "postgres"


def psql(database: str, *, user: str = SUPERUSER, rows: bool = False, csv: bool = False,
         on_error_stop: bool = True, host: str | None = None) -> list[str]:
    """The argv of ``psql`` reading SQL on stdin: no psqlrc, quiet; ``rows``: unaligned
    tab-separated rows without headers; ``csv``: CSV with a header; ``host``: TCP instead of
    the socket. Run it with :func:`compose_exec` or :func:`docker_exec`."""
    flags = ["psql", "-X", "-q"]
    if on_error_stop:
        flags += ["-v", "ON_ERROR_STOP=1"]
    if host:
        flags += ["-h", host]
    flags += ["-U", user, "-d", database]
    if rows:
        flags += ["-tA", "-F", "\t"]
    if csv:
        flags.append("--csv")
    return flags


def printf_lines(*lines: str) -> str:
    """Shell that prints ``lines`` (for psql on stdin), the statements kept out of any argv
    but printf's, a shell builtin."""
    return f"printf '%s\\n' {words(*lines)}"


def login_role_sql(role: str, password_file: str, *, attributes: Iterable[str] = (),
                   member_of: Iterable[str] = (), connect: str | None = None,
                   owns_database: str | None = None) -> str:
    """Shell printing the idempotent SQL that makes ``role`` a login role with the password
    in ``password_file`` (read on the host inside ``printf``'s argument; never in an argv
    or this process), then its attributes, memberships, the right to connect to ``connect`` and
    the database it owns. The one place the stack's roles are written; names are
    validated identifiers (settings patterns, fixed role names)."""
    alter = " ".join(["LOGIN", *attributes])
    lines = [
        f"printf \"SELECT 'CREATE ROLE {role} LOGIN' WHERE NOT EXISTS "  # noqa: S608 - validated names
        f"(SELECT FROM pg_roles WHERE rolname = '{role}')\\\\gexec\\n\"",
        # Quotes doubled: an operator-supplied password may hold one (a SQL string literal).
        f"printf \"ALTER ROLE {role} WITH {alter} PASSWORD '%s';\\n\" \"$(sed \"s/'/''/g\" {q(password_file)})\"",
    ]
    lines += [f"printf \"GRANT {group} TO {role};\\n\"" for group in member_of]
    if connect:
        lines.append(f"printf \"GRANT CONNECT ON DATABASE {connect} TO {role};\\n\"")
    if owns_database:
        lines.append(
            f"printf \"SELECT 'CREATE DATABASE {owns_database} OWNER {role}' WHERE NOT EXISTS "  # noqa: S608
            f"(SELECT FROM pg_database WHERE datname = '{owns_database}')\\\\gexec\\n\""
        )
        lines.append(f"printf \"REVOKE ALL ON DATABASE {owns_database} FROM PUBLIC;\\n\"")
    return "; ".join(lines)


def password_sql(role: str, password_file: str) -> str:
    """Shell printing the SQL that sets only ``role``'s password (a rotation), read like
    :func:`login_role_sql` reads it."""
    return f"printf \"ALTER ROLE {role} WITH PASSWORD '%s';\\n\" \"$(sed \"s/'/''/g\" {q(password_file)})\""


def app_role_ownership_moved_sql(database: str, owner: str, app_role: str) -> str:
    """Shell printing the SQL, for psql in the app's database, that hands everything
    ``app_role`` owns (a stack from before the owner role existed), the database included,
    to ``owner`` in one transaction. The app keeps CONNECT and DML on every table meanwhile,
    so the version that serves goes on working; the next migrate run narrows it."""
    return printf_lines(
        "BEGIN;",
        "SET LOCAL lock_timeout = '30s';",
        f"REASSIGN OWNED BY {app_role} TO {owner};",
        f"ALTER DATABASE {database} OWNER TO {owner};",
        f"GRANT CONNECT ON DATABASE {database} TO {app_role};",
        f"GRANT USAGE ON SCHEMA public TO {app_role};",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {app_role};",
        f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {app_role};",
        "COMMIT;",
    )


def app_role_owned_objects_sql(app_role: str) -> str:
    """SQL, run in the app's database: how many objects ``app_role`` owns (0 when it does not
    exist), a space, and the database's owner."""
    return (
        "SELECT coalesce((SELECT (SELECT count(*) FROM pg_class WHERE relowner = r.oid)"  # noqa: S608
        " + (SELECT count(*) FROM pg_proc WHERE proowner = r.oid)"
        " + (SELECT count(*) FROM pg_type WHERE typowner = r.oid AND typrelid = 0)"
        " + (SELECT count(*) FROM pg_namespace WHERE nspowner = r.oid)"
        f" FROM pg_roles r WHERE r.rolname = '{app_role}'), 0) || ' ' || "
        "(SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database())"
    )


def login_probes(database: str, roles: Sequence[tuple[str, Sequence[str]]]) -> str:
    """Shell for the postgres container's ``sh -c``, one password per line on its stdin in the
    order of ``roles`` (``(role, member_of)``): prints ``ROLE t`` for each role that logs in to
    ``database`` over TCP with its password and is a member of every role in its ``member_of``
    (anything else after the name: it does not). One container entry for every role."""
    probes = []
    for role, member_of in roles:
        check = "select " + (" and ".join(f"pg_has_role('{group}', 'member')" for group in member_of) or "true")
        login = psql(database, user=role, host="127.0.0.1", on_error_stop=False)
        probes.append(f'IFS= read -r pw; printf "%s %s\\n" {q(role)} '
                      f'"$(PGPASSWORD=$pw {words(*login, "-tAc", check)} </dev/null 2>/dev/null)"')
    return "; ".join(probes)


def login_probe(role: str, database: str, *, member_of: Iterable[str] = ()) -> str:
    """Shell for the postgres container's ``sh -c``, the password file on its stdin: prints
    ``t`` when ``role`` logs in to ``database`` over TCP with that password and is a member
    of every role in ``member_of``."""
    check = "select " + (" and ".join(f"pg_has_role('{group}', 'member')" for group in member_of) or "true")
    login = psql(database, user=role, host="127.0.0.1", on_error_stop=False)
    return f"PGPASSWORD=$(cat) {words(*login, '-tAc', check)}"
