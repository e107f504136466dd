"""The two files the backup service reads on a host: the job's config
(backup.json, secrets as paths only) and its crontab."""

from __future__ import annotations

import json
from typing import Any

from govstack.backup.plan import (
    BACKUP_ROLE,
    OFFSITE_SECRETS,
    PASSWORD_SECRET,
    ROLE_SECRET,
    ContainerPaths,
    backup_settings,
    host_paths,
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
        "metrics_file": c.metrics_file,
        "schedule_file": c.crontab,
        "object_refs": b.object_refs,
        "offsite": None,
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
    return render("backup/crontab.j2", plan, schedule=backup_settings(plan.settings).schedule)


def backup_files(plan: StackPlan) -> dict[str, str]:
    """Host path -> content of the files the backup service reads."""
    paths = host_paths(plan.settings)
    return {paths.config_file: render_job_config(plan), paths.crontab: render_crontab(plan)}
