"""``govstack.compliance``: audit retention, residency facts and where reports go."""

from __future__ import annotations

from pydantic import Field, model_validator

from govstack.settings.base import Section


class ComplianceSettings(Section):
    """The ``govstack.compliance`` settings section (``Settings.compliance``)."""

    audit_retention_months: int = Field(
        24, ge=1, le=1200,
        description="audit_logs months kept; older monthly partitions are dropped (worker, hourly)",
    )
    audit_retention_floor_months: int = Field(
        12, ge=1, le=1200, description="a shorter retention is refused, here and by the app"
    )
    location: str = Field(
        "unspecified", min_length=1, max_length=200,
        description="where this host's data physically is (country, region, provider), for the residency report",
    )
    disk_encrypted: bool | None = Field(
        None, description="the host's data disk is encrypted at rest (e.g. a provider volume); null = detect dm-crypt",
    )
    reports_dir: str | None = Field(
        None, description="where reports are written on the host; null = <stack_root>/reports"
    )

    @model_validator(mode="after")
    def _retention_above_floor(self) -> ComplianceSettings:
        if self.audit_retention_months < self.audit_retention_floor_months:
            raise ValueError(
                f"audit_retention_months ({self.audit_retention_months}) is below "
                f"audit_retention_floor_months ({self.audit_retention_floor_months})"
            )
        return self
