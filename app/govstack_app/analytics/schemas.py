"""Response models of the analytics API (their class names are its OpenAPI schema names)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from ..schemas import ErrorResponse


class ErrorBound(BaseModel):
    alpha: float = Field(description="the bound fails for a value with at most this probability")
    plus_minus: int = Field(description="each released value is within this of the bounded true count")


class ContributionBounds(BaseModel):
    events_per_actor_per_day: int
    what_counts: Literal["events", "distinct actors per day"]


class Privacy(BaseModel):
    unit: str = Field(description="what one step of differential privacy protects")
    mechanism: str
    epsilon: float = Field(description="epsilon of this release (OpenDP's privacy map at the sensitivity)")
    sensitivity_l1: int
    scale: float = Field(description="scale of the discrete Laplace noise")
    error_bound: ErrorBound
    contribution_bounds: ContributionBounds
    k_threshold: int = Field(description="groups whose noisy count is below this are suppressed")
    groups_in_domain: int
    suppressed_groups: int


class Release(BaseModel):
    release: str
    query: dict[str, Any] = Field(description="the question in canonical form (what the cache is keyed on)")
    period_start: str
    groups: list[dict[str, Any]]
    privacy: Privacy


class BudgetState(BaseModel):
    period: Literal["day", "week", "month"]
    period_start: str
    period_end: str
    consumer_epsilon_spent: float
    consumer_epsilon_limit: float
    total_epsilon_spent: float
    total_epsilon_limit: float
    remaining_epsilon: float


class ReleaseAnswer(BaseModel):
    release: Release = Field(description="identical every time the same question is asked in the same period")
    cached: bool = Field(description="true: answered from the cache, nothing charged")
    budget: BudgetState


class BudgetExhausted(ErrorResponse):
    budget: BudgetState


class AnalyticsHealth(BaseModel):
    status: Literal["ok"]
    version: str
    color: str
