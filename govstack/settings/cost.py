"""``govstack.cost``: prices for `govstack cost`."""

from __future__ import annotations

from pydantic import Field

from govstack.settings.base import Section


class CostSettings(Section):
    """Prices for `govstack cost` (per container, averaged over a window)."""

    currency: str = Field("USD", pattern=r"^[A-Z]{3}$")
    cpu_core_hour: float = Field(0.04, ge=0, description="price of one CPU core for one hour")
    memory_gb_hour: float = Field(0.005, ge=0, description="price of one GiB of memory for one hour")
