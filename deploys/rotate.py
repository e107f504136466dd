"""`govstack secret rotate NAME`: a new value for one secret (or one S3 key pair), with no downtime.

Run by the CLI (govstack/rotation.py: it holds every host's deploy lock,
generates the value, writes the ledger) as `pyinfra -y INVENTORY
deploys/rotate.py` with GOVSTACK_ROTATE_SECRETS (the names) and
GOVSTACK_ROTATE_VALUES (a private directory with one file per name).
In a split inventory each step runs on every host before the next one
starts (govstack/rotation_operations.py says why each step is safe):

  1. NAME.next on every host that reads it
  2. the data host accepts it beside the old value (ALTER ROLE, restic key
     add, a second S3 identity)
  3. every host switches its file in place; start-time readers restart
  4. the data host retires the old value (restic key remove, S3 identity)
  5. NAME.next and NAME.previous removed
"""

import os
from pathlib import Path

from pyinfra import host, inventory, logger

from govstack.backup.plan import ContainerPaths, backup_settings
from govstack.facts import HostResourcesFact
from govstack.operations import secret_file
from govstack.plan import StackPlan
from govstack.release import ReleaseState, release_path
from govstack.role_operations import all_hosts_reached
from govstack.roles import TopologyError, plan_fields
from govstack.rotation import postgres_role_of, start_time_readers
from govstack.rotation_operations import (
    compose_services_restarted,
    next_path,
    postgres_password_set,
    previous_path,
    restic_key_added,
    restic_key_removed,
    rotation_files_removed,
    s3_identities_set,
    secret_switched,
    waited,
)
from govstack.secrets import SECRET_SPECS, secret_path
from govstack.settings import SettingsError, settings_for_host
from govstack.settings.catalog import s3_identity_of

try:
    settings = settings_for_host(host)
    role_fields = plan_fields(host, inventory, settings)
except (SettingsError, TopologyError) as error:
    logger.error(f"govstack: {error}")
    raise SystemExit(2) from None

names = os.environ["GOVSTACK_ROTATE_SECRETS"].split(",")
values = {name: (Path(os.environ["GOVSTACK_ROTATE_VALUES"]) / name).read_text() for name in names}
grace_s = float(os.environ.get("GOVSTACK_ROTATE_GRACE_S", "0"))
kind = SECRET_SPECS[names[0]].rotation
plan = StackPlan(settings, host.get_fact(HostResourcesFact),
                 recorded_release=host.get_fact(ReleaseState, path=release_path(settings)), **role_fields)
s = settings
held = [name for name in names if name in plan.secret_names]
is_data = plan.has_role("data")


def step(done: str) -> None:
    if plan.split:
        all_hosts_reached(name=f"Every host: {done}", step=done)


# 1. The new value beside the old one.
for name in held:
    secret_file(name=f"{name}.next", path=next_path(secret_path(s, name)),
                owner_uid=SECRET_SPECS[name].owner_uid, value=values[name])
step("new value waiting")

# 2. Accepted beside the old one.
if is_data and kind == "postgres-role":
    role = postgres_role_of(s, names[0])
    postgres_password_set(name=f"Postgres role {role}: new password", project=s.project, compose_file=s.compose_file,
                          role=role, password_file=next_path(secret_path(s, names[0])))
if is_data and kind == "restic":
    repositories = [(ContainerPaths().repository, False)]
    if backup_settings(s).offsite is not None:
        repositories.append((backup_settings(s).offsite.repository, True))
    for repository, offsite in repositories:
        restic_key_added(name=f"restic key for the new password ({'offsite' if offsite else 'local'})",
                         project=s.project, compose_file=s.compose_file, repository=repository,
                         new_password_file=next_path(secret_path(s, "restic_password")), offsite=offsite)
if is_data and kind == "s3":
    identity = s3_identity_of(names[0])
    access, secret = secret_path(s, identity.access_key), secret_path(s, identity.secret_key)
    s3_identities_set(name=f"S3 identity {identity.name}: the current and the new key pair",
                      project=s.project, compose_file=s.compose_file,
                      extra=((identity.name, next_path(access), next_path(secret)),))
step("new value accepted beside the old one")

# 3. Every reader switches.
for name in held:
    secret_switched(name=f"{name} switched in place", path=secret_path(s, name),
                    owner_uid=SECRET_SPECS[name].owner_uid)
restart = [service for service in start_time_readers(names[0]) if service in plan.services]
if restart:
    compose_services_restarted(name=f"Restart {', '.join(restart)} (they read it at start)",
                               project=s.project, compose_file=s.compose_file, services=tuple(restart))
step("every reader has the new value")

# 4. The old value retired.
if is_data and kind == "restic":
    for repository, offsite in repositories:
        restic_key_removed(name=f"restic key of the old password removed ({'offsite' if offsite else 'local'})",
                           project=s.project, compose_file=s.compose_file, repository=repository,
                           old_password_file=previous_path(secret_path(s, "restic_password")), offsite=offsite)
if is_data and kind == "s3":
    if identity.name == "app":  # only the app signs URLs
        waited(name=f"Old S3 identity kept {grace_s:g} s (presigned URLs signed with it)", seconds=grace_s,
               why="presigned URLs")
    s3_identities_set(name=f"S3 identity {identity.name}: the new key pair only", project=s.project,
                      compose_file=s.compose_file)
step("old value retired")

# 5. Nothing of the rotation stays behind.
for name in held:
    rotation_files_removed(name=f"{name}: rotation files removed", path=secret_path(s, name))
