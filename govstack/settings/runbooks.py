"""``govstack.runbooks``: who the runbooks send an operator to (rendered into them)."""

from __future__ import annotations

from pydantic import Field

from govstack.settings.base import Section


class EscalationContact(Section):
    """One step of the escalation chain: a role, who holds it, how to reach them."""

    role: str = Field(min_length=2, max_length=60, description="e.g. on-call, incident lead, service owner")
    name: str = Field(min_length=2, max_length=120, description="a person, a team or a rota")
    reach: str = Field(min_length=3, max_length=200, description="how: a phone number, a pager, a channel")


class RunbookSettings(Section):
    """What `govstack runbook show|run` fills into every runbook's escalation section."""

    escalation: tuple[EscalationContact, ...] = Field(
        (), description="the escalation chain, in order ({role, name, reach}); the runbooks say none is set when empty")
