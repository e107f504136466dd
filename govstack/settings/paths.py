"""Every path on a host that derives from the stack root: one place per path.

``Settings.paths`` builds this from ``stack_root`` and the two settings that
move a directory elsewhere (``backup.root``, ``compliance.reports_dir``).
"""

from __future__ import annotations

from dataclasses import dataclass

# node-exporter's textfile directory, under the data directory.
TEXTFILE_DIR = "metrics"


@dataclass(frozen=True)
class BackupPaths:
    """The backup job's paths on the host."""

    root: str
    repository: str
    cache: str
    mirror: str
    evidence: str
    config_dir: str
    config_file: str
    crontab: str
    metrics_dir: str
    metrics_file: str
    drill_aside: str


@dataclass(frozen=True)
class ConfigPaths:
    """The services' config directories below ``<stack_root>/config`` and the
    files govstack writes there; each directory is mounted read-only into its
    service (templates/compose/services/)."""

    root: str

    def service_dir(self, service: str) -> str:
        return f"{self.root}/{service}"

    @property
    def postgres_dir(self) -> str:
        return self.service_dir("postgres")

    @property
    def postgres_conf(self) -> str:
        return f"{self.postgres_dir}/postgresql.conf"

    @property
    def nginx_dir(self) -> str:
        return self.service_dir("nginx")

    @property
    def nginx_conf(self) -> str:
        """The config nginx serves."""
        return f"{self.nginx_dir}/nginx.conf"

    @property
    def nginx_candidate(self) -> str:
        """A new nginx.conf, installed only after `nginx -t` accepts it."""
        return f"{self.nginx_dir}/nginx.conf.candidate"

    @property
    def nginx_api_key_script(self) -> str:
        """The njs module nginx.conf imports (upstream lane)."""
        return f"{self.nginx_dir}/api_key.js"

    @property
    def edge_tls_dir(self) -> str:
        return f"{self.nginx_dir}/tls"

    @property
    def edge_cert(self) -> str:
        return f"{self.edge_tls_dir}/tls.crt"

    @property
    def edge_key(self) -> str:
        return f"{self.edge_tls_dir}/tls.key"

    @property
    def seaweedfs_dir(self) -> str:
        return self.service_dir("seaweedfs")

    @property
    def seaweedfs_entrypoint(self) -> str:
        """The entrypoint the official SeaweedFS image runs (upstream lane)."""
        return f"{self.seaweedfs_dir}/seaweedfs-entrypoint"

    @property
    def prometheus_dir(self) -> str:
        return self.service_dir("prometheus")

    @property
    def prometheus_config(self) -> str:
        return f"{self.prometheus_dir}/prometheus.yml"

    @property
    def prometheus_rules_dir(self) -> str:
        return f"{self.prometheus_dir}/rules"

    @property
    def prometheus_targets_dir(self) -> str:
        """The app's file_sd target lists, re-read live (not part of Prometheus' config digest)."""
        return f"{self.prometheus_dir}/targets"

    @property
    def alertmanager_dir(self) -> str:
        return self.service_dir("alertmanager")

    @property
    def alertmanager_config(self) -> str:
        return f"{self.alertmanager_dir}/alertmanager.yml"

    @property
    def blackbox_dir(self) -> str:
        return self.service_dir("blackbox")

    @property
    def blackbox_config(self) -> str:
        return f"{self.blackbox_dir}/config.yml"

    @property
    def grafana_dir(self) -> str:
        return self.service_dir("grafana")

    @property
    def backup_dir(self) -> str:
        return self.service_dir("backup")

    @property
    def pgbackrest_crontab(self) -> str:
        """The pgbackrest sidecar's schedule (full/diff backups, verify), beside the backup job's."""
        return f"{self.backup_dir}/pgbackrest.crontab"

    @property
    def pgbackrest_dir(self) -> str:
        """pgBackRest's config, mounted into Postgres (archive_command) and the pgbackrest sidecar."""
        return self.service_dir("pgbackrest")

    @property
    def pgbackrest_conf(self) -> str:
        return f"{self.pgbackrest_dir}/pgbackrest.conf"

    @property
    def postgres_exporter_dir(self) -> str:
        return self.service_dir("postgres-exporter")

    @property
    def postgres_exporter_queries(self) -> str:
        """The exporter's custom queries (WAL archive lag)."""
        return f"{self.postgres_exporter_dir}/queries.yaml"

    @property
    def rsyslog_dir(self) -> str:
        return self.service_dir("rsyslog")

    @property
    def rsyslog_conf(self) -> str:
        return f"{self.rsyslog_dir}/rsyslog.conf"


@dataclass(frozen=True)
class PitrPaths:
    """pgBackRest's files on the host."""

    repository: str
    config_dir: str
    config_file: str
    crontab: str
    metrics_file: str


@dataclass(frozen=True)
class StackPaths:
    root: str
    backup_root: str | None = None
    reports_root: str | None = None

    @property
    def secrets_dir(self) -> str:
        return f"{self.root}/secrets"

    @property
    def config_dir(self) -> str:
        return f"{self.root}/config"

    @property
    def config(self) -> ConfigPaths:
        return ConfigPaths(self.config_dir)

    @property
    def data_dir(self) -> str:
        return f"{self.root}/data"

    def data_path(self, name: str) -> str:
        return f"{self.data_dir}/{name}"

    @property
    def build_dir(self) -> str:
        return f"{self.root}/build"

    @property
    def compose_file(self) -> str:
        """The data tier's and the edge's Compose file."""
        return f"{self.root}/docker-compose.yml"

    @property
    def app_dir(self) -> str:
        """The app colors' Compose files."""
        return f"{self.root}/app"

    def app_compose_file(self, color: str) -> str:
        return f"{self.app_dir}/{color}.yml"

    @property
    def state_dir(self) -> str:
        """The release record, the ledger and the deploy lock."""
        return f"{self.root}/state"

    @property
    def release_file(self) -> str:
        return f"{self.state_dir}/release.json"

    @property
    def ledger_file(self) -> str:
        return f"{self.state_dir}/ledger.jsonl"

    @property
    def lock_file(self) -> str:
        """The stack lock (flock; govstack/lock.py) and who holds it."""
        return f"{self.state_dir}/govstack.lock"

    @property
    def lock_holder_file(self) -> str:
        return f"{self.state_dir}/lock-holder.json"

    @property
    def attempt_file(self) -> str:
        """The command in flight; one the next command finds was interrupted."""
        return f"{self.state_dir}/attempt.json"

    @property
    def edge_tls_loaded_file(self) -> str:
        """sha256 of the edge certificate and key nginx was last (re)loaded with: a renewed
        or replaced pair differs from it, and the next `govstack up` reloads nginx."""
        return f"{self.state_dir}/edge-tls-loaded.sha256"

    def compose_hash_file(self, project: str) -> str:
        """``compose config --hash`` of a project's compose file, under a key of what Compose
        computes it from (commands.compose_hashes): read instead of starting the Compose CLI."""
        return f"{self.state_dir}/compose-hash-{project}.txt"

    @property
    def pitr_stanza_stamp_file(self) -> str:
        """Digest of what pgBackRest's sidecar last found ok (commands.pitr_stanza_key): while
        the same key reads on the host, a no-op `govstack up` does not ask the sidecar again."""
        return f"{self.state_dir}/pgbackrest-stanza-ok.sha256"

    @property
    def pre_deploy_copy_file(self) -> str:
        """The backup job's summary of a release's pre-deploy copy (its run id), until the ledger takes it."""
        return f"{self.state_dir}/pre-deploy-copy.json"

    @property
    def rollback_path_file(self) -> str:
        """Which path the last rollback took (its kept containers, or a full
        release and why), until the ledger takes it."""
        return f"{self.state_dir}/rollback-path.json"

    @property
    def backups_dir(self) -> str:
        """The backup root: the restic repository, its cache, the objects mirror, drill evidence."""
        return self.backup_root or f"{self.root}/backups"

    @property
    def pre_deploy_dumps(self) -> str:
        """Where releases used to leave a plain pg_dump before their migrations
        (nothing writes there since those copies go to restic; old files stay)."""
        return f"{self.root}/backups/pre-deploy"

    @property
    def logs_dir(self) -> str:
        """Container logs kept for auditors: <service>/<YYYY-MM-DD>.jsonl.gz (rsyslog writes them)."""
        return f"{self.root}/logs"

    @property
    def reports_dir(self) -> str:
        return self.reports_root or f"{self.root}/reports"

    @property
    def metrics_dir(self) -> str:
        """node-exporter's textfile directory (the backup job writes its freshness there)."""
        return self.data_path(TEXTFILE_DIR)

    @property
    def pitr_scratch_prefix(self) -> str:
        """A point-in-time restore's scratch cluster: ``<prefix><time>`` beside the data (its
        container is named ``<project>-<that directory's name>``)."""
        return self.data_path("postgres-pitr-")

    @property
    def drill_aside(self) -> str:
        """Where a drill moves data directories: the data's own filesystem (a rename)."""
        return self.data_path(".drill-aside")

    @property
    def backup(self) -> BackupPaths:
        root = self.backups_dir
        config = self.config.backup_dir
        return BackupPaths(
            root=root,
            repository=f"{root}/restic",
            cache=f"{root}/cache",
            mirror=f"{root}/mirror",
            evidence=f"{root}/evidence",
            config_dir=config,
            config_file=f"{config}/backup.json",
            crontab=f"{config}/crontab",
            metrics_dir=self.metrics_dir,
            metrics_file=f"{self.metrics_dir}/backup.prom",
            drill_aside=self.drill_aside,
        )

    @property
    def pitr(self) -> PitrPaths:
        config = self.config
        return PitrPaths(
            repository=f"{self.backups_dir}/pgbackrest",
            config_dir=config.pgbackrest_dir,
            config_file=config.pgbackrest_conf,
            crontab=config.pgbackrest_crontab,
            metrics_file=f"{self.metrics_dir}/pgbackrest.prom",
        )
