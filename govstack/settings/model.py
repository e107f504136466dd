"""The one typed settings model of a govstack host (``Settings``): every
section, the host-level keys, and the checks that span sections."""

from __future__ import annotations

import hashlib
import ipaddress
import json
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any

from pydantic import Field, field_validator, model_validator

from govstack.settings.analytics import AnalyticsSettings
from govstack.settings.app import AppSettings
from govstack.settings.backup import BackupSettings
from govstack.settings.base import Section
from govstack.settings.catalog import OFFSITE_SECRETS, PITR_OFFSITE_SECRETS, SECRET_SPECS
from govstack.settings.compliance import ComplianceSettings
from govstack.settings.cost import CostSettings
from govstack.settings.edge import EdgeSettings
from govstack.settings.engine import EngineSettings
from govstack.settings.images import ImageSettings
from govstack.settings.logs import LogsSettings
from govstack.settings.monitoring import MonitoringSettings
from govstack.settings.network import NetworkSettings
from govstack.settings.object_store import ObjectStoreSettings
from govstack.settings.paths import StackPaths
from govstack.settings.postgres import PostgresSettings
from govstack.settings.resources import Resources, default_resources
from govstack.settings.runbooks import RunbookSettings


class Settings(Section):
    """Everything one host needs. Built by :func:`build_settings`."""

    stack_root: str = Field("/opt/govstack", description="everything on the host lives below it")
    # Compose project name of the data tier and edge; app colors are
    # `<project>-blue` / `<project>-green`.
    project: str = Field(
        "govstack",
        pattern=r"^[a-z][a-z0-9-]{1,30}$",
        description="Compose project; app colors are <project>-blue/-green",
    )
    engine: EngineSettings = EngineSettings()
    images: ImageSettings = ImageSettings()
    postgres: PostgresSettings = PostgresSettings()
    object_store: ObjectStoreSettings = ObjectStoreSettings()
    edge: EdgeSettings = EdgeSettings()
    app: AppSettings = AppSettings()
    analytics: AnalyticsSettings = AnalyticsSettings()
    network: NetworkSettings = NetworkSettings()
    backup: BackupSettings = BackupSettings()
    monitoring: MonitoringSettings = MonitoringSettings()
    cost: CostSettings = CostSettings()
    compliance: ComplianceSettings = ComplianceSettings()
    logs: LogsSettings = LogsSettings()
    runbooks: RunbookSettings = RunbookSettings()
    resources: dict[str, Resources] = Field(
        default_factory=default_resources, description="per-service memory_mb/cpus/pids limits"
    )
    # Secret values supplied by the operator instead of generated ones.
    # Never rendered into anything but the secret files themselves.
    secrets: dict[str, str] = Field(
        default_factory=dict, repr=False, description="operator-supplied secret values instead of generated ones"
    )
    # How long `compose up --wait` may take before the deploy fails.
    healthy_timeout_s: int = Field(300, ge=10, description="how long services may take to become healthy")
    # Split inventories (hosts in groups edge/app/data/monitoring, govstack/roles.py).
    address: str | None = Field(
        None, description="private IP other hosts reach this one on (split inventories); null = ssh_hostname"
    )
    firewall: bool = Field(
        True, description="split inventories: iptables lets only the hosts that need them reach published ports"
    )
    shared_secrets_dir: str | None = Field(
        None,
        description="controller directory of its copies of a split inventory's secrets (the hosts' values "
        "win, a missing copy is adopted from them); null = $GOVSTACK_SECRETS_HOME (default "
        "~/.local/share/govstack/secrets)/<project>-<first data host>",
    )

    @field_validator("stack_root")
    @classmethod
    def _absolute(cls, value: str) -> str:
        path = PurePosixPath(value)
        if not path.is_absolute() or path == PurePosixPath("/"):
            raise ValueError("must be an absolute path below /")
        return str(path)

    @field_validator("address")
    @classmethod
    def _address_ip(cls, value: str | None) -> str | None:
        if value is not None:
            ipaddress.ip_address(value)
        return value

    @field_validator("resources", mode="before")
    @classmethod
    def _known_services(cls, value: Any) -> Any:
        if not isinstance(value, Mapping):
            return value
        defaults = default_resources()
        unknown = set(value) - set(defaults)
        if unknown:
            raise ValueError(
                f"unknown service {sorted(unknown)[0]!r}; allowed: {', '.join(sorted(defaults))}"
            )
        merged = {name: res.model_dump() for name, res in defaults.items()}
        for name, res in value.items():
            merged[name] = {**merged[name], **(res.model_dump() if isinstance(res, Resources) else res)}
        return merged

    @model_validator(mode="after")
    def _app_limits_fit_their_containers(self) -> Settings:
        worker = self.resources["worker"].memory_mb
        if worker is not None and self.app.extract_memory_mb > worker // 2:
            raise ValueError(
                f"app.extract_memory_mb ({self.app.extract_memory_mb}) must be at most half of "
                f"resources.worker.memory_mb ({worker}): the worker and its model live beside the sandbox"
            )
        api = self.resources["app"].memory_mb
        if api is not None and self.app.upload_spool_mb > api // 2:
            raise ValueError(
                f"app.upload_spool_mb ({self.app.upload_spool_mb}) must be at most half of "
                f"resources.app.memory_mb ({api}): the spool is a tmpfs, charged to the API's memory"
            )
        return self

    @model_validator(mode="after")
    def _smtp_password_supplied(self) -> Settings:
        email = self.monitoring.email
        if email and email.auth_username and "alertmanager_smtp_password" not in self.secrets:
            raise ValueError("monitoring.email.auth_username needs secrets.alertmanager_smtp_password")
        return self

    @model_validator(mode="after")
    def _offsite_keys_supplied(self) -> Settings:
        missing = [name for name in OFFSITE_SECRETS if name not in self.secrets]
        if self.backup.offsite is not None and missing:
            raise ValueError(f"backup.offsite needs secrets.{missing[0]} (the offsite store's key)")
        return self

    @model_validator(mode="before")
    @classmethod
    def _pitr_offsite_keys_default(cls, data: Any) -> Any:
        """pgBackRest uses the restic job's offsite key pair unless the inventory gives it
        its own (an S3 identity of its own, say): one pair to supply, two files (each
        tool's uid reads its own copy)."""
        if not isinstance(data, Mapping):
            return data
        backup, secrets = data.get("backup") or {}, data.get("secrets") or {}
        pitr = (backup.get("pitr") or {}) if isinstance(backup, Mapping) else {}
        lane = (data.get("images") or {}).get("lane", "offline") if isinstance(data.get("images"), Mapping) \
            else "offline"
        wanted = isinstance(backup, Mapping) and backup.get("offsite") and isinstance(secrets, Mapping) \
            and pitr.get("enabled", lane == "offline") is not False and lane == "offline"
        if wanted and all(name in secrets for name in OFFSITE_SECRETS):
            derived = {pg: secrets[restic] for pg, restic in zip(PITR_OFFSITE_SECRETS, OFFSITE_SECRETS, strict=True)
                       if pg not in secrets}
            if derived:
                data = {**data, "secrets": {**secrets, **derived}}
        return data

    @model_validator(mode="after")
    def _pitr_possible(self) -> Settings:
        wanted = self.backup.pitr.enabled
        if wanted and self.images.lane == "upstream":
            raise ValueError("backup.pitr.enabled: the upstream lane's postgres image has no pgBackRest "
                             "(leave it null there; see docs/operations.md)")
        if wanted and not self.backup.enabled:
            raise ValueError("backup.pitr.enabled needs backup.enabled (the repository lives on the backup volume)")
        if self.pitr_enabled and self.backup.offsite is not None:
            if not self.backup.offsite.endpoint.startswith("https://"):
                raise ValueError("backup.offsite.endpoint must be https:// while backup.pitr is on "
                                 "(pgBackRest reaches S3 over TLS only)")
            missing = [name for name in PITR_OFFSITE_SECRETS if name not in self.secrets]
            if missing:
                raise ValueError(f"backup.offsite with backup.pitr needs secrets.{missing[0]} "
                                 "(pgBackRest's key for the offsite store; may equal the restic one)")
        return self

    @property
    def pitr_enabled(self) -> bool:
        """pgBackRest archives WAL and takes base backups on this stack."""
        pitr = self.backup.pitr
        if pitr.enabled is not None:
            return pitr.enabled
        return self.backup.enabled and self.images.lane == "offline"

    @field_validator("secrets")
    @classmethod
    def _known_secrets(cls, value: dict[str, str]) -> dict[str, str]:
        for name, secret in value.items():
            if name not in SECRET_SPECS:
                raise ValueError(
                    f"unknown secret {name!r}; allowed: {', '.join(sorted(SECRET_SPECS))}"
                )
            if len(secret) < 16 or not secret.isprintable() or " " in secret:
                raise ValueError(f"secret {name!r} must be 16+ printable characters without spaces")
        return value

    # Paths on the host: one place (StackPaths); the common ones by name.
    @property
    def paths(self) -> StackPaths:
        return StackPaths(self.stack_root, self.backup.root, self.compliance.reports_dir)

    @property
    def secrets_dir(self) -> str:
        return self.paths.secrets_dir

    @property
    def config_dir(self) -> str:
        return self.paths.config_dir

    @property
    def data_dir(self) -> str:
        return self.paths.data_dir

    @property
    def build_dir(self) -> str:
        return self.paths.build_dir

    @property
    def compose_file(self) -> str:
        return self.paths.compose_file

    @property
    def public_url(self) -> str:
        port = "" if self.edge.https_port == 443 else f":{self.edge.https_port}"
        return f"https://{self.edge.hostname}{port}"

    def config_hash(self) -> str:
        """A short stable hash of the settings, secrets excluded (for the ledger)."""
        # The runbooks' contacts are for people, not hosts: changing them redeploys nothing.
        data = self.model_dump(mode="json", exclude={"secrets", "runbooks"})
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
