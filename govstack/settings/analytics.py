"""``govstack.analytics``: the API's usage events and the analytics service's privacy
parameters (runbooks/privacy-analytics.md)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from govstack.settings.base import Section


class AnalyticsSettings(Section):
    """Privacy-preserving usage analytics: the API's pseudonymous usage events and the analytics
    service's differentially private releases (runbooks/privacy-analytics.md)."""

    enabled: bool = Field(True, description="usage events and the analytics service at /analytics/")
    events_retention_days: int = Field(
        90, ge=1, le=3650, description="usage events older than this many days are deleted (worker, hourly)"
    )
    epsilon_per_release: float = Field(1.0, gt=0, le=10, description="epsilon every release costs (the same for all)")
    consumer_epsilon_per_period: float = Field(
        10.0, gt=0, description="privacy budget of one consumer (API key) per budget period"
    )
    total_epsilon_per_period: float = Field(
        30.0, gt=0, description="privacy budget of all consumers together per budget period"
    )
    budget_period: Literal["day", "week", "month"] = Field("month", description="budgets renew each UTC period")
    k_threshold: int = Field(10, ge=1, le=10000, description="groups whose noisy count is below k are suppressed")
    max_events_per_actor_day: int = Field(
        5, ge=1, le=1000, description="contribution bound: events of one actor counted per day and release"
    )
    max_window_days: int = Field(31, ge=1, le=366, description="longest window one release may cover")
    accuracy_alpha: float = Field(
        0.05, gt=0, lt=1, description="releases state the error bound that holds with probability 1 - alpha"
    )
    consumer_role: Literal["reader", "writer", "admin"] = Field(
        "admin", description="API keys of this role or higher may ask for releases"
    )

    @model_validator(mode="after")
    def _budgets(self) -> AnalyticsSettings:
        if self.consumer_epsilon_per_period < self.epsilon_per_release:
            raise ValueError("consumer_epsilon_per_period is below epsilon_per_release (no release would fit)")
        if self.total_epsilon_per_period < self.consumer_epsilon_per_period:
            raise ValueError("total_epsilon_per_period is below consumer_epsilon_per_period")
        return self


# Less noise for the live analytics tests (tests/e2e/test_analytics.py), so that what they assert
# about one release fails by chance with a probability below 1e-6 (scale 0.5: epsilon 4 over a
# contribution bound of 2), and budgets that a test stack shared by many runs never exhausts by
# accident. Merge under `analytics`.
ANALYTICS_TEST_PROFILE: dict[str, Any] = {
    "epsilon_per_release": 4.0,
    "max_events_per_actor_day": 2,
    "consumer_epsilon_per_period": 40.0,
    "total_epsilon_per_period": 1_000_000.0,
}
