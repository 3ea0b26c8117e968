"""What the fleet decides on, read from its store with its own settings: the four pillars, the shadow report (with
the fleet's adjudicators and exit criteria), sign-offs, and promotion from shadow to production through the gate.
The dashboard, the API (fleet/api_decisions.py) and the CLI all go through here, so the same data gives the same
figures and the same verdict on every surface. Sign-offs and the promotion audit log are append-only JSON lines in
the fleet's data directory."""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from fleet.analytics.gate import AdminOverride, Decision, JsonlAuditLog, PromotionGate
from fleet.analytics.pillars import PillarOptions, Snapshot, TrendPoint, snapshot, trend
from fleet.analytics.shadow import ShadowReport, SignOff, shadow_report
from fleet.analytics.windows import FLEET, WINDOWS, Scope, Window
from runtime.errors import ConfigError

if TYPE_CHECKING:  # the service imports this module; only its type is needed here
    from fleet.service import Fleet


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


def pillar_options(fleet: Fleet) -> PillarOptions:
    """The pillar settings every surface uses: the fleet's adjudicators decide cases."""
    return PillarOptions(adjudicators=fleet.config.adjudicators)


def review_since(fleet: Fleet, start: datetime) -> str:
    """How far back verdicts are read for a window starting at `start`: a case counts in the window of its first
    verdict, so the verdicts before the window tell a later adjudication of an earlier case from a new case."""
    return (start - timedelta(days=fleet.config.monitor_lookback_days)).isoformat()


def pillars(fleet: Fleet, device: str = FLEET, release: str | None = None, window: str = "24h",
            now: datetime | None = None) -> tuple[Snapshot, list[TrendPoint]]:
    """The four pillars over `window` and one point per day over the last 30 days."""
    if window not in WINDOWS:
        raise ConfigError(f"unknown window {window!r}; known: {', '.join(WINDOWS)}")
    now = now or now_utc()
    month = Window.last("30d", end=now)
    kw: dict[str, Any] = {}
    if device != FLEET:
        kw["device"] = device
    if release:
        kw["release"] = release
    preds = list(fleet.store.predictions(since=month.start.isoformat(), **kw))
    revs = list(fleet.store.reviews(since=review_since(fleet, month.start), **kw))
    mets = list(fleet.store.metrics(since=month.start.isoformat(), **kw))
    scope = Scope(device=device, release=release or None)
    opts = pillar_options(fleet)
    return (snapshot(preds, revs, mets, Window.last(window, end=now), scope, opts),
            trend(preds, revs, mets, month, scope, opts))


# -- sign-offs and the audit log -----------------------------------------------------------------------------------
def audit_log(fleet: Fleet) -> JsonlAuditLog:
    return JsonlAuditLog(Path(fleet.config.data_dir) / "promotion-audit.jsonl")


def _signoff_path(fleet: Fleet) -> Path:
    return Path(fleet.config.data_dir) / "shadow-signoffs.jsonl"


def record_signoff(fleet: Fleet, release: str, group: str, signoff: SignOff) -> SignOff:
    """Append a sign-off (fsynced: it is what the gate will read)."""
    if not release or not group:
        raise ConfigError("a sign-off needs a release and a device group")
    fleet.releases.get(release)  # NotFound names a release that does not exist
    path = _signoff_path(fleet)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"release": release, "group": group, **signoff.model_dump()}) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    return signoff


def latest_signoff(fleet: Fleet, release: str, group: str) -> SignOff | None:
    path = _signoff_path(fleet)
    if not path.exists():
        return None
    found = None
    for line in path.read_text().split("\n"):  # not splitlines(): \x85 or U+2028 in a value is no line end
        if not line.strip():
            continue
        d = json.loads(line)
        if d.pop("release") == release and d.pop("group") == group:
            found = SignOff.model_validate(d)
    return found


# -- the shadow report and promotion ---------------------------------------------------------------------------
def report(fleet: Fleet, release: str, group: str, days: int = 14, now: datetime | None = None) -> ShadowReport:
    """The shadow report of `release` on `group` over the last `days` days, with the fleet's adjudicators and exit
    criteria and the recorded sign-off."""
    if not release or not group:
        raise ConfigError("a shadow report needs a release and a device group")
    if days < 1:
        raise ConfigError(f"days must be at least 1, got {days}")
    now = now or now_utc()
    win = Window.last(timedelta(days=days), end=now)
    preds = list(fleet.store.predictions(group=group, release=release, since=win.start.isoformat()))
    revs = list(fleet.store.reviews(group=group, release=release, since=win.start.isoformat()))
    return shadow_report(preds, revs, release, win, devices=fleet.store.group_devices(group),
                         adjudicators=fleet.config.adjudicators, criteria=fleet.config.exit_criteria,
                         sign_off=latest_signoff(fleet, release, group))


class Promotion(BaseModel):
    decision: Decision
    release: str = Field(description="the production revision created")
    rollout: str = Field(description="id of its rollout to the group")
    group: str


def promote(fleet: Fleet, release: str, group: str, actor: str, admin: bool, reason: str = "",
            days: int = 14) -> Promotion:
    """Promote `release` from shadow to production on `group` through the gate: on GO, or with an admin's audited
    override (`reason`). Creates the next revision in production mode and starts its rollout to the group.
    Conflict (409) when the gate refuses; every attempt is in the audit log."""
    from fleet.rollout import RolloutRequest

    rep = report(fleet, release, group, days)
    override = AdminOverride(by=actor, reason=reason) if reason.strip() else None
    gate = PromotionGate(audit_log(fleet), is_admin=lambda who: who == actor and admin)
    decision = gate.promote(release, group, rep, actor=actor, override=override)
    spec = fleet.releases.get(release)
    prod = fleet.releases.create(spec.model_copy(update={
        "mode": "production", "note": f"promoted from {spec.ref} (audit {decision.audit_id})"}), parent=spec.ref)
    st = fleet.rollouts.start(RolloutRequest(release=prod.ref, group=group))
    return Promotion(decision=decision, release=prod.ref, rollout=st["id"], group=group)


# -- one device ---------------------------------------------------------------------------------------------------
def device_details(fleet: Fleet, device: str, now: datetime | None = None, errors: int = 10) -> dict[str, Any]:
    """Everything the fleet knows about one device: registry (groups, tags, status, last seen), what it reported
    (active, candidate and cached releases, activation, versions, backends, hardware, last error), what the fleet
    asked it to run, its last 24 h of health (the pillar figures), its open alerts, its latest capability record
    and its most recent errors. NotFound for an unknown device."""
    now = now or now_utc()
    row = fleet.devices.get(device)
    win = Window.last("24h", end=now)
    since = win.start.isoformat()
    preds = list(fleet.store.predictions(device=device, since=since))
    revs = list(fleet.store.reviews(device=device, since=review_since(fleet, win.start)))
    mets = list(fleet.store.metrics(device=device, since=since))
    snap = snapshot(preds, revs, mets, win, Scope(device=device), pillar_options(fleet))
    total = snap.health.latency_ms.get("total")
    want, want_candidate = fleet.desired.current(device)
    cap = fleet.store.latest_events("capability", device=device).get(device)
    return {
        "id": device, "groups": row["groups"], "tags": row["tags"], "status": row.get("status"),
        "first_seen": row.get("first_seen"), "last_seen": row.get("last_seen"),
        "reported": row.get("reported") or {}, "active": row.get("active"), "candidate": row.get("candidate"),
        "activation": row.get("activation") or {}, "last_error": row.get("last_error"),
        "desired": {"release": want, "candidate": want_candidate, "revision": fleet.desired.revision(device)},
        "health_24h": {"predictions": snap.health.predictions, "error_rate": snap.health.error_rate,
                       "latency_p95_ms": total.p95 if total else None, "queue_depth": snap.health.queue_depth,
                       "override_rate": snap.overrides.overall.rate, "reviewed_cases": snap.overrides.overall.reviews},
        "alerts": [a.model_dump(mode="json") for a in fleet.alerts.current() if a.device == device],
        "capability": cap.model_dump(mode="json") if cap else None,
        "recent_errors": [{"at": p.created_at, "source": p.source, "release": f"{p.release}@{p.revision}",
                           "error": p.error} for p in preds if p.decision == "error"][-errors:][::-1],
    }
