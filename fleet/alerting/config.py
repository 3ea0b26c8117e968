"""Alerting settings of the fleet config (`alerting:`): severity per rule, runbook links, grouping and timing,
and the channels that reach people (webhook, e-mail). Every raise and clear also goes out on MQTT
(`{prefix}/fleet/alerts`) whenever the service has a broker: that channel needs no settings."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fleet.alerting.severity import Severity
from runtime.errors import ConfigError


class _Channel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=100, description="shown in logs and on the dashboard")
    min_severity: Severity = Field(Severity.warning, description="alerts below this severity are not sent here")
    send_resolved: bool = Field(True, description="also say when an alert that was sent here clears")
    timeout_s: float = Field(10.0, gt=0, le=300, description="give up one delivery attempt after this long")


class WebhookChannel(_Channel):
    """POSTs the Alertmanager webhook payload (version 4): anything that takes Alertmanager's webhooks takes it."""

    kind: Literal["webhook"]
    url: str = Field(pattern=r"^https?://", description="http(s) URL the payload is POSTed to")
    bearer_token_file: Path | None = Field(None, description="file holding a token sent as Authorization: Bearer")

    def token(self) -> str | None:
        if self.bearer_token_file is None:
            return None
        try:
            return self.bearer_token_file.read_text().strip()
        except OSError as err:
            raise ConfigError(f"alerting channel {self.name}: bearer_token_file: {err}") from err


class EmailChannel(_Channel):
    """Plain-text e-mail over SMTP, one message per group."""

    kind: Literal["email"]
    smtp_host: str = Field(min_length=1, description="SMTP server")
    smtp_port: int = Field(587, ge=1, le=65535, description="587 for STARTTLS, 465 for TLS, 25 for plain")
    security: Literal["starttls", "tls", "none"] = Field("starttls", description="how the connection is protected")
    username: str | None = Field(None, description="SMTP login (none: send without logging in)")
    password_file: Path | None = Field(None, description="file holding the SMTP password")
    sender: str = Field(pattern=r"^[^@\s]+@[^@\s]+$", description="From: address")
    to: list[Annotated[str, Field(pattern=r"^[^@\s]+@[^@\s]+$")]] = Field(min_length=1, description="recipients")
    subject_prefix: str = Field("[shadowline]", max_length=100, description="start of every subject line")

    def password(self) -> str | None:
        if self.password_file is None:
            return None
        try:
            return self.password_file.read_text().strip()
        except OSError as err:
            raise ConfigError(f"alerting channel {self.name}: password_file: {err}") from err


Channel = Annotated[WebhookChannel | EmailChannel, Field(discriminator="kind")]


class AlertingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    severity: dict[str, Severity] = Field(default_factory=dict, description="severity per rule: a family "
                                          "(error_rate), a rule (override_rate:Defective); defaults in docs/runbooks.md")
    runbook_url: str = Field("docs/runbooks.md", description="where the runbooks are published; each alert links "
                             "runbook_url#anchor")
    dashboard_url: str | None = Field(None, description="public URL of the fleet service, for links in messages "
                                      "(default: the fleet's public_url)")
    group_by: Literal["rule", "rule_device"] = Field("rule", description="one message per rule (all devices), or "
                                                     "per rule and device")
    group_wait_s: float = Field(30.0, ge=0, description="wait this long after a group's first alert before "
                                "sending, to gather the others")
    group_interval_s: float = Field(300.0, gt=0, description="at most one message per group this often: a "
                                    "flapping rule sends one message, not one per flap")
    repeat_interval_s: float = Field(4 * 3600.0, gt=0, description="send a still-firing, unacknowledged alert "
                                     "again after this long")
    retry_max: int = Field(8, ge=0, le=100, description="delivery attempts after the first failure, backing off "
                           "from 10 s to 5 min")
    tick_s: float = Field(1.0, gt=0, le=60, description="how often due groups are checked")
    channels: list[Channel] = Field(default_factory=list, description="where notifications go")

    @field_validator("severity")
    @classmethod
    def _known(cls, v: dict[str, Severity]) -> dict[str, Severity]:
        for key in v:
            if not key or key != key.strip():
                raise ValueError(f"severity: bad rule name {key!r}")
        return v

    @model_validator(mode="after")
    def _unique(self) -> AlertingConfig:
        names = [c.name for c in self.channels]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"channel names must be unique: {', '.join(dup)}")
        return self
