"""``govstack.postgres``: the database, its roles' names and its tuning inputs."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from govstack.settings.base import Section


class PostgresSettings(Section):
    database: str = Field("govstack", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    app_user: str = Field("govstack", pattern=r"^[a-z_][a-z0-9_]{0,62}$",
                          description="role the app connects as: DML on its tables, owns nothing")
    owner_user: str = Field("govstack_owner", pattern=r"^[a-z_][a-z0-9_]{0,62}$",
                            description="role that owns the database and schema; only migrations log in as it")
    max_connections: int = Field(100, ge=10, le=10000)
    storage: Literal["ssd", "hdd"] = Field("ssd", description="planner costs: random_page_cost, io concurrency")
    # Share of host memory given to the Postgres container when
    # resources.postgres.memory_mb is not set; tuning is sized from it.
    memory_share: float = Field(
        0.25, gt=0.05, le=0.9, description="share of host memory for Postgres when resources.postgres is unset"
    )
    # Any postgresql.conf key; wins over the computed tuning.
    overrides: dict[str, str | int | float] = Field(
        default_factory=dict, description="postgresql.conf keys that win over the computed tuning"
    )

    @model_validator(mode="after")
    def _distinct_roles(self) -> PostgresSettings:
        if self.owner_user == self.app_user:
            raise ValueError("owner_user and app_user must differ: the app's role owns nothing")
        return self

    @field_validator("overrides")
    @classmethod
    def _override_names(cls, value: dict) -> dict:
        for key in value:
            if not re.fullmatch(r"[a-z_][a-z0-9_.]*", key):
                raise ValueError(f"{key!r} is not a postgresql.conf parameter name")
        return value
