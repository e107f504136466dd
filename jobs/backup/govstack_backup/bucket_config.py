"""A bucket's lifecycle rules and default encryption (`govstack-backup bucket-config`), set by the deploy.

The deploy passes the admin identity's key pair on stdin (two lines): no container
mounts it, and this one only holds it for the one call. The rules:

- noncurrent versions expire N days after they stopped being current (the bucket is
  versioned: an overwritten or deleted object stays recoverable that long);
- incomplete multipart uploads are aborted M days after they started.

SeaweedFS keeps the rules; its lifecycle pass (``weed shell s3.lifecycle.run-shard``, run
daily by the gateway's entrypoint) applies them.

With ``--encrypt`` every object written from then on is encrypted by the gateway (SSE-S3,
AES-256-GCM under a per-object key that the gateway's key-encryption key wraps; the KEK is
derived from the secret s3_sse_key). Objects written before stay as they were.
"""

from __future__ import annotations

import sys
from typing import Any

from minio import Minio
from minio.commonconfig import ENABLED, Filter
from minio.error import S3Error
from minio.lifecycleconfig import AbortIncompleteMultipartUpload, LifecycleConfig, NoncurrentVersionExpiration, Rule
from minio.sseconfig import Rule as SSERule
from minio.sseconfig import SSEConfig

NONCURRENT_RULE = "govstack-noncurrent-versions"
MULTIPART_RULE = "govstack-incomplete-multipart-uploads"


def wanted(noncurrent_days: int, abort_days: int) -> LifecycleConfig:
    return LifecycleConfig([
        Rule(ENABLED, rule_filter=Filter(prefix=""), rule_id=NONCURRENT_RULE,
             noncurrent_version_expiration=NoncurrentVersionExpiration(noncurrent_days=noncurrent_days)),
        Rule(ENABLED, rule_filter=Filter(prefix=""), rule_id=MULTIPART_RULE,
             abort_incomplete_multipart_upload=AbortIncompleteMultipartUpload(days_after_initiation=abort_days)),
    ])


def summary(config: LifecycleConfig | None) -> dict[str, Any]:
    """The rules as comparable plain values."""
    found: dict[str, Any] = {}
    for rule in (config.rules if config else []):
        found[rule.rule_id] = {
            "status": rule.status,
            "noncurrent_days": rule.noncurrent_version_expiration.noncurrent_days
            if rule.noncurrent_version_expiration else None,
            "abort_days": rule.abort_incomplete_multipart_upload.days_after_initiation
            if rule.abort_incomplete_multipart_upload else None,
        }
    return found


def current(mc: Minio, bucket: str) -> LifecycleConfig | None:
    try:
        return mc.get_bucket_lifecycle(bucket)
    except S3Error as exc:
        if exc.code == "NoSuchLifecycleConfiguration":
            return None
        raise


def encryption(mc: Minio, bucket: str) -> str | None:
    """The bucket's default encryption ("AES256", "aws:kms"), None when it has none."""
    try:
        config = mc.get_bucket_encryption(bucket)
    except S3Error as exc:
        if exc.code in ("ServerSideEncryptionConfigurationNotFoundError", "NoSuchEncryptionConfiguration"):
            return None
        raise
    return config.rule.sse_algorithm if config and config.rule else None


def apply(mc: Minio, bucket: str, noncurrent_days: int, abort_days: int, encrypt: bool,
          check_only: bool) -> dict[str, Any]:
    target = wanted(noncurrent_days, abort_days)
    before = summary(current(mc, bucket))
    rules_current = before == summary(target)
    sse = encryption(mc, bucket)
    sse_current = sse == "AES256" or not encrypt
    if not check_only:
        if not rules_current:
            mc.set_bucket_lifecycle(bucket, target)
        if not sse_current:
            mc.set_bucket_encryption(bucket, SSEConfig(SSERule.new_sse_s3_rule()))
            sse = encryption(mc, bucket)
    return {"ok": True, "bucket": bucket, "current": rules_current and sse_current,
            "changed": not check_only and not (rules_current and sse_current),
            "rules": before if check_only else summary(target), "encryption": sse}


def admin_client(s3: dict[str, Any]) -> Minio:
    lines = sys.stdin.read().split()
    if len(lines) != 2:
        raise ValueError("expected the admin access key and secret key on stdin, one per line")
    return Minio(s3["endpoint"], access_key=lines[0], secret_key=lines[1], secure=bool(s3.get("secure")),
                 region=s3.get("region") or "us-east-1")
