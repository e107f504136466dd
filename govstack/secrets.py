"""The secrets a stack needs, who reads each one, and how to find them.

Secrets are generated on the target host, once, and stay stable across
deploys. Each is one file under ``<stack_root>/secrets`` (mode 0700), mode
0600, owned by the single uid that reads it, and reaches containers as a
Compose file secret (``/run/secrets/<name>``, the ``*_FILE`` convention),
never as an environment variable that ``docker inspect`` would show.
"""

from __future__ import annotations

from dataclasses import dataclass

from govstack.settings import NGINX_UID, POSTGRES_UID, SERVICE_UID, Settings


@dataclass(frozen=True)
class SecretSpec:
    name: str
    owner_uid: int
    description: str
    # Characters of [A-Za-z0-9] when generated: no quoting problems anywhere
    # (postgres-exporter 0.11 rejects passwords with spaces, S3 keys are ASCII).
    length: int = 40
    # False: only the operator can supply it (e.g. an SMTP password); the
    # file exists only when they did.
    generated: bool = True


SECRET_SPECS: dict[str, SecretSpec] = {
    spec.name: spec
    for spec in (
        SecretSpec("postgres_password", POSTGRES_UID, "Postgres superuser (initdb, backups)"),
        SecretSpec("postgres_app_password", SERVICE_UID, "Postgres role the app connects as"),
        SecretSpec("s3_access_key", SERVICE_UID, "object store access key id", length=20),
        SecretSpec("s3_secret_key", SERVICE_UID, "object store secret key"),
        SecretSpec("app_admin_api_key", SERVICE_UID, "bootstrap admin API key of the app"),
        SecretSpec("restic_password", SERVICE_UID, "restic repository password (keep a copy off the host)",
                   length=64),
        SecretSpec("postgres_backup_password", SERVICE_UID, "Postgres role govstack_backup (pg_read_all_data)"),
        SecretSpec("backup_offsite_access_key", SERVICE_UID, "offsite S3 access key (supplied, with backup.offsite)",
                   length=20, generated=False),
        SecretSpec("backup_offsite_secret_key", SERVICE_UID, "offsite S3 secret key (supplied, with backup.offsite)",
                   generated=False),
        SecretSpec("postgres_monitor_password", SERVICE_UID, "Postgres role of postgres-exporter (pg_monitor)"),
        SecretSpec("grafana_admin_password", SERVICE_UID, "Grafana admin (upstream lane)"),
        SecretSpec(
            "alertmanager_smtp_password", SERVICE_UID, "SMTP login of the e-mail receiver (supplied)", generated=False
        ),
    )
}

# Not generated like the others but guarded the same way: the edge's TLS key.
TLS_KEY_OWNER_UID = NGINX_UID


def secret_path(settings: Settings, name: str) -> str:
    if name not in SECRET_SPECS:
        raise KeyError(f"unknown secret {name!r}; known: {', '.join(sorted(SECRET_SPECS))}")
    return f"{settings.secrets_dir}/{name}"


def generate_secret_command(path: str, length: int) -> str:
    """Shell that writes a fresh random secret to ``path`` (mode 0600) without
    the value ever appearing in a command line, a log or pyinfra's output."""
    return (
        f"umask 077 && tmp=$(mktemp {path}.XXXXXX) && "
        f"LC_ALL=C tr -dc 'A-Za-z0-9' </dev/urandom | head -c {length} >\"$tmp\" && "
        f'mv "$tmp" {path}'
    )
