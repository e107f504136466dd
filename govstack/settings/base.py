"""What every settings section shares."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class SettingsError(ValueError):
    """A setting is missing or invalid. The message names the key."""


class Section(BaseModel):
    """A settings section: unknown keys are refused by name, values never change."""

    model_config = ConfigDict(extra="forbid", frozen=True)
