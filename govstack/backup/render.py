"""The files the backup services read on a host: the job's config
(backup.json, secrets as paths only), its crontab, and with point-in-time
recovery pgBackRest's config and the pgbackrest sidecar's crontab."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from govstack.backup.plan import (
    BACKUP_ROLE,
    OFFSITE_SECRETS,
    PASSWORD_SECRET,
    ROLE_SECRET,
    VECTOR_DATABASE,
    VECTOR_WATERMARK_SQL,
    ContainerPaths,
    PitrContainerPaths,
    backup_settings,
    host_paths,
    pitr_paths,
    stanza,
)
from govstack.catalog import s3_pair
from govstack.plan import StackPlan
from govstack.render import render


def job_config(plan: StackPlan) -> dict[str, Any]:
    """The job's backup.json: everything it needs, secrets as paths only."""
    s = plan.settings
    b = backup_settings(s)
    c = ContainerPaths()
    backup_pair, restore_pair = s3_pair(s, "backup"), s3_pair(s, "restore")
    config: dict[str, Any] = {
        "project": s.project,
        "repository": c.repository,
        "cache_dir": c.cache,
        "password_file": f"/run/secrets/{PASSWORD_SECRET}",
        "pg": {
            "host": plan.data_tier_host("postgres", on_data_network=True),
            "port": plan.ports["postgres"],
            "database": s.postgres.database,
            "user": BACKUP_ROLE,
            "password_file": f"/run/secrets/{ROLE_SECRET}",
        },
        "s3": {
            "endpoint": plan.s3_endpoint_from(on_data_network=True),
            "secure": s.object_store.secure,
            "region": s.object_store.region,
            "access_key_file": f"/run/secrets/{backup_pair[0]}",
            "secret_key_file": f"/run/secrets/{backup_pair[1]}",
            # Only `govstack restore`'s one-off container has these files (BackupHost.job).
            "restore_access_key_file": f"/run/secrets/{restore_pair[0]}",
            "restore_secret_key_file": f"/run/secrets/{restore_pair[1]}",
            "buckets": None,  # every bucket
        },
        "chroma": {
            "url": f"http://{plan.data_tier_host('chroma', on_data_network=True)}:{plan.ports['chroma']}",
            "tenant": "default_tenant",
        },
        "retention": b.retention,
        "keep_pre_deploy": b.keep_pre_deploy,
        "check_read_data_subset": b.check_read_data_subset,
        "readback": b.readback,
        "prune_schedule": b.prune_schedule,
        "check_schedule": b.check_schedule,
        "metrics_file": c.metrics_file,
        "schedule_file": c.crontab,
        "object_refs": b.object_refs,
        "mirror_dir": c.mirror,
        "transfers": b.transfers,
        "mirror_min_free_bytes": b.mirror_min_free_mb * 1_000_000,
        "vector_watermark": ({"database": VECTOR_DATABASE, "sql": VECTOR_WATERMARK_SQL}
                             if b.vectors_incremental else None),
        "ledger_file": c.ledger_file,
        "offsite": None,
        "pitr": {"stanza": stanza(s), "metrics_file": PitrContainerPaths().metrics_file} if s.pitr_enabled else None,
    }
    if b.offsite is not None:
        config["offsite"] = {
            "repository": b.offsite.repository,
            "access_key_file": f"/run/secrets/{OFFSITE_SECRETS[0]}",
            "secret_key_file": f"/run/secrets/{OFFSITE_SECRETS[1]}",
            "region": b.offsite.region,
        }
    return config


def render_job_config(plan: StackPlan) -> str:
    return json.dumps(job_config(plan), indent=2, sort_keys=True) + "\n"


def render_crontab(plan: StackPlan) -> str:
    b = backup_settings(plan.settings)
    return render("backup/crontab.j2", plan, schedule=b.schedule, skip_unchanged=b.skip_unchanged)


def render_pgbackrest_conf(plan: StackPlan) -> str:
    offsite = backup_settings(plan.settings).offsite
    endpoint = urlsplit(offsite.endpoint) if offsite is not None else None
    return render("backup/pgbackrest.conf.j2", plan, b=plan.backup,
                  offsite_host=endpoint.hostname if endpoint else None,
                  offsite_port=endpoint.port if endpoint else None)


def render_pgbackrest_crontab(plan: StackPlan) -> str:
    return render("backup/pgbackrest.crontab.j2", plan, p=backup_settings(plan.settings).pitr)


def backup_files(plan: StackPlan) -> dict[str, str]:
    """Host path -> content of the files the backup services read."""
    paths = host_paths(plan.settings)
    files = {paths.config_file: render_job_config(plan), paths.crontab: render_crontab(plan)}
    if plan.settings.pitr_enabled:
        pitr = pitr_paths(plan.settings)
        files[pitr.config_file] = render_pgbackrest_conf(plan)
        files[pitr.crontab] = render_pgbackrest_crontab(plan)
    return files
