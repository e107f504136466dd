"""The app: its database role, one color's Compose project, the release record."""

from __future__ import annotations

from io import StringIO

from pyinfra.api import deploy
from pyinfra.operations import files

from govstack.operations import app_color_idle, compose_project_up, path_owned, postgres_login_role
from govstack.plan import StackPlan
from govstack.release import Color, other_color, release_path
from govstack.secrets import secret_path


@deploy("App database")
def ensure_app_database(plan: StackPlan):
    s = plan.settings
    postgres_login_role(
        name=f"Postgres role {s.postgres.app_user} owning database {s.postgres.database}",
        project=s.project,
        compose_file=s.compose_file,
        role=s.postgres.app_user,
        database=s.postgres.database,
        password_file=secret_path(s, "postgres_app_password"),
        owns_database=True,
    )


@deploy("App color")
def start_app_color(plan: StackPlan, color: Color, version: str, wait: bool = True):
    """``wait=False`` only starts it (a release waits in a step of its own)."""
    compose_project_up(
        name=f"App {color} ({version}) {'up and healthy' if wait else 'started'}",
        project=plan.app_project(color),
        compose_file=plan.app_compose_file(color),
        service_images={"api": plan.app_image(version), "worker": plan.app_image(version)},
        wait_timeout_s=plan.settings.healthy_timeout_s,
        wait=wait,
    )


@deploy("Idle color")
def stop_idle_color(plan: StackPlan):
    idle = other_color(plan.release.color)
    app_color_idle(
        name=f"App {idle} (not serving) stopped",
        project=plan.app_project(idle),
        compose_file=plan.app_compose_file(idle),
    )


@deploy("Release record")
def record_first_release(plan: StackPlan):
    """Written once; blue/green deploys and rollbacks own it afterwards."""
    s = plan.settings
    path_owned(name="State directory", path=s.paths.state_dir, uid=0, gid=0, mode="700")
    if plan.recorded_release is None:
        files.put(
            name=f"First release: {plan.release.color} {plan.release.version}",
            src=StringIO(plan.release.to_json()),
            dest=release_path(s),
            mode="600",
        )
