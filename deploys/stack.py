"""The data tier and the edge: directories, secrets, TLS, rendered config, Compose."""

from __future__ import annotations

import posixpath

from pyinfra import logger
from pyinfra.api import deploy
from pyinfra.operations import files

from govstack.catalog import s3_pair
from govstack.images import IMAGE_TEMPLATES
from govstack.operations import (
    compose_project_up,
    file_installed,
    files_rendered,
    grpc_mtls_material,
    nginx_certificate_loaded,
    nginx_config_applied,
    paths_owned,
    s3_bucket_configured,
    s3_bucket_versioned,
    secret_files,
    self_signed_certificate,
)
from govstack.plan import GROUP_WRITABLE_DATA_DIRS, GRPC_PREFIX, SERVICE_UIDS, StackPlan
from govstack.render import nginx_candidate_path, nginx_live_path, rendered_files
from govstack.secret_store import sse_marker
from govstack.secrets import SECRET_SPECS, TLS_KEY_OWNER_UID, secret_path


@deploy("Stack directories")
def create_stack_directories(plan: StackPlan):
    s = plan.settings
    wanted = [(s.stack_root, 0, 0, "750"), (s.secrets_dir, 0, 0, "700"), (s.config_dir, 0, 0, "755"),
              (s.data_dir, 0, 0, "755")]
    for name, uid in plan.data_dirs.items():
        mode = "770" if name in GROUP_WRITABLE_DATA_DIRS else "700"
        wanted.append((plan.data_path(name), uid, uid, mode))
    wanted.append((s.paths.app_dir, 0, 0, "755"))
    wanted += [(s.paths.config.service_dir(sub), 0, 0, "755") for sub in ("postgres", "nginx", "seaweedfs")]
    wanted.append((s.paths.config.edge_tls_dir, 0, 0, "755"))
    if "rsyslog" in plan.services:
        # Container logs kept for auditors: root's (rsyslog writes them), no one else reads them.
        wanted.append((s.paths.logs_dir, 0, 0, "750"))
    paths_owned(name=f"Stack root, secrets, config, data and log directories ({len(wanted)})", paths=wanted)


@deploy("Secrets")
def ensure_secrets(plan: StackPlan, values: dict[str, str | None]):
    s = plan.settings
    # Only the secrets this host's roles read (all of them on an all-in-one
    # host), with the values govstack.secret_store found before anything
    # changed: the hosts' own first, so a deploy never changes a secret a
    # host holds (a rotation does: `govstack secret rotate`). None: the
    # host's file stays, or is generated once when no one holds a value.
    secret_files(
        name=f"Secrets ({len(values)}): present, 0600, owned by their reader",
        secrets=[(secret_path(s, name), SECRET_SPECS[name].owner_uid, SECRET_SPECS[name].length, value)
                 for name, value in values.items()],
    )
    if plan.upstream_seaweedfs:
        grpc_mtls_material(
            name="SeaweedFS gRPC mTLS material (upstream image has no openssl)",
            directory=s.secrets_dir,
            prefix=GRPC_PREFIX,
            owner_uid=SERVICE_UIDS["seaweedfs"],
        )
    # Least privilege on a host whose roles no longer read a secret (it held
    # every secret before secrets followed roles, or its groups changed): the
    # copy goes; the controller and the hosts that read it keep theirs.
    for path in plan.stale_secret_files:
        files.file(name=f"No stale secret {path.rsplit('/', 1)[1]}", path=path, present=False)


def edge_tls_files(plan: StackPlan) -> str:
    """Shell glob of the edge certificate and key on the host."""
    return f"{plan.settings.paths.config.edge_tls_dir}/tls.*"


@deploy("Edge TLS")
def ensure_edge_certificate(plan: StackPlan) -> bool:
    """The edge certificate and key on the host; True when this deploy renews or replaces them."""
    s = plan.settings
    config = s.paths.config
    if s.edge.tls_cert_path is None:
        return self_signed_certificate(
            name=f"Self-signed certificate for {s.edge.hostname}",
            cert_path=config.edge_cert,
            key_path=config.edge_key,
            hostname=s.edge.hostname,
            key_owner_uid=TLS_KEY_OWNER_UID,
        ).will_change
    # Operator-provided certificate: copied next to the config so nginx (uid
    # 101) can read the key without loosening the original's permissions.
    installed = [
        file_installed(
            name=f"Edge {posixpath.basename(dest)} from {src}",
            src=src,
            dest=dest,
            uid=TLS_KEY_OWNER_UID,
            mode=mode,
        )
        for src, dest, mode in ((s.edge.tls_cert_path, config.edge_cert, "644"),
                                (s.edge.tls_key_path, config.edge_key, "600"))
    ]
    return any(op.will_change for op in installed)


@deploy("Stack configuration")
def render_stack_files(plan: StackPlan):
    rendered = rendered_files(plan)
    files_rendered(name=f"Rendered stack files ({len(rendered)})", files=rendered, mode="644")
    if plan.upstream_seaweedfs:
        files.put(
            name="SeaweedFS entrypoint for the official image",
            src=str(IMAGE_TEMPLATES / "seaweedfs" / "seaweedfs-entrypoint"),
            dest=plan.settings.paths.config.seaweedfs_entrypoint,
            mode="755",
        )


@deploy("Stack services")
def start_stack(plan: StackPlan):
    s = plan.settings
    compose_project_up(
        name=f"Compose project {s.project} up and healthy",
        project=s.project,
        compose_file=s.compose_file,
        service_images={service: plan.image(service) for service in plan.services},
        wait_timeout_s=s.healthy_timeout_s,
        hash_cache=s.paths.compose_hash_file(s.project),
    )


@deploy("Object store")
def ensure_object_store_bucket(plan: StackPlan):
    s = plan.settings
    o = s.object_store
    if "backup" in plan.services:  # the S3 client that sets the rules lives in its image
        access, secret = s3_pair(s, "admin")
        s3_bucket_configured(
            name=f"Bucket {o.bucket}: versioned, encrypted (SSE-S3), earlier versions kept "
                 f"{o.noncurrent_version_days} d, incomplete uploads aborted after {o.abort_multipart_days} d",
            project=s.project, compose_file=s.compose_file, bucket=o.bucket,
            noncurrent_days=o.noncurrent_version_days, abort_days=o.abort_multipart_days,
            access_file=secret_path(s, access), secret_file=secret_path(s, secret),
            encrypt=True, marker=sse_marker(s))
    else:
        s3_bucket_versioned(name=f"Bucket {o.bucket} exists, versioned", project=s.project,
                            compose_file=s.compose_file, bucket=o.bucket)
        logger.warning(f"note: the backup service is off, so bucket {o.bucket}'s lifecycle rules and default "
                       "encryption are not set (its image has the S3 client that sets them): earlier versions are "
                       "kept until deleted by hand, and objects are stored unencrypted")


@deploy("Edge config")
def apply_edge_config(plan: StackPlan, certificate_renewed: bool = False):
    s = plan.settings
    nginx_config_applied(
        name="nginx runs the rendered config (nginx -t, then graceful reload)",
        project=s.project,
        compose_file=s.compose_file,
        candidate=nginx_candidate_path(plan),
        live=nginx_live_path(plan),
    )
    nginx_certificate_loaded(
        name="nginx serves the certificate on disk (nginx -t, then graceful reload)",
        project=s.project,
        compose_file=s.compose_file,
        tls_files=edge_tls_files(plan),
        stamp=s.paths.edge_tls_loaded_file,
        renewed=certificate_renewed,
    )
