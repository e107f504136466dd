"""The analytics service's configuration (environment, GOVSTACK_ prefix; secrets from *_FILE).

It shares the database location with the app (GOVSTACK_DATABASE_HOST/_PORT/_NAME) and nothing
else: its own role and password, and the privacy parameters of its releases.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ..settings import read_secret_file


class AnalyticsSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GOVSTACK_", extra="ignore", frozen=True)

    database_host: str = "127.0.0.1"
    database_port: int = Field(5432, ge=1, le=65535)
    database_name: str = "govstack"
    analytics_database_user: str = "govstack_analytics"
    analytics_database_password_file: Path | None = None

    # Every release costs this much of the consumer's and of the total budget (sequential
    # composition), the same for every release so that no consumer can ask for a cheaper,
    # noisier copy of a question already answered.
    analytics_epsilon_per_release: float = Field(1.0, gt=0, le=10)
    analytics_consumer_epsilon_per_period: float = Field(10.0, gt=0)
    analytics_total_epsilon_per_period: float = Field(30.0, gt=0)
    analytics_budget_period: Literal["day", "week", "month"] = "month"
    # Groups whose noisy count falls below k are suppressed.
    analytics_k_threshold: int = Field(10, ge=1, le=10_000)
    # Contribution bound: an actor's events counted per UTC day and release (the L1 sensitivity
    # of every count release; distinct-actor releases count an actor once per day).
    analytics_max_events_per_actor_day: int = Field(5, ge=1, le=1000)
    analytics_max_window_days: int = Field(31, ge=1, le=366)
    # The stated error bound holds with probability 1 - alpha per value.
    analytics_accuracy_alpha: float = Field(0.05, gt=0, lt=1)
    # Which API keys may ask (their role or a higher one).
    analytics_consumer_role: Literal["reader", "writer", "admin"] = "admin"

    app_version: str = "dev"
    app_color: Literal["blue", "green"] = "blue"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, v: object) -> object:
        return v.upper() if isinstance(v, str) else v

    @model_validator(mode="after")
    def _budgets(self) -> AnalyticsSettings:
        eps = self.analytics_epsilon_per_release
        if self.analytics_consumer_epsilon_per_period < eps:
            raise ValueError("GOVSTACK_ANALYTICS_CONSUMER_EPSILON_PER_PERIOD is below one release's epsilon")
        if self.analytics_total_epsilon_per_period < self.analytics_consumer_epsilon_per_period:
            raise ValueError("GOVSTACK_ANALYTICS_TOTAL_EPSILON_PER_PERIOD is below one consumer's budget")
        return self

    def database_password(self) -> str | None:
        if self.analytics_database_password_file is None:
            return None
        return read_secret_file(self.analytics_database_password_file, "analytics_database_password")

    def conninfo(self) -> str:
        from psycopg.conninfo import make_conninfo

        return make_conninfo(
            host=self.database_host,
            port=self.database_port,
            dbname=self.database_name,
            user=self.analytics_database_user,
            password=self.database_password(),
            connect_timeout=5,
            application_name=f"govstack-analytics-{self.app_color}",
            # Releases take milliseconds; one that waits on the release lock or a query longer
            # than this is stuck: fail it (the consumer retries) rather than pile up behind it.
            options="-c statement_timeout=30s -c lock_timeout=15s",
        )
