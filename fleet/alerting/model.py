"""The alert state model: what a person did to an alert (acknowledge, silence, resolve) and how an alert looks
with it applied. An *alert* here is one incident: from the AlertRecord that raised a (device, rule) condition to
the one that cleared it; its id is the id of the raising record."""

from __future__ import annotations

from datetime import datetime
from fnmatch import fnmatchcase
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from fleet.alerting.severity import Severity
from fleet.protocol import new_id, now_iso

Status = Literal["firing", "acknowledged", "silenced", "resolved"]
# Longest silence: a month. Longer than that is not a silence but a rule that should be changed or disabled.
MAX_SILENCE_S = 31 * 86400


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Ack(_Model):
    """Someone took the alert: repeats stop, the page shows who; a new incident of the same rule is not acked."""

    kind: Literal["ack"] = "ack"
    alert: str = Field(description="id of the incident (its raising AlertRecord)")
    by: str
    at: str = Field(default_factory=now_iso)
    note: str = Field("", max_length=2000)


class Silence(_Model):
    """No notification for alerts whose device and rule match (shell-style patterns: `*`, `override_rate:*`)
    until `until`; they still show on the dashboard and in /metrics, marked silenced."""

    kind: Literal["silence"] = "silence"
    id: str = Field(default_factory=new_id)
    device: str = Field("*", min_length=1, max_length=200, description="device id or pattern ('*' for the fleet too)")
    rule: str = Field("*", min_length=1, max_length=300, description="rule name or pattern")
    by: str
    reason: str = Field(min_length=1, max_length=2000)
    at: str = Field(default_factory=now_iso)
    until: str = Field(description="ISO-8601 end of the silence")

    @field_validator("reason")
    @classmethod
    def _reason(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("a silence needs a reason (it is shown to everyone the alert would have reached)")
        return v.strip()

    def matches(self, device: str, rule: str) -> bool:
        return fnmatchcase(device, self.device) and fnmatchcase(rule, self.rule)

    def active(self, at: datetime) -> bool:
        from fleet.analytics.windows import parse_ts

        return parse_ts(self.at) <= at < parse_ts(self.until)


class Expire(_Model):
    """A silence ended before its time."""

    kind: Literal["expire"] = "expire"
    silence: str
    by: str
    at: str = Field(default_factory=now_iso)


class Resolve(_Model):
    """Someone closed the incident by hand (the fix is in). If the rule still holds at the next evaluation, a new
    incident is raised: a manual resolve never hides a live condition for long."""

    kind: Literal["resolve"] = "resolve"
    alert: str
    by: str
    at: str = Field(default_factory=now_iso)
    note: str = Field("", max_length=2000)


Action = Annotated[Ack | Silence | Expire | Resolve, Field(discriminator="kind")]


class AlertView(_Model):
    """One incident with everything a person needs to act on it."""

    id: str
    device: str = Field(description="device id, or '*' for a fleet-wide alert")
    rule: str
    family: str = Field(description="the rule without its class or release suffix")
    severity: Severity
    status: Status
    raised_at: str
    cleared_at: str | None = None
    value: float | None = None
    threshold: float | None = None
    message: str = ""
    clear_message: str = ""
    runbook: str
    ack: Ack | None = None
    silence: Silence | None = Field(None, description="the silence that mutes it now, if any")
    resolved_by: Resolve | None = Field(None, description="set when a person resolved it by hand")
