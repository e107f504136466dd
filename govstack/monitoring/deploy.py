"""The monitoring tier's part of a deploy: the exporter's database role (made with the
others, after the database exists). Its files are part of the stack's rendered files
(govstack/render.py) and its services of the stack's Compose project."""

from __future__ import annotations

from govstack.monitoring.catalog import MONITOR_ROLE, MONITOR_ROLE_ATTRIBUTES, MONITOR_ROLE_GROUPS, MONITOR_SECRET
from govstack.operations import LoginRole
from govstack.plan import StackPlan
from govstack.secrets import secret_path


def monitor_role(plan: StackPlan) -> LoginRole | None:
    """postgres-exporter's role (pg_monitor); None when monitoring is off."""
    s = plan.settings
    if not s.monitoring.enabled:
        return None
    return LoginRole(MONITOR_ROLE, secret_path(s, MONITOR_SECRET), MONITOR_ROLE_ATTRIBUTES, MONITOR_ROLE_GROUPS,
                     connect=True)
