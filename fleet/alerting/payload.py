"""What a notification says: one message per group, as the Alertmanager webhook payload (version 4) for
webhooks, and as plain text for e-mail."""

from __future__ import annotations

import hashlib
from email.message import EmailMessage
from email.policy import SMTP
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from fleet.alerting.severity import Severity
from fleet.protocol import new_id, now_iso

SMTP_POLICY = SMTP.clone(max_line_length=998)
# Alertmanager's "no end yet" for a firing alert
ZERO_TIME = "0001-01-01T00:00:00Z"


def alert_url(base: str, alert_id: str = "") -> str:
    """The dashboard page of one alert (or of all), under the fleet's public URL; empty without one."""
    if not base:
        return ""
    return base.rstrip("/") + "/dashboard/alerts" + (f"/{alert_id}" if alert_id else "")


class NotifiedAlert(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(description="incident id (the raising AlertRecord's id)")
    device: str
    rule: str
    family: str
    severity: Severity
    status: Literal["firing", "resolved"]
    starts_at: str
    ends_at: str | None = None
    value: float | None = None
    threshold: float | None = None
    message: str = ""
    runbook: str
    flaps: int = Field(0, description="times the rule raised again since the group's last message")

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(f"{self.device}\0{self.rule}".encode()).hexdigest()[:16]


class Notification(BaseModel):
    """One message of one group: what a channel is asked to deliver."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(default_factory=new_id)
    at: str = Field(default_factory=now_iso)
    group_key: str
    group_labels: dict[str, str]
    alerts: list[NotifiedAlert]
    dashboard_url: str | None = None

    @property
    def status(self) -> Literal["firing", "resolved"]:
        return "firing" if any(a.status == "firing" for a in self.alerts) else "resolved"

    def only(self, min_severity: Severity, send_resolved: bool) -> Notification | None:
        """The part of this message a channel takes, or None when nothing is left for it."""
        keep = [a for a in self.alerts if a.severity.rank >= min_severity.rank
                and (send_resolved or a.status == "firing")]
        return self.model_copy(update={"alerts": keep}) if keep else None


def _labels(a: NotifiedAlert) -> dict[str, str]:
    return {"alertname": a.family, "rule": a.rule, "device": a.device, "severity": a.severity.value,
            "service": "shadowline-fleet"}


def _annotations(a: NotifiedAlert) -> dict[str, str]:
    out = {"summary": a.message, "runbook_url": a.runbook}
    if a.value is not None:
        out["value"] = f"{a.value:.6g}"
    if a.threshold is not None:
        out["threshold"] = f"{a.threshold:.6g}"
    if a.flaps:
        out["flaps"] = str(a.flaps)
    return out


def _common(dicts: list[dict[str, str]]) -> dict[str, str]:
    if not dicts:
        return {}
    first = dicts[0]
    return {k: v for k, v in first.items() if all(d.get(k) == v for d in dicts[1:])}


def alertmanager(n: Notification, receiver: str) -> dict[str, Any]:
    """The Alertmanager webhook body (version 4): receivers written for Alertmanager read it unchanged."""
    base = (n.dashboard_url or "").rstrip("/")
    labels = [_labels(a) for a in n.alerts]
    annotations = [_annotations(a) for a in n.alerts]
    alerts = [{"status": a.status, "labels": lab, "annotations": ann, "startsAt": a.starts_at,
               "endsAt": a.ends_at or ZERO_TIME, "fingerprint": a.fingerprint,
               "generatorURL": alert_url(base, a.id)}
              for a, lab, ann in zip(n.alerts, labels, annotations)]
    return {"version": "4", "groupKey": n.group_key, "truncatedAlerts": 0, "status": n.status,
            "receiver": receiver, "groupLabels": n.group_labels,
            "commonLabels": _common(labels), "commonAnnotations": _common(annotations),
            "externalURL": alert_url(base), "alerts": alerts}


def subject(n: Notification, prefix: str) -> str:
    firing = [a for a in n.alerts if a.status == "firing"]
    top = max(n.alerts, key=lambda a: a.severity.rank).severity.value
    what = ", ".join(f"{k}={v}" for k, v in n.group_labels.items())
    head = f"FIRING:{len(firing)}" if firing else "RESOLVED"
    return f"{prefix} [{head}] {what} ({top})".strip()


def text(n: Notification) -> str:
    """The e-mail body: each alert with where, what, since when, the figure against its limit, and the runbook."""
    base = (n.dashboard_url or "").rstrip("/")
    lines = []
    for status in ("firing", "resolved"):
        group = [a for a in n.alerts if a.status == status]
        if not group:
            continue
        lines.append(f"{status.upper()} ({len(group)})")
        for a in sorted(group, key=lambda a: (-a.severity.rank, a.device)):
            where = "whole fleet" if a.device == "*" else f"device {a.device}"
            lines.append(f"- [{a.severity.value}] {a.rule} on {where}" + (f": {a.message}" if a.message else ""))
            since = f"  since {a.starts_at}" + (f", cleared {a.ends_at}" if a.ends_at else "")
            if a.flaps:
                since += f"; raised {a.flaps} times since the last message (flapping)"
            lines.append(since)
            if a.value is not None and a.threshold is not None:
                lines.append(f"  value {a.value:.6g}, limit {a.threshold:.6g}")
            lines.append(f"  runbook: {a.runbook}")
            if base:
                lines.append(f"  alert: {alert_url(base, a.id)}")
        lines.append("")
    if base:
        lines.append(f"Acknowledge or silence: {alert_url(base)}")
    return "\n".join(lines).rstrip() + "\n"


def email(n: Notification, sender: str, to: list[str], prefix: str) -> EmailMessage:
    # SMTP line endings, and long headers kept on one line (RFC 5322 allows 998): a subject folded at 78 comes
    # back with a leading space in some clients
    msg = EmailMessage(policy=SMTP_POLICY)
    msg["Subject"] = subject(n, prefix)
    msg["From"] = sender
    msg["To"] = ", ".join(to)
    msg["X-Shadowline-Group"] = n.group_key
    msg.set_content(text(n))
    return msg
