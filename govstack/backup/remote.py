"""The backup job on the stack's host: ``BackupHost`` is the stack's remote
shell (govstack/remote.py) plus the ``govstack-backup`` commands of the
backup service, with errors of its own kind (``BackupError``)."""

from __future__ import annotations

from typing import Any

from govstack import commands
from govstack.backup.plan import SERVICE, host_paths
from govstack.catalog import s3_pair
from govstack.commands import last_json
from govstack.plan import StackPlan
from govstack.remote import RemoteError, StackHost
from govstack.secrets import secret_path, sse_marker


class BackupError(RemoteError):
    """A backup, restore or drill step failed; the message is for the operator."""


class BackupHost(StackHost):
    """One stack on one host, as `govstack backup|restore|drill` use it."""

    error_class = BackupError

    def __init__(self, host: Any, plan: StackPlan, name: str | None = None) -> None:
        super().__init__(host, plan, name=name, default_timeout_s=plan.settings.backup.timeout_s)
        self.backup = plan.settings.backup
        self.paths = host_paths(plan.settings)

    def job(self, *args: str, oneoff: bool = False, restore_keys: bool = False) -> str:
        """A govstack-backup command in the running service, or in a one-off
        container of the same definition (while the service is stopped).

        ``restore_keys``: the one-off container also gets the restore identity's key pair
        (read-only at /run/secrets/, like the service's own secrets): the only container
        that may write objects back, and only while `govstack restore` runs it."""
        if oneoff:
            mounts: list[str] = []
            restore_pair = s3_pair(self.settings, "restore")
            if restore_keys and restore_pair != s3_pair(self.settings, "backup"):  # not an external store's one pair
                for name in restore_pair:
                    mounts += ["-v", f"{secret_path(self.settings, name)}:/run/secrets/{name}:ro"]
            return self.compose("run", "--rm", "--no-deps", "-T", *mounts, SERVICE, *args)
        return self.compose("exec", "-T", SERVICE, "govstack-backup", *args)

    def job_json(self, *args: str, oneoff: bool = False, timeout: float | None = None,
                 restore_keys: bool = False) -> dict[str, Any]:
        result = self.sh(self.job(*args, oneoff=oneoff, restore_keys=restore_keys), timeout=timeout)
        answer = last_json(result.stdout)
        if not isinstance(answer, dict):
            raise BackupError(f"govstack-backup {args[0]} gave no answer (exit {result.rc}): {result.tail()}")
        if not answer.get("ok", result.ok) and "kind" in answer:
            raise BackupError(answer.get("error", "failed"), answer.get("kind", "error"))
        return answer

    def prepare_bucket(self) -> None:
        """The stack's own bucket exists, versioned, with its lifecycle rules and default
        encryption, as the deploy leaves it (deploys/stack.py): a restore onto an empty object
        store (a drill, a replaced data host before its first `up`) must not put the objects
        back into a bucket without them, and the restore identity may not create buckets.
        Idempotent. An external store's bucket is the site's own."""
        if "seaweedfs" not in self.plan.services:
            return
        s, o = self.settings, self.settings.object_store
        self.sh(commands.bucket_versioned(s.project, s.compose_file, o.bucket), timeout=120, check=True)
        access, secret = s3_pair(s, "admin")
        encrypt = True  # as the deploy: default encryption whenever the stack runs the gateway
        _, apply = commands.bucket_configured(
            s.project, s.compose_file, o.bucket, o.noncurrent_version_days, o.abort_multipart_days,
            secret_path(s, access), secret_path(s, secret), encrypt, oneoff=True)
        marker = sse_marker(s)
        self.sh(f"{apply} && touch {commands.q(marker)} && chmod 600 {commands.q(marker)}", timeout=180, check=True)
