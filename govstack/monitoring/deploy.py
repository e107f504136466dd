"""pyinfra deploys of the monitoring tier: the exporter's database role (after
the database exists). Its files are part of the stack's rendered files
(govstack/render.py) and its services of the stack's Compose project."""

from __future__ import annotations

from pyinfra.api import deploy

from govstack.monitoring.catalog import MONITOR_ROLE, MONITOR_ROLE_ATTRIBUTES, MONITOR_ROLE_GROUPS, MONITOR_SECRET
from govstack.operations import postgres_login_role
from govstack.plan import StackPlan
from govstack.secrets import secret_path


@deploy("Monitoring database role")
def ensure_monitor_role(plan: StackPlan):
    s = plan.settings
    if not s.monitoring.enabled:
        return
    postgres_login_role(
        name=f"Postgres role {MONITOR_ROLE} (pg_monitor)",
        project=s.project,
        compose_file=s.compose_file,
        role=MONITOR_ROLE,
        database=s.postgres.database,
        password_file=secret_path(s, MONITOR_SECRET),
        attributes=MONITOR_ROLE_ATTRIBUTES,
        member_of=MONITOR_ROLE_GROUPS,
        connect=True,
    )
