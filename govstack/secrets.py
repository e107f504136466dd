"""The secrets a stack needs, who reads each one, and how to find them.

Secrets are generated on the target host, once, and stay stable across
deploys. Each is one file under ``<stack_root>/secrets`` (mode 0700), mode
0600, owned by the single uid that reads it, and reaches containers as a
Compose file secret (``/run/secrets/<name>``, the ``*_FILE`` convention),
never as an environment variable that ``docker inspect`` would show.

Each secret names the roles whose parts read it (``needed_by``): a host of a
split inventory holds only its roles' secrets (least privilege), an
all-in-one host (every role) holds them all.
"""

from __future__ import annotations

from collections.abc import Iterable

from govstack.settings import Settings
from govstack.settings.catalog import S3_IDENTITIES, SECRET_SPECS, TLS_KEY_OWNER_UID, SecretSpec

__all__ = ["SECRET_SPECS", "TLS_KEY_OWNER_UID", "SecretSpec", "generate_secret_command", "host_secret_names",
           "secret_path"]

# Key pairs of the in-stack gateway's identities other than the app's: an external object
# store has only the pair the operator supplies (the app's, which the backup job then uses too).
IN_STACK_S3_SECRETS = frozenset(
    name for identity in S3_IDENTITIES if identity.name != "app" for name in (identity.access_key, identity.secret_key)
) | {"s3_sse_key"}


def host_secret_names(settings: Settings, roles: Iterable[str]) -> list[str]:
    """The secret files a host with these roles holds, sorted: generated ones
    and those the operator supplied, that one of its roles reads."""
    roles = frozenset(roles)
    return sorted(
        name for name, spec in SECRET_SPECS.items()
        if spec.needed_by & roles and (spec.generated or name in settings.secrets)
        and (name not in IN_STACK_S3_SECRETS or settings.object_store.kind == "seaweedfs")
    )


def secret_path(settings: Settings, name: str) -> str:
    if name not in SECRET_SPECS:
        raise KeyError(f"unknown secret {name!r}; known: {', '.join(sorted(SECRET_SPECS))}")
    return f"{settings.secrets_dir}/{name}"


# Secrets rotated together (one S3 identity is a key pair).
ROTATED_TOGETHER = tuple((identity.access_key, identity.secret_key) for identity in S3_IDENTITIES)


def rotated_with(name: str) -> tuple[str, ...]:
    """The secrets one `govstack secret rotate NAME` replaces: NAME and its pair."""
    return next((group for group in ROTATED_TOGETHER if name in group), (name,))


def new_secret_value(length: int) -> str:
    """A fresh value of [A-Za-z0-9] (no quoting problems anywhere), from the OS's CSPRNG."""
    import secrets as random
    import string

    alphabet = string.ascii_letters + string.digits
    return "".join(random.choice(alphabet) for _ in range(length))


def generate_secret_command(path: str, length: int) -> str:
    """Shell that writes a fresh random secret to ``path`` (mode 0600) without
    the value ever appearing in a command line, a log or pyinfra's output."""
    return (
        f"umask 077 && tmp=$(mktemp {path}.XXXXXX) && "
        f"LC_ALL=C tr -dc 'A-Za-z0-9' </dev/urandom | head -c {length} >\"$tmp\" && "
        f'mv "$tmp" {path}'
    )


def sse_marker(settings: Settings) -> str:
    """Written by the deploy once the bucket's default encryption is on: from then on objects
    exist that only the secret s3_sse_key opens, and a deploy never makes a new one."""
    return f"{settings.data_dir}/seaweedfs/.govstack-sse-in-use"
