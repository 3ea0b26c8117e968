"""The go/no-go gate on promoting a release from shadow to production on a device group. Refused unless the
shadow report says go, or an admin records an explicit override with a reason; every attempt goes to an audit
log. The fleet service passes its own audit store (anything with `append`)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator

from fleet.analytics.shadow import ShadowReport
from fleet.protocol import new_id, now_iso
from runtime.errors import ConfigError, Conflict


class AuditEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(default_factory=new_id)
    at: str = Field(default_factory=now_iso)
    actor: str
    action: Literal["promote"] = "promote"
    release: str
    group: str
    outcome: Literal["allowed", "refused", "overridden"]
    reason: str = ""
    failed_checks: list[str] = Field(default_factory=list)
    report: dict = Field(default_factory=dict, description="summary of the shadow report the decision used")


class AuditLog(Protocol):
    def append(self, entry: AuditEntry) -> None: ...


class MemoryAuditLog:
    def __init__(self) -> None:
        self.entries: list[AuditEntry] = []

    def append(self, entry: AuditEntry) -> None:
        self.entries.append(entry)


class JsonlAuditLog:
    """Append-only JSON lines; each entry is fsynced before the promotion it allows goes ahead."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def append(self, entry: AuditEntry) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(entry.model_dump_json() + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def entries(self) -> list[AuditEntry]:
        if not self.path.exists():
            return []
        return [AuditEntry.model_validate_json(line) for line in self.path.read_text().split("\n") if line.strip()]  # JSONL: \x85 is no line end


class AdminOverride(BaseModel):
    model_config = ConfigDict(extra="forbid")
    by: str = Field(min_length=1, description="the admin taking responsibility")
    reason: str = Field(min_length=1, description="why the criteria are set aside; kept in the audit log")

    @field_validator("by", "reason")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be blank")
        return v.strip()


class Decision(BaseModel):
    allowed: bool
    overridden: bool
    failed_checks: list[str]
    audit_id: str


def _summary(report: ShadowReport) -> dict:
    return {"go": report.go, "window": [report.window.start.isoformat(), report.window.end.isoformat()],
            "days": report.coverage.days, "model_recall": report.model_recall,
            "inspector_recall": report.inspector_recall, "fp_rate": report.fp_rate, "reviewed": report.reviewed,
            "unresolved": report.unresolved, "override_rate": report.override_rate.rate,
            "adjudicators": report.adjudicators}


class PromotionGate:
    """`promote` returns a Decision when promotion may go ahead and raises Conflict when it may not."""

    def __init__(self, audit: AuditLog, is_admin: Callable[[str], bool]) -> None:
        self.audit, self.is_admin = audit, is_admin

    def promote(self, release: str, group: str, report: ShadowReport, actor: str,
                override: AdminOverride | None = None) -> Decision:
        if report.release.partition("@")[0] != release.partition("@")[0]:
            raise ConfigError(f"the shadow report is for {report.release}, not {release}")
        failed = [c.name for c in report.checks if not c.passed]
        entry = AuditEntry(actor=actor, release=release, group=group, outcome="allowed", failed_checks=failed,
                           report=_summary(report))
        if report.go:
            self.audit.append(entry)
            return Decision(allowed=True, overridden=False, failed_checks=[], audit_id=entry.id)
        if override is not None and self.is_admin(override.by):
            entry = entry.model_copy(update={"outcome": "overridden", "actor": override.by, "reason": override.reason})
            self.audit.append(entry)
            return Decision(allowed=True, overridden=True, failed_checks=failed, audit_id=entry.id)
        why = (f"{override.by} is not an admin and cannot override the gate" if override is not None
               else f"exit criteria not met: {', '.join(failed)}")
        self.audit.append(entry.model_copy(update={"outcome": "refused", "reason": why}))
        raise Conflict(f"promotion of {release} on {group} refused: {why}")
