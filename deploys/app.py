"""The app: its database role, one color's Compose project, the release record."""

from __future__ import annotations

from io import StringIO

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import files

from govstack.commands import schema_stamp
from govstack.facts import ImageLabel
from govstack.images import APP_DB_ROLES_LABEL
from govstack.ledger import LEDGER_READER_GID
from govstack.operations import (
    LoginRole,
    app_color_idle,
    app_schema_current,
    compose_project_up,
    path_owned,
    postgres_login_roles,
    postgres_ownership_moved,
)
from govstack.plan import StackPlan
from govstack.release import Color, other_color, release_path
from govstack.secrets import secret_path


def serving_image_splits_roles(inventory, plan: StackPlan) -> bool:
    """Whether the serving version's image migrates as the owner and lets the
    app's role own nothing (images.APP_DB_ROLES_LABEL on the first app host).
    An image not there yet is built from this source, which does; an image
    from before keeps its role owning the schema until a newer version is
    deployed (its API and worker migrate at start)."""
    first = inventory.get_host(plan.topology.with_role("app")[0].name) if plan.split else host
    label = first.get_fact(ImageLabel, image=plan.app_image(plan.release.version), label=APP_DB_ROLES_LABEL)
    return label is None or bool(label)


def app_database_roles(plan: StackPlan, roles_split: bool = True) -> list[LoginRole]:
    """The owner role owns the database; the app's role logs in and owns nothing
    (its privileges on the tables come from the app's migrate, run as the owner).
    ``roles_split`` False: a serving image from before that split, whose role
    must keep owning the schema (``serving_image_splits_roles``)."""
    s = plan.settings
    if not roles_split:
        return [LoginRole(s.postgres.app_user, secret_path(s, "postgres_app_password"), owns_database=True)]
    attributes = ("NOSUPERUSER", "NOCREATEDB", "NOCREATEROLE")
    return [
        LoginRole(s.postgres.owner_user, secret_path(s, "postgres_owner_password"), attributes, owns_database=True),
        LoginRole(s.postgres.app_user, secret_path(s, "postgres_app_password"), attributes, connect=True),
    ]


def analytics_role(plan: StackPlan) -> LoginRole | None:
    """Created before any app color starts, so that migrations can grant it the events view."""
    s = plan.settings
    if not s.analytics.enabled:
        return None
    return LoginRole(plan.analytics_role, secret_path(s, "postgres_analytics_password"),
                     ("NOSUPERUSER", "NOCREATEDB", "NOCREATEROLE", "CONNECTION LIMIT 10"), connect=True)


@deploy("Database roles")
def ensure_database_roles(plan: StackPlan, roles: list[LoginRole], roles_split: bool = True):
    """Every login role of the app's database (the app's, the backup job's, the exporter's,
    analytics'), checked in one command; then the app's role owns nothing."""
    s = plan.settings
    pg = {"project": s.project, "compose_file": s.compose_file, "database": s.postgres.database}
    postgres_login_roles(
        name=f"Postgres roles log in to {s.postgres.database}: {', '.join(r.role for r in roles)}",
        roles=roles,
        **pg,
    )
    if roles_split:
        postgres_ownership_moved(
            name=f"{s.postgres.app_user} owns nothing in {s.postgres.database}",
            owner=s.postgres.owner_user,
            app_role=s.postgres.app_user,
            **pg,
        )


@deploy("App schema")
def ensure_app_schema(plan: StackPlan):
    """Migrations, the audit retention floor and the app role's privileges, by
    the serving color's one-off migrate service (run on one app host)."""
    release = plan.release
    app_schema_current(
        name=f"Schema of {release.version} current (migrate as {plan.settings.postgres.owner_user})",
        project=plan.app_project(release.color),
        compose_file=plan.app_compose_file(release.color),
        stamp=schema_stamp_of(plan, release.color, release.version),
        data_project=plan.settings.project,
        database=plan.settings.postgres.database,
        timeout_s=plan.settings.healthy_timeout_s,
    )


def schema_stamp_of(plan: StackPlan, color: Color, version: str) -> str:
    """Shell printing the stamp of a migrate run of ``version`` in ``color`` (commands.schema_stamp)."""
    return schema_stamp(plan.app_image(version), plan.schema_stamp_files(color))


@deploy("App color")
def start_app_color(plan: StackPlan, color: Color, version: str, wait: bool = True):
    """``wait=False`` only starts it (a release waits in a step of its own)."""
    compose_project_up(
        name=f"App {color} ({version}) {'up and healthy' if wait else 'started'}",
        project=plan.app_project(color),
        compose_file=plan.app_compose_file(color),
        service_images={service: plan.app_image(version) for service in plan.app_services},
        wait_timeout_s=plan.settings.healthy_timeout_s,
        wait=wait,
        hash_cache=plan.settings.paths.compose_hash_file(plan.app_project(color)),
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
    # The backup job's group may enter it to read the ledger (govstack.ledger); nothing else there is its.
    path_owned(name="State directory", path=s.paths.state_dir, uid=0, gid=LEDGER_READER_GID, mode="710")
    if plan.recorded_release is None:
        files.put(
            name=f"First release: {plan.release.color} {plan.release.version}",
            src=StringIO(plan.release.to_json()),
            dest=release_path(s),
            mode="600",
        )
