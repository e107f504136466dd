"""What a host gets: settings plus the facts of that host, resolved into the
values templates render (tuning, memory limits, image references).

Templates only read a StackPlan; they never compute policy themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from govstack import catalog, images, sbom
from govstack.catalog import HOST_PORTS, SERVICES, BackupContainerPaths, PitrContainerPaths
from govstack.release import COLORS, Color, Release, first_release
from govstack.roles import ALL_ROLES, Member, Topology
from govstack.secrets import SECRET_SPECS, host_secret_names, secret_path
from govstack.settings import Resources, Settings
from govstack.settings.catalog import S3_IDENTITIES
from govstack.settings.paths import TEXTFILE_DIR, BackupPaths, PitrPaths
from govstack.tuning import HostResources, postgres_memory_budget_mb, postgres_tuning

# Ports inside the stack's networks (service catalog); only nginx publishes anything.
INTERNAL_PORTS = catalog.internal_ports()

# Postgres' own processes beside connections and background workers: its
# helpers (postmaster, checkpointer, background writer, walwriter, the
# autovacuum and logical replication launchers: 6), autovacuum workers (3)
# and WAL senders (10) at their defaults, and docker exec sessions
# (pg_isready, psql) with room to spare.
POSTGRES_FIXED_PROCESSES = 32
# The analytics service's Postgres role: it reads usage events only (app migration 0006).
ANALYTICS_ROLE = "govstack_analytics"

# Where the edge serves presigned object downloads (proxied to the S3 gateway).
S3_PUBLIC_PATH = "/s3"

# SeaweedFS gRPC mTLS files, made by the deploy for the upstream lane only.
GRPC_PREFIX = "seaweedfs_grpc"
GRPC_FILES = [f"{GRPC_PREFIX}_ca.crt", f"{GRPC_PREFIX}.crt", f"{GRPC_PREFIX}.key"]

# Service -> uid it runs as; secret files and data dirs are owned to match.
SERVICE_UIDS = {name: svc.uid for name, svc in SERVICES.items()}


def data_dirs() -> dict[str, int]:
    """Data directories under <stack_root>/data, with their owners."""
    return {
        **{name: svc.uid for name, svc in SERVICES.items() if svc.data_dir},
        # Textfiles for node-exporter (the backup job writes its freshness here).
        TEXTFILE_DIR: SERVICES["node-exporter"].uid,
    }


DATA_DIRS = data_dirs()
# Group-writable data directories: the pgbackrest sidecar (Postgres' uid, in
# the owner's group) writes its textfile beside the backup job's.
GROUP_WRITABLE_DATA_DIRS = frozenset({TEXTFILE_DIR})


class BackupPlan:
    """What the compose template reads as ``plan.backup`` (the job's commands,
    roles and files are govstack/backup/)."""

    def __init__(self, settings: Settings) -> None:
        self.stack_settings = settings
        self.settings = settings.backup

    @property
    def enabled(self) -> bool:
        return self.settings.enabled

    @cached_property
    def image(self) -> str:
        return SERVICES["backup"].image(self.stack_settings)

    @property
    def uid(self) -> int:
        return SERVICES["backup"].uid

    @property
    def paths(self) -> BackupPaths:
        return self.stack_settings.paths.backup

    @property
    def container(self) -> BackupContainerPaths:
        return BackupContainerPaths()

    @property
    def secrets(self) -> list[str]:
        return catalog.backup_secrets(self.stack_settings)

    @property
    def offsite(self) -> bool:
        return self.settings.offsite is not None

    @property
    def pitr(self) -> bool:
        return self.stack_settings.pitr_enabled

    @property
    def pitr_paths(self) -> PitrPaths:
        return self.stack_settings.paths.pitr

    @property
    def pitr_container(self) -> PitrContainerPaths:
        return PitrContainerPaths()

    @property
    def pitr_secrets(self) -> list[str]:
        return catalog.pitr_secrets(self.stack_settings)

    @property
    def pitr_uid(self) -> int:
        return SERVICES[catalog.PITR_SERVICE].uid

    @property
    def pitr_socket_volume(self) -> str:
        return catalog.PITR_SOCKET_VOLUME

    @property
    def stanza(self) -> str:
        """pgBackRest's name for this stack's cluster: the Compose project (govstack.backup.plan.stanza)."""
        return self.stack_settings.project


@dataclass(frozen=True)
class StackPlan:
    settings: Settings
    host: HostResources
    # The serving release; None before the first deploy (then: the first release).
    recorded_release: Release | None = field(default=None)
    # This host's part of the stack and, in a split inventory, where the
    # other parts run (govstack/roles.py). Defaults: all-in-one.
    roles: frozenset[str] = field(default=ALL_ROLES)
    topology: Topology | None = field(default=None)
    address: str | None = field(default=None)
    # The host's engine confines containers with AppArmor (facts.DockerAppArmor):
    # every container then names the docker-default profile (CIS Docker 5.1).
    apparmor: bool = field(default=False)

    @property
    def split(self) -> bool:
        """Part of a split inventory: other hosts run some of the stack."""
        return self.topology is not None

    def has_role(self, role: str) -> bool:
        return role in self.roles

    @cached_property
    def release(self) -> Release:
        return self.recorded_release or first_release(self.settings)

    @cached_property
    def postgres_memory_mb(self) -> int:
        configured = self.settings.resources["postgres"].memory_mb
        share = int(self.host.memory_mb * self.settings.postgres.memory_share)
        return postgres_memory_budget_mb(self.host, configured or share)

    @cached_property
    def postgres_conf(self) -> dict[str, str]:
        pg = self.settings.postgres
        return postgres_tuning(
            memory_mb=self.postgres_memory_mb,
            cpus=self.host.cpus,
            max_connections=pg.max_connections,
            storage=pg.storage,
            overrides=pg.overrides,
        )

    def resources(self, service: str) -> Resources:
        res = self.settings.resources[service]
        if service == "postgres":
            return res.model_copy(update={"memory_mb": self.postgres_memory_mb,
                                          "pids": res.pids or self.postgres_pids})
        return res

    @property
    def postgres_pids(self) -> int:
        """Postgres runs a process per connection: every allowed connection,
        the background and parallel workers it may start, and its fixed
        helpers (postmaster, checkpointer, walwriter, ...), with headroom for
        the healthcheck's and operators' `docker exec` sessions."""
        conf = self.postgres_conf
        workers = int(conf.get("max_worker_processes", 8))
        return self.settings.postgres.max_connections + workers + POSTGRES_FIXED_PROCESSES

    def image(self, service: str) -> str:
        return SERVICES[service].image(self.settings)

    @property
    def monitoring_services(self) -> list[str]:
        return [svc.name for svc in catalog.stack_services(self.settings) if svc.tier == "monitoring"]

    @property
    def host_images(self) -> list[str]:
        """Offline lane: every image this host's part of the stack runs (what
        the controller ships it with images.ship_from_controller)."""
        built = [SERVICES[name] for name in self.services if SERVICES[name].offline is not None]
        # The backup job's image (the pgbackrest sidecar's too) is FROM postgres': after it.
        built.sort(key=lambda svc: svc.offline is catalog.backup_image)
        # The base and the SBOM tool: what a host needs to build an image itself (an app release
        # gets its SBOM in a stage of the tool; the tool's own build would need PyPI).
        tags = [images.base_image_tag(self.settings)]
        if self.settings.images.lane == "offline":
            tags.append(sbom.sbom_tool_image(self.settings).tag)
        tags += dict.fromkeys(svc.offline(self.settings).tag for svc in built)
        if self.has_role("app"):
            tags.append(self.app_image(self.release.version))
        return tags

    @property
    def data_dirs(self) -> dict[str, int]:
        """Data directories this host needs, with their owners."""
        wanted = set(self.services) | {TEXTFILE_DIR}
        return {name: uid for name, uid in data_dirs().items() if name in wanted}

    @cached_property
    def backup(self) -> BackupPlan:
        """The backup service's paths, image and secrets."""
        return BackupPlan(self.settings)

    @property
    def networks(self) -> dict[str, str]:
        project = self.settings.project
        return {"data": f"{project}-data", "edge": f"{project}-edge"}

    @property
    def data_services(self) -> list[str]:
        """The data tier's servers (not its backup job)."""
        return [svc.name for svc in catalog.stack_services(self.settings)
                if svc.tier == "data" and svc.published is not None]

    @property
    def services(self) -> list[str]:
        """The services of this host's main Compose project (its roles' part):
        all-in-one in catalog order, split by tier (data, edge, monitoring)."""
        enabled = catalog.stack_services(self.settings)
        if not self.split:
            return [svc.name for svc in enabled]
        mine = [svc for svc in enabled if svc.role is None or self.has_role(svc.role)]
        return [svc.name for svc in sorted(mine, key=lambda svc: catalog.TIERS.index(svc.tier))]

    @property
    def service_records(self) -> list[catalog.Service]:
        """This host's services' catalog records, in catalog order (the compose file's)."""
        return [svc for svc in SERVICES.values() if svc.name in self.services]

    # Where one part of the stack reaches another: Docker DNS names on one
    # host, the data host's private address (published ports) when split.
    # The app's containers are not on the data network when split, so they
    # always use the address; a container on a data network (the backup job,
    # the exporters) must use names for what runs on its own host, because
    # that network has no route to the host's own address.
    def data_tier_host(self, service: str, *, on_data_network: bool = False) -> str:
        if not self.split or (on_data_network and self.has_role("data")):
            return service
        return self.topology.data_address

    def s3_endpoint_from(self, *, on_data_network: bool) -> str:
        store = self.settings.object_store
        if store.kind == "external":
            return store.endpoint or ""
        host = self.data_tier_host("seaweedfs", on_data_network=on_data_network)
        return f"{host}:{INTERNAL_PORTS['seaweedfs_s3']}"

    @property
    def postgres_host(self) -> str:
        return self.data_tier_host("postgres")

    @property
    def chroma_host(self) -> str:
        return self.data_tier_host("chroma")

    @property
    def s3_endpoint(self) -> str:
        return self.s3_endpoint_from(on_data_network=False)

    @property
    def published_data_ports(self) -> dict[str, int]:
        """Split inventory, data host: service -> port published on its private address."""
        if not (self.split and self.has_role("data")):
            return {}
        return {name: SERVICES[name].ports[SERVICES[name].published] for name in self.data_services}

    @property
    def published_metrics_ports(self) -> dict[str, int]:
        """Split inventory: service -> metrics port published on this host's
        private address, for Prometheus on the other monitoring hosts (one on
        this host scrapes it over the local network)."""
        if not (self.split and self.scraped_from and self.settings.monitoring.enabled):
            return {}
        return {name: SERVICES[name].metrics.port for name in self.services
                if SERVICES[name].metrics is not None and SERVICES[name].metrics.published}

    @property
    def scraped_from(self) -> list[str]:
        """Split inventory: addresses of the monitoring hosts other than this one."""
        if not (self.split and self.settings.monitoring.enabled):
            return []
        return sorted(set(self.topology.addresses("monitoring")) - {self.address})

    def members_running(self, svc: catalog.Service) -> list[Member]:
        """Split inventory: the hosts that run a service (one data host runs the
        data tier: roles.Topology.data_address)."""
        if svc.role is None:
            return list(self.topology.members)
        members = self.topology.with_role(svc.role)
        return members[:1] if svc.role == "data" else members

    def published_ports(self, service: str) -> list[tuple[int, int]]:
        """Split inventory: (port on this host's private address, port in the container) of a service."""
        svc = SERVICES[service]
        ports = []
        if service in self.published_data_ports:
            ports.append((self.published_data_ports[service], svc.ports[svc.published]))
        if service in self.published_metrics_ports:
            ports.append((self.published_metrics_ports[service], svc.metrics.port))
        return ports

    def is_this_host(self, member: Member) -> bool:
        return not self.split or member.address == self.address

    @staticmethod
    def worker_metrics_host_port(color: Color) -> int:
        """Split inventory: the port a color's worker metrics are published on, on each app host."""
        return HOST_PORTS["worker"][color]

    @staticmethod
    def app_host_port(color: Color) -> int:
        """Split inventory: the port a color's API is published on, on each app host."""
        return HOST_PORTS["app"][color]

    @staticmethod
    def app_upstream_name(color: Color) -> str:
        return f"app_{color}"

    def app_upstream_servers(self, color: Color) -> list[str]:
        """Split inventory: address:port of the color's API on every app host."""
        return [f"{address}:{self.app_host_port(color)}" for address in self.topology.app_addresses]

    @staticmethod
    def analytics_host_port(color: Color) -> int:
        """Split inventory: the port a color's analytics service is published on, on each app host."""
        return HOST_PORTS["analytics"][color]

    @staticmethod
    def analytics_upstream_name(color: Color) -> str:
        return f"analytics_{color}"

    def analytics_upstream_servers(self, color: Color) -> list[str]:
        """Split inventory: address:port of the color's analytics service on every app host."""
        return [f"{address}:{self.analytics_host_port(color)}" for address in self.topology.app_addresses]

    def _allowed(self, name: str) -> set[str]:
        """The addresses a service's firewall openings admit (its record's clients,
        plus the monitoring hosts where it is probed or scraped)."""
        svc = SERVICES[name]
        allowed = {address for role in svc.clients for address in self.topology.addresses(role)}
        if svc.probed and self.settings.monitoring.enabled:
            allowed.update(self.topology.addresses("monitoring"))
        return allowed

    @property
    def firewall_openings(self) -> list[tuple[int, list[str]]]:
        """Split inventory: (port published on this host's private address,
        addresses of the hosts allowed to open connections to it)."""
        if not self.split:
            return []
        openings: dict[int, set[str]] = {}
        for service, port in self.published_data_ports.items():
            openings.setdefault(port, set()).update(self._allowed(service))
        scrapers = set(self.topology.addresses("monitoring")) if self.settings.monitoring.enabled else set()
        for port in self.published_metrics_ports.values():
            openings.setdefault(port, set()).update(scrapers)
        if self.has_role("app"):
            for service, ports in HOST_PORTS.items():
                if not SERVICES[service].enabled(self.settings):
                    continue
                allowed = self._allowed(service)
                for port in ports.values():
                    if allowed or SERVICES[service].clients:
                        openings.setdefault(port, set()).update(allowed)
        return [(port, sorted(sources - {self.address})) for port, sources in sorted(openings.items())]

    def edge_in_stack_port(self, scheme: str) -> int:
        """nginx's port for clients inside the stack (its healthcheck, the TLS
        probe): the published one, unless that speaks the PROXY protocol."""
        proxy_protocol = self.settings.edge.real_ip_header == "proxy_protocol"
        return INTERNAL_PORTS[f"nginx_{scheme}{'_in_stack' if proxy_protocol else ''}"]

    @property
    def edge_error_details(self) -> dict[int, str]:
        """Status -> detail of the errors nginx answers itself, in the app's
        JSON shape (the app's OpenAPI documents them as ErrorResponse)."""
        return {
            400: "bad request",
            403: "forbidden",
            404: "not found",
            413: f"request body larger than {self.settings.app.max_upload_mb} MB",
            414: "request URI too long",
            429: "rate limit exceeded",
            500: "internal error",
            503: "service unavailable",
        }

    @property
    def app_trusted_proxies(self) -> str:
        """Where the app takes X-Forwarded-* from: the edge hosts when split."""
        if self.split:
            return ",".join(f"{address}/32" for address in self.topology.edge_addresses)
        return self.settings.network.data_subnet

    @property
    def upstream_seaweedfs(self) -> bool:
        """Upstream lane, and this host runs SeaweedFS (it needs the gRPC mTLS material)."""
        return (self.settings.images.lane == "upstream" and self.has_role("data")
                and "seaweedfs" in self.data_services)

    @property
    def secret_names(self) -> list[str]:
        """The secrets (govstack/secrets.py) this host holds: those its roles read."""
        return host_secret_names(self.settings, self.roles)

    @property
    def compose_secrets(self) -> dict[str, str]:
        """Compose secret name -> file on the host (every file the host holds)."""
        names = list(self.secret_names)
        if self.upstream_seaweedfs:
            names += GRPC_FILES
        return {name: f"{self.settings.secrets_dir}/{name}" for name in names}

    @property
    def stale_secret_files(self) -> list[str]:
        """Files of secrets this host's roles do not read (a host of a split
        inventory, or one whose groups changed): the deploy removes them."""
        names = [name for name in sorted(SECRET_SPECS) if not SECRET_SPECS[name].needed_by & self.roles]
        if not self.has_role("data"):
            names += GRPC_FILES
        return [f"{self.settings.secrets_dir}/{name}" for name in names]

    @property
    def ports(self) -> dict[str, int]:
        return INTERNAL_PORTS

    @property
    def uids(self) -> dict[str, int]:
        return {name: svc.uid for name, svc in SERVICES.items()}

    def data_path(self, service: str) -> str:
        return self.settings.paths.data_path(service)

    @property
    def log_projects(self) -> list[str]:
        """The Compose projects whose containers' logs this host keeps (rsyslog)."""
        return [self.settings.project, *(self.app_project(color) for color in COLORS)]

    # The app: one Compose project per color, on the stack's networks.
    def app_project(self, color: Color) -> str:
        return f"{self.settings.project}-{color}"

    def app_compose_file(self, color: Color) -> str:
        return self.settings.paths.app_compose_file(color)

    @staticmethod
    def app_alias(color: Color) -> str:
        """DNS name of a color's API on the data network (service names clash across colors)."""
        return f"app-{color}"

    @staticmethod
    def analytics_alias(color: Color) -> str:
        """DNS name of a color's analytics service on the data network."""
        return f"analytics-{color}"

    @property
    def analytics_role(self) -> str:
        return ANALYTICS_ROLE

    @property
    def app_services(self) -> list[str]:
        """The services of each color's Compose project."""
        return ["api", "worker", *(["analytics"] if self.settings.analytics.enabled else [])]

    def app_image(self, version: str) -> str:
        return images.app_image(self.settings, version).tag

    @property
    def s3_public_path(self) -> str:
        return S3_PUBLIC_PATH

    @property
    def s3_public_url(self) -> str:
        return f"{self.settings.public_url}{S3_PUBLIC_PATH}"

    @property
    def app_secrets(self) -> list[str]:
        """What the API and the worker both read."""
        return ["postgres_app_password", "s3_access_key", "s3_secret_key", "app_admin_api_key"]

    @property
    def seaweedfs_secrets(self) -> list[str]:
        """The S3 gateway reads every identity's key pair (settings.catalog.S3_IDENTITIES)."""
        return [*(name for identity in S3_IDENTITIES for name in (identity.access_key, identity.secret_key)),
                "s3_sse_key"]

    @property
    def s3_identities(self) -> str:
        """The gateway's identities for its entrypoint (S3_IDENTITIES, no secret in it): one line per
        identity, "<name> <access key secret> <secret key secret> <action>,<action>..."."""
        bucket = self.settings.object_store.bucket
        return "\n".join(f"{i.name} {i.access_key} {i.secret_key} {','.join(i.actions_for(bucket))}"
                         for i in S3_IDENTITIES)

    @property
    def migrate_secrets(self) -> list[str]:
        """The one-off migrate service's: the schema owner's password (no other container
        mounts it) and the bootstrap admin key it stores hashed."""
        return ["postgres_owner_password", "app_admin_api_key"]

    @property
    def api_secrets(self) -> list[str]:
        """The API alone also holds the key that pseudonymises usage-event actors."""
        return [*self.app_secrets, *(["analytics_actor_key"] if self.settings.analytics.enabled else [])]

    @property
    def analytics_secrets(self) -> list[str]:
        """The analytics service reads its own role's password, nothing else."""
        return ["postgres_analytics_password"] if self.settings.analytics.enabled else []

    def schema_stamp_files(self, color: Color) -> list[str]:
        """What, besides the app image, a migrate run of ``color`` is made from
        (commands.schema_stamp): its compose file and the secrets migrate reads."""
        return [self.app_compose_file(color),
                *(secret_path(self.settings, name) for name in self.migrate_secrets)]

    @property
    def app_project_secrets(self) -> list[str]:
        """Every secret a color's Compose project mounts somewhere."""
        return list(dict.fromkeys(self.api_secrets + self.migrate_secrets + self.analytics_secrets))
