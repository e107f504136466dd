"""The fixed facts settings are validated against: the roles a host can
have, the uids services run as, and the secrets a stack holds.

They live here, in the settings package, because settings refuse what these
do not name (an unknown secret, say) and settings import no feature module.
``govstack.roles`` and ``govstack.secrets`` re-export them.
"""

from __future__ import annotations

from dataclasses import dataclass

ROLES = ("edge", "app", "data", "monitoring")
ALL_ROLES = frozenset(ROLES)

# Fixed uids: secret files are owned by the one uid that reads them, so the
# images (both lanes) must agree on these. 999 and 101 are what the official
# postgres and nginx images use; everything else runs as one unprivileged uid.
POSTGRES_UID = 999
NGINX_UID = 101
SERVICE_UID = 10001


# Data on a host that a secret's value unlocks (SecretSpec.pinned_by).
DATA_KINDS = ("postgres", "restic", "pgbackrest", "seaweedfs-sse")
ROTATIONS = ("postgres-role", "restic", "s3")


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
    # The roles (govstack/roles.py) whose services or deploy steps read it.
    needed_by: frozenset[str] = frozenset()
    # The data that stops opening (or whose running readers are locked out)
    # when this value changes: "postgres" (an initialised data directory) or
    # "restic" (a repository). A deploy never makes a new value of such a
    # secret while that data exists (govstack/secret_sources.py).
    pinned_by: str | None = None
    # How `govstack secret rotate` replaces it (govstack/rotation.py):
    # "postgres-role", "restic" or "s3"; None: it cannot be rotated there.
    rotation: str | None = None

    def __post_init__(self) -> None:
        unknown = set(self.needed_by) - set(ROLES)
        if not self.needed_by or unknown:
            raise ValueError(f"secret {self.name}: needed_by must name roles among {ROLES}, not {sorted(unknown)}")
        if self.pinned_by not in (None, *DATA_KINDS):
            raise ValueError(f"secret {self.name}: pinned_by must be one of {DATA_KINDS}, not {self.pinned_by!r}")
        if self.rotation not in (None, *ROTATIONS):
            raise ValueError(f"secret {self.name}: rotation must be one of {ROTATIONS}, not {self.rotation!r}")


# The restic job's key pair for the offsite store (backup.offsite), and
# pgBackRest's (its uid cannot read the restic job's files): the settings copy
# the former into the latter unless the inventory gives pgBackRest its own.
OFFSITE_SECRETS = ("backup_offsite_access_key", "backup_offsite_secret_key")
PITR_OFFSITE_SECRETS = ("pgbackrest_offsite_access_key", "pgbackrest_offsite_secret_key")


def _by(*roles: str) -> frozenset[str]:
    return frozenset(roles)


# Who reads what (keep in step with the templates and the deploy steps):
# - data: Postgres (superuser), the SeaweedFS gateway (S3 keys), the backup
#   service (restic, backup role, S3 and offsite keys), and the deploy steps
#   that set the owner's, the app's, the backup's, the exporter's and the analytics
#   service's role passwords (also after a restore, govstack/backup/ops.py);
# - app: the API and worker (templates/compose/app.yml.j2, StackPlan.app_secrets),
#   the API alone the analytics HMAC key, the analytics service alone its role's
#   password, and the one-off migrate service, the only reader of the owner's password
#   (StackPlan.migrate_secrets);
# - monitoring: postgres-exporter, Alertmanager's SMTP login, Grafana;
# - edge: nothing but its TLS key (made by the deploy, not listed here).


SECRET_SPECS: dict[str, SecretSpec] = {
    spec.name: spec
    for spec in (
        SecretSpec("postgres_password", POSTGRES_UID, "Postgres superuser (initdb, backups)",
                   needed_by=_by("data"), pinned_by="postgres", rotation="postgres-role"),
        SecretSpec("postgres_owner_password", SERVICE_UID,
                   "Postgres role that owns the schema; only the app's migrations log in with it",
                   needed_by=_by("data", "app"), rotation="postgres-role"),
        SecretSpec("postgres_app_password", SERVICE_UID, "Postgres role the app connects as (owns nothing)",
                   needed_by=_by("data", "app"), pinned_by="postgres", rotation="postgres-role"),
        SecretSpec("s3_access_key", SERVICE_UID, "object store access key id of the app (read and write on "
                   "its bucket)", length=20, needed_by=_by("data", "app"), rotation="s3"),
        SecretSpec("s3_secret_key", SERVICE_UID, "object store secret key of the app", needed_by=_by("data", "app"),
                   rotation="s3"),
        SecretSpec("s3_backup_access_key", SERVICE_UID, "object store access key id of the backup job (read and "
                   "list)", length=20, needed_by=_by("data"), rotation="s3"),
        SecretSpec("s3_backup_secret_key", SERVICE_UID, "object store secret key of the backup job",
                   needed_by=_by("data"), rotation="s3"),
        SecretSpec("s3_restore_access_key", SERVICE_UID, "object store access key id of `govstack restore` (read, "
                   "list and write; mounted only into the restore's one-off container)", length=20,
                   needed_by=_by("data"), rotation="s3"),
        SecretSpec("s3_restore_secret_key", SERVICE_UID, "object store secret key of `govstack restore`",
                   needed_by=_by("data"), rotation="s3"),
        SecretSpec("s3_admin_access_key", SERVICE_UID, "object store admin access key id (the deploy's bucket "
                   "setup only)", length=20, needed_by=_by("data"), rotation="s3"),
        SecretSpec("s3_admin_secret_key", SERVICE_UID, "object store admin secret key", needed_by=_by("data"),
                   rotation="s3"),
        SecretSpec("s3_sse_key", SERVICE_UID, "object store encryption key: SeaweedFS derives the key-encryption "
                   "key of its SSE-S3 from it (keep a copy off the host: the objects do not open without it)",
                   length=64, needed_by=_by("data"), pinned_by="seaweedfs-sse"),
        SecretSpec("app_admin_api_key", SERVICE_UID, "bootstrap admin API key of the app",
                   needed_by=_by("app")),
        SecretSpec("postgres_analytics_password", SERVICE_UID,
                   "Postgres role of the analytics service (reads usage events only)", needed_by=_by("data", "app"),
                   rotation="postgres-role"),
        SecretSpec("analytics_actor_key", SERVICE_UID,
                   "HMAC key that makes usage-event actors pseudonymous (read by the API only)", length=64,
                   needed_by=_by("app")),
        SecretSpec("restic_password", SERVICE_UID, "restic repository password (keep a copy off the host)",
                   length=64, needed_by=_by("data"), pinned_by="restic", rotation="restic"),
        SecretSpec("postgres_backup_password", SERVICE_UID, "Postgres role govstack_backup (pg_read_all_data)",
                   needed_by=_by("data"), pinned_by="postgres", rotation="postgres-role"),
        SecretSpec(OFFSITE_SECRETS[0], SERVICE_UID, "offsite S3 access key (supplied, with backup.offsite)",
                   length=20, generated=False, needed_by=_by("data")),
        SecretSpec(OFFSITE_SECRETS[1], SERVICE_UID, "offsite S3 secret key (supplied, with backup.offsite)",
                   generated=False, needed_by=_by("data")),
        # Decrypts the pgBackRest repositories (WAL and base backups). Postgres'
        # uid reads it: archive_command runs in the Postgres container.
        SecretSpec("pgbackrest_cipher_pass", POSTGRES_UID,
                   "pgBackRest repository encryption passphrase (keep a copy off the host)",
                   length=64, needed_by=_by("data"), pinned_by="pgbackrest"),
        SecretSpec(PITR_OFFSITE_SECRETS[0], POSTGRES_UID,
                   "pgBackRest's offsite S3 access key (with backup.offsite; default: the restic one)",
                   length=20, generated=False, needed_by=_by("data")),
        SecretSpec(PITR_OFFSITE_SECRETS[1], POSTGRES_UID,
                   "pgBackRest's offsite S3 secret key (with backup.offsite; default: the restic one)",
                   generated=False, needed_by=_by("data")),
        SecretSpec("postgres_monitor_password", SERVICE_UID, "Postgres role of postgres-exporter (pg_monitor)",
                   needed_by=_by("data", "monitoring"), pinned_by="postgres", rotation="postgres-role"),
        SecretSpec("grafana_admin_password", SERVICE_UID, "Grafana admin (upstream lane)",
                   needed_by=_by("monitoring")),
        SecretSpec(
            "alertmanager_smtp_password", SERVICE_UID, "SMTP login of the e-mail receiver (supplied)", generated=False,
            needed_by=_by("monitoring"),
        ),
    )
}


@dataclass(frozen=True)
class S3Identity:
    """One identity of the in-stack S3 gateway (SeaweedFS): its key pair's secrets and the
    actions it may take. ``{bucket}`` in an action stands for object_store.bucket.

    SeaweedFS 4.48 knows the actions Read, Write, List, Tagging and Admin, each optionally
    scoped to one bucket (``Read:documents``); creating a bucket takes Admin. Write also
    covers a bucket's versioning and lifecycle configuration (its S3 router maps
    PutBucketVersioning and PutBucketLifecycleConfiguration to ACTION_WRITE), so the deploy
    sets them again on every run.
    """

    name: str
    access_key: str
    secret_key: str
    actions: tuple[str, ...]

    def actions_for(self, bucket: str) -> tuple[str, ...]:
        return tuple(action.format(bucket=bucket) for action in self.actions)


# Who may do what in the S3 gateway (least privilege). The app's pair is the one every stack
# had before these identities existed (then with every right): it keeps its value.
S3_IDENTITIES: tuple[S3Identity, ...] = (
    S3Identity("app", "s3_access_key", "s3_secret_key", ("Read:{bucket}", "Write:{bucket}", "List:{bucket}")),
    # Every bucket is backed up; reading needs no write.
    S3Identity("backup", "s3_backup_access_key", "s3_backup_secret_key", ("Read", "List")),
    # Only `govstack restore` mounts this pair (the backup service's one-off container).
    S3Identity("restore", "s3_restore_access_key", "s3_restore_secret_key", ("Read", "Write", "List")),
    # The deploy's bucket setup (create, versioning, lifecycle); no service mounts it.
    S3Identity("admin", "s3_admin_access_key", "s3_admin_secret_key", ("Admin", "Read", "Write", "List", "Tagging")),
)
S3_IDENTITY_BY_NAME = {identity.name: identity for identity in S3_IDENTITIES}


def s3_identity_of(secret: str) -> S3Identity | None:
    """The S3 identity whose key pair ``secret`` is one half of."""
    return next((i for i in S3_IDENTITIES if secret in (i.access_key, i.secret_key)), None)


# Not generated like the others but guarded the same way: the edge's TLS key.
TLS_KEY_OWNER_UID = NGINX_UID
