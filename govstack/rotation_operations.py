"""pyinfra operations of `govstack secret rotate` (deploys/rotate.py).

A rotation keeps the old value valid until every reader has the new one:

1. ``<name>.next`` on every host that holds the secret (secret_file);
2. the new value accepted beside the old one: Postgres ``ALTER ROLE`` (a
   role has one password, so this is the moment the old one stops opening
   *new* connections; pooled ones stay), restic ``key add``, a second S3
   identity;
3. :func:`secret_switched` on every host: the file takes the new value *in
   place* (same inode), so the copy each running container has mounted
   changes at once; readers that read per connection, per request or per run
   (the app's pool and S3 client, the backup job, the migrate service) use
   it from then on, the others are restarted (postgres-exporter);
4. the old value retired: restic ``key remove``, the old S3 identity gone;
5. ``.next`` and ``.previous`` removed.

Each step is written to be run again: a rotation that stopped half-way is
finished by the next `govstack secret rotate` of the same secret, which
reuses the waiting ``.next`` value.
"""

from __future__ import annotations

from pyinfra.api import operation

from govstack.commands import compose, compose_exec, password_sql, psql, q


def next_path(path: str) -> str:
    return f"{path}.next"


def previous_path(path: str) -> str:
    return f"{path}.previous"


@operation(is_idempotent=False)
def postgres_password_set(project: str, compose_file: str, role: str, password_file: str):
    """
    ``role``'s password becomes the content of ``password_file`` (read on the host into psql's stdin).

    + project, compose_file: the Compose project Postgres runs in
    + role: the role whose password changes
    + password_file: the new value on the host (the secret's ``.next``)
    """
    superuser = compose_exec(project, compose_file, "postgres", *psql("postgres"))
    yield f"{{ {password_sql(role, password_file)}; }} | {superuser}"


@operation(is_idempotent=False)
def secret_switched(path: str, owner_uid: int):
    """
    The secret file takes the value waiting in ``<path>.next``, in place.

    + path: the secret file on the host
    + owner_uid: its reader's uid

    The old value is kept as ``<path>.previous`` until the rotation ends (the
    restic key it opens is removed then). The bytes are overwritten in the
    same inode, not renamed over: Compose mounts each secret file into its
    containers, and a renamed file would stay unseen by running ones.
    """
    p, n, o = q(path), q(next_path(path)), q(previous_path(path))
    yield (
        f"if [ -s {n} ] && ! cmp -s {n} {p}; then "
        f"[ -f {o} ] || cp -p {p} {o}; "
        f"dd if={n} of={p} conv=notrunc status=none && truncate -s $(stat -c %s {n}) {p}; fi; "
        f"chown {owner_uid}:{owner_uid} {p} && chmod 600 {p}"
    )


@operation(is_idempotent=False)
def rotation_files_removed(path: str):
    """
    The rotation of ``path`` is over: no ``.next`` or ``.previous`` copy stays.

    + path: the secret file on the host
    """
    yield f"rm -f {q(next_path(path))} {q(previous_path(path))}"


def _restic(project: str, compose_file: str, repository: str, password: str, offsite: bool) -> str:
    """restic in the backup service's container, the password file given as a shell redirect
    target (``/run/secrets/restic_password``, or ``/dev/stdin`` for a file on the host)."""
    env = ""
    if offsite:
        env = ("AWS_ACCESS_KEY_ID=$(cat /run/secrets/backup_offsite_access_key) "
               "AWS_SECRET_ACCESS_KEY=$(cat /run/secrets/backup_offsite_secret_key) ")
    inner = f"{env}exec restic -r {q(repository)} --password-file {password} --no-cache \"$@\""
    return compose_exec(project, compose_file, "backup", "sh", "-c", inner, "restic")


@operation(is_idempotent=False)
def restic_key_added(project: str, compose_file: str, repository: str, new_password_file: str,
                     offsite: bool = False):
    """
    The repository opens with the password in ``new_password_file`` as well (``restic key add``).

    + project, compose_file: the Compose project the backup service runs in
    + repository: the repository as the backup container sees it
    + new_password_file: the new password on the host (the secret's ``.next``)
    + offsite: the offsite repository (its S3 keys are the backup service's secrets)
    """
    new = q(new_password_file)
    current = _restic(project, compose_file, repository, "/run/secrets/restic_password", offsite)
    with_new = _restic(project, compose_file, repository, "/dev/stdin", offsite)
    label = "offsite" if offsite else "local"
    yield (
        f"{with_new} key list < {new} >/dev/null 2>&1 || "
        f"{current} key add --new-password-file /dev/stdin < {new} >/dev/null "
        f"|| {{ echo 'govstack: restic key add failed on the {label} repository' >&2; exit 1; }}"
    )


@operation(is_idempotent=False)
def restic_key_removed(project: str, compose_file: str, repository: str, old_password_file: str,
                       offsite: bool = False):
    """
    The key that ``old_password_file`` opens is removed; the repository then opens only with the
    password the secret file now holds. Nothing happens when the old password opens nothing
    (removed already) or opens the same key as the current one.

    + project, compose_file: the Compose project the backup service runs in
    + repository: the repository as the backup container sees it
    + old_password_file: the old password on the host (the secret's ``.previous``)
    + offsite: the offsite repository
    """
    old = q(old_password_file)
    current = _restic(project, compose_file, repository, "/run/secrets/restic_password", offsite)
    with_old = _restic(project, compose_file, repository, "/dev/stdin", offsite)
    current_key = "awk '/^\\*/ {print substr($1, 2)}'"
    label = "offsite" if offsite else "local"
    yield (
        f"[ -s {old} ] || exit 0; "
        f"old=$({with_old} key list < {old} 2>/dev/null | {current_key}); "
        f"new=$({current} key list < /dev/null 2>/dev/null | {current_key}); "
        "[ -n \"$old\" ] && [ -n \"$new\" ] && [ \"$old\" != \"$new\" ] || exit 0; "
        f"{current} key remove \"$old\" < /dev/null >/dev/null "
        f"|| {{ echo \"govstack: restic key remove $old failed on the {label} repository\" >&2; exit 1; }}"
    )


@operation(is_idempotent=False)
def s3_identities_set(project: str, compose_file: str, extra: tuple[tuple[str, str, str], ...] = ()):
    """
    The S3 gateway accepts every identity's key pair from its secret files, plus ``extra``
    pairs, reloaded without a restart.

    + project, compose_file: the Compose project SeaweedFS runs in
    + extra: (identity name, access key file, secret key file) on the host: a second
      pair of that identity, with its rights (a rotation's new pair)

    The extra keys go from the files through printf (a builtin) into the container's
    stdin; its entrypoint writes the identities, signals the gateway to reload them
    and returns once the gateway answers with exactly these access keys
    (templates/images/seaweedfs/seaweedfs-entrypoint): weed's reload is
    asynchronous.
    """
    lines = "; ".join(
        f"printf '%s %s %s\\n' {q(name)} \"$(cat {q(access)})\" \"$(cat {q(secret)})\""
        for name, access, secret in extra
    ) or ":"
    gateway = compose_exec(project, compose_file, "seaweedfs", "/usr/local/bin/seaweedfs-entrypoint", "identities")
    yield f"{{ {lines}; }} | {gateway} || {{ echo 'govstack: the S3 gateway refused the new identities' >&2; exit 1; }}"


@operation(is_idempotent=False)
def waited(seconds: float, why: str):
    """
    Wait: the old S3 identity outlives the presigned URLs signed with it.

    + seconds: how long
    + why: what the wait is for (shown as the operation's name by the caller)
    """
    if seconds > 0:
        yield f"sleep {float(seconds):g}"


@operation(is_idempotent=False)
def compose_services_restarted(project: str, compose_file: str, services: tuple[str, ...]):
    """
    Restart services that read a secret only when they start (postgres-exporter).

    + project, compose_file: their Compose project
    + services: the service names (those not running are left alone)
    """
    yield f"{compose(project, 'restart', '-t', '30', *services, files=compose_file)} >/dev/null"
