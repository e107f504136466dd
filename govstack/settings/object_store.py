"""``govstack.object_store``: SeaweedFS in the stack, or an external S3 endpoint."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from govstack.settings.base import Section


class ObjectStoreSettings(Section):
    kind: Literal["seaweedfs", "external"] = Field(
        "seaweedfs", description="seaweedfs in the stack, or an existing external S3/MinIO endpoint"
    )
    # Only for kind=external: host:port of an existing S3/MinIO endpoint.
    endpoint: str | None = Field(None, description="host:port of the external endpoint (kind=external)")
    secure: bool = False
    bucket: str = Field("documents", pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
    region: str = "us-east-1"
    # In-stack SeaweedFS only: the bucket is versioned (an overwritten or deleted object keeps
    # its earlier versions), and these lifecycle rules bound what that keeps.
    noncurrent_version_days: int = Field(
        30, ge=1, le=3650,
        description="days an overwritten or deleted object's earlier version is kept (kind=seaweedfs)")
    abort_multipart_days: int = Field(
        7, ge=1, le=365, description="days after which an incomplete multipart upload is aborted (kind=seaweedfs)")

    @model_validator(mode="after")
    def _external_needs_endpoint(self) -> ObjectStoreSettings:
        if self.kind == "external" and not self.endpoint:
            raise ValueError("endpoint is required when kind is 'external'")
        return self
