"""The decisions over HTTP, for scripts and the CLI: the pillars, the shadow report (JSON or Markdown), sign-off,
promotion through the gate (with the audited admin override), the audit log, alerts (list, acknowledge, resolve,
silence) and one device's details. Everything goes through fleet.decisions and the fleet's AlertBook, as the
dashboard does, so every surface gives the same answer for the same data. Listed in OpenAPI under /docs."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any, Literal

from fastapi import APIRouter, Body, Depends, Query, Request
from fastapi.responses import PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from fleet import decisions
from fleet.alerting import AlertView, Silence
from fleet.analytics.gate import AuditEntry
from fleet.analytics.pillars import Snapshot, TrendPoint
from fleet.analytics.shadow import ShadowReport, SignOff
from fleet.analytics.windows import FLEET
from fleet.decisions import Promotion
from fleet.http_guard import require
from fleet.security import TokenEntry

_SPAN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> timedelta:
    """'90s', '30m', '2h', '1d' or a number of seconds."""
    m = _SPAN.match(text)
    if m is None:
        raise ValueError(f"duration {text!r}: expected a number with s, m, h or d (e.g. 30m, 2h, 1d)")
    return timedelta(seconds=float(m.group(1)) * _UNIT_S[m.group(2)])


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SignOffRequest(_Body):
    release: str = Field(min_length=1, description="release ref name@revision in shadow")
    group: str = Field(min_length=1, description="device group the shadow period ran on")
    note: str = Field("", max_length=2000)


class PromoteRequest(_Body):
    release: str = Field(min_length=1, description="release ref name@revision in shadow")
    group: str = Field(min_length=1, description="device group to promote it on")
    days: int = Field(14, ge=1, le=365, description="the shadow period the report covers, ending now")
    override_reason: str = Field("", max_length=2000, description="an admin's reason to promote although the exit "
                                 "criteria are not met (audited); empty: promote only on GO")


class NoteRequest(_Body):
    note: str = Field("", max_length=2000)


class SilenceRequest(_Body):
    device: str = Field("*", min_length=1, max_length=200, description="device id or pattern ('*': all and the "
                        "fleet-wide alerts)")
    rule: str = Field("*", min_length=1, max_length=300, description="rule or pattern, e.g. override_rate:*")
    reason: str = Field(min_length=1, max_length=2000, description="shown to everyone the alert would have reached")
    duration: str = Field(description="how long: 90s, 30m, 2h, 1d (at most 31 days)")

    @field_validator("duration")
    @classmethod
    def _duration(cls, v: str) -> str:
        parse_duration(v)
        return v


class Pillars(BaseModel):
    snapshot: Snapshot
    trend: list[TrendPoint] | None = Field(None, description="one point per day of the last 30 days (trend=true)")


def build_router() -> APIRouter:
    r = APIRouter()
    admin, viewer = require("admin"), require("viewer")

    # -- figures -------------------------------------------------------------------------------------------------
    @r.get("/api/pillars", tags=["figures"], response_model=Pillars, response_model_exclude_none=False,
           summary="The four pillars over a window (fleet.analytics.figures), optionally with the 30-day trend")
    def pillars(request: Request, device: str = Query(FLEET, description="device id, or '*' for the fleet"),
                release: str = Query("", description="release name or name@revision; empty: every release"),
                window: Literal["1h", "24h", "30d"] = "24h", trend: bool = False,
                _: TokenEntry = Depends(viewer)) -> Pillars:
        snap, points = decisions.pillars(request.app.state.fleet, device or FLEET, release or None, window)
        return Pillars(snapshot=snap, trend=points if trend else None)

    # -- the shadow report, sign-off, promotion -------------------------------------------------------------------
    @r.get("/api/shadow/report", tags=["decisions"], response_model=ShadowReport,
           summary="The shadow report of a release on a group: GO / NO-GO with every criterion (JSON or Markdown)",
           responses={200: {"content": {"text/markdown": {}}}})
    def shadow_report(request: Request, release: str = Query(description="release ref name@revision"),
                      group: str = Query(description="device group"), days: int = Query(14, ge=1, le=365),
                      format: Literal["json", "md"] = "json", _: TokenEntry = Depends(viewer)) -> Response:
        report = decisions.report(request.app.state.fleet, release, group, days)
        if format == "md":
            return PlainTextResponse(report.to_markdown(), media_type="text/markdown")
        return Response(report.to_json(), media_type="application/json")

    @r.post("/api/shadow/signoff", tags=["decisions"], response_model=SignOff,
            summary="Record a sign-off of a shadow period by the token's holder (the gate reads the latest)")
    def sign_off(request: Request, body: SignOffRequest, who: TokenEntry = Depends(admin)) -> SignOff:
        return decisions.record_signoff(request.app.state.fleet, body.release, body.group,
                                        SignOff(by=who.name, note=body.note))

    @r.post("/api/shadow/promote", tags=["decisions"], response_model=Promotion,
            summary="Promote a shadow release to production on a group through the go/no-go gate",
            description="Refused (409, naming the failed criteria) unless the shadow report says GO or the admin "
                        "gives an `override_reason`; every attempt is in the audit log. On success the next "
                        "revision is created in production mode and rolled out to the group.")
    def promote(request: Request, body: PromoteRequest, who: TokenEntry = Depends(admin)) -> Promotion:
        return decisions.promote(request.app.state.fleet, body.release, body.group, actor=who.name,
                                 admin="admin" in who.roles, reason=body.override_reason, days=body.days)

    @r.get("/api/shadow/audit", tags=["decisions"], response_model=list[AuditEntry],
           summary="The promotion audit log (every attempt, refused or allowed), oldest first")
    def audit(request: Request, release: str = Query("", description="only this release (name or ref)"),
              _: TokenEntry = Depends(viewer)) -> list[AuditEntry]:
        entries = decisions.audit_log(request.app.state.fleet).entries()
        name = release.partition("@")[0]
        return [e for e in entries if not release or e.release == release
                or ("@" not in release and e.release.partition("@")[0] == name)]

    # -- alerts ----------------------------------------------------------------------------------------------------
    @r.get("/api/alerts", tags=["alerts"], response_model=list[AlertView],
           summary="Open alerts, most urgent first; with history=true every incident, newest first")
    def list_alerts(request: Request, history: bool = False, limit: int = Query(200, ge=1, le=5000),
                    _: TokenEntry = Depends(viewer)) -> list[AlertView]:
        book = request.app.state.fleet.alerts
        return book.history(limit) if history else book.current()

    @r.get("/api/alerts/{alert_id}", tags=["alerts"], response_model=AlertView)
    def get_alert(alert_id: str, request: Request, _: TokenEntry = Depends(viewer)) -> AlertView:
        return request.app.state.fleet.alerts.get(alert_id)

    @r.post("/api/alerts/{alert_id}/ack", tags=["alerts"], response_model=AlertView,
            summary="Acknowledge an open alert as the token's holder (409 when resolved or acknowledged already)")
    def ack(alert_id: str, request: Request, body: NoteRequest = Body(default_factory=NoteRequest),
            who: TokenEntry = Depends(admin)) -> AlertView:
        return request.app.state.fleet.alerts.ack(alert_id, who.name, body.note)

    @r.post("/api/alerts/{alert_id}/resolve", tags=["alerts"], response_model=AlertView,
            summary="Close an open alert by hand; raised again at the next evaluation if the condition holds")
    def resolve(alert_id: str, request: Request, body: NoteRequest = Body(default_factory=NoteRequest),
                who: TokenEntry = Depends(admin)) -> AlertView:
        return request.app.state.fleet.alerts.resolve(alert_id, who.name, body.note)

    @r.get("/api/silences", tags=["alerts"], response_model=list[Silence],
           summary="Silences in force (all=true: ended ones too), newest first")
    def list_silences(request: Request, all: bool = False, _: TokenEntry = Depends(viewer)) -> list[Silence]:
        return request.app.state.fleet.alerts.silences(include_ended=all)

    @r.post("/api/silences", tags=["alerts"], response_model=Silence,
            summary="Silence notifications for matching alerts for a while (they still show, marked silenced)")
    def silence(request: Request, body: SilenceRequest, who: TokenEntry = Depends(admin)) -> Silence:
        return request.app.state.fleet.alerts.silence(who.name, body.reason, parse_duration(body.duration),
                                                      device=body.device, rule=body.rule)

    @r.post("/api/silences/{silence_id}/expire", tags=["alerts"], response_model=Silence,
            summary="End a silence now")
    def expire(silence_id: str, request: Request, who: TokenEntry = Depends(admin)) -> Silence:
        return request.app.state.fleet.alerts.expire(silence_id, who.name)

    # -- one device ------------------------------------------------------------------------------------------------
    @r.get("/api/devices/{device}", tags=["devices"],
           summary="One device: registry, what it reported (versions, hardware, activation), what the fleet asked "
                   "it to run, 24 h health, open alerts, capability and recent errors")
    def device(device: str, request: Request, _: TokenEntry = Depends(viewer)) -> dict[str, Any]:
        return decisions.device_details(request.app.state.fleet, device)

    return r
