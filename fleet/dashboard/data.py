"""What the dashboard shows, read from the fleet's store and computed by fleet.analytics. Sign-offs and the
promotion audit log are append-only JSON lines in the fleet's data directory."""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from fleet.analytics.alerts import AlertTracker
from fleet.analytics.gate import JsonlAuditLog
from fleet.analytics.monitor import evaluate_fleet
from fleet.analytics.pillars import Snapshot, TrendPoint, snapshot, trend
from fleet.analytics.shadow import ExitCriteria, ShadowReport, SignOff, shadow_report
from fleet.analytics.windows import FLEET, WINDOWS, Scope, Window
from fleet.protocol import AlertRecord
from runtime.errors import ConfigError


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


def data_dir(fleet: Any) -> Path:
    return Path(fleet.config.data_dir)


def audit_log(fleet: Any) -> JsonlAuditLog:
    return JsonlAuditLog(data_dir(fleet) / "promotion-audit.jsonl")


def _signoff_path(fleet: Any) -> Path:
    return data_dir(fleet) / "shadow-signoffs.jsonl"


def record_signoff(fleet: Any, release: str, group: str, signoff: SignOff) -> None:
    path = _signoff_path(fleet)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"release": release, "group": group, **signoff.model_dump()}) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def latest_signoff(fleet: Any, release: str, group: str) -> SignOff | None:
    path = _signoff_path(fleet)
    if not path.exists():
        return None
    found = None
    for line in path.read_text().splitlines():
        d = json.loads(line)
        if d.pop("release") == release and d.pop("group") == group:
            found = SignOff.model_validate(d)
    return found


def _since(window: Window) -> str:
    return window.start.isoformat()


def devices(fleet: Any, now: datetime | None = None) -> list[dict[str, Any]]:
    """Every device with its state and the last 24 h of health."""
    now = now or now_utc()
    win = Window.last("24h", end=now)
    preds = list(fleet.store.predictions(since=_since(win)))
    mets = list(fleet.store.metrics(since=_since(win)))
    active = AlertTracker.from_history(fleet.store.alerts()).active
    caps = fleet.store.latest_events("capability")
    out = []
    for d in fleet.devices.list():
        s = snapshot(preds, [], mets, win, Scope(device=d["id"]))
        total = s.health.latency_ms.get("total")
        out.append({**d, "predictions_24h": s.health.predictions, "error_rate_24h": s.health.error_rate,
                    "p95_ms_24h": total.p95 if total else None, "queue_depth": s.health.queue_depth,
                    "alerts": sorted(rule for (dev, rule) in active if dev == d["id"]),
                    "capability": capability(caps[d["id"]]) if d["id"] in caps else None})
    return out


def _fig(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def capability(ev: Any) -> dict[str, Any]:
    """The headline of a device's latest capability record (hwbench --publish): bundle, when, the fastest
    measured configuration, and the use-case verdicts. Missing or odd fields become None, never an error: the
    record is the device's word, the page must render whatever arrived."""
    d = ev.detail if isinstance(ev.detail, dict) else {}
    configs = [c for c in d.get("configs") or [] if isinstance(c, dict)]
    timed = [c for c in configs if _fig(c.get("p95_ms")) is not None]
    best = min(timed, key=lambda c: _fig(c.get("p95_ms"))) if timed else None
    verdicts = d.get("verdicts") if isinstance(d.get("verdicts"), dict) else {}
    hw = d.get("hardware")
    return {"bundle": d.get("bundle"), "measured_at": d.get("measured_at") or ev.created_at,
            "hardware": hw if isinstance(hw, (str, dict)) else None,
            "best_config": best.get("id") if best else None, "p95_ms": _fig(best.get("p95_ms")) if best else None,
            "throughput_ips": _fig(best.get("throughput_ips")) if best else None,
            "verdicts": {str(k): str(v.get("status")) for k, v in verdicts.items() if isinstance(v, dict)},
            "configs": len(configs), "record_id": ev.id}


def pillars(fleet: Any, device: str = FLEET, release: str | None = None, window: str = "24h",
            now: datetime | None = None) -> tuple[Snapshot, list[TrendPoint]]:
    """The four pillars over `window` and one point per day over the last 30 days."""
    if window not in WINDOWS:
        raise ConfigError(f"unknown window {window!r}; known: {', '.join(WINDOWS)}")
    now = now or now_utc()
    month = Window.last("30d", end=now)
    kw: dict[str, Any] = {"since": _since(month)}
    if device != FLEET:
        kw["device"] = device
    if release:
        kw["release"] = release
    preds = list(fleet.store.predictions(**kw))
    revs = list(fleet.store.reviews(**kw))
    mets = list(fleet.store.metrics(**kw))
    scope = Scope(device=device, release=release or None)
    return (snapshot(preds, revs, mets, Window.last(window, end=now), scope),
            trend(preds, revs, mets, month, scope))


def alerts(fleet: Any, limit: int = 200) -> tuple[list[AlertRecord], list[AlertRecord]]:
    """(currently raised, latest changes newest first)."""
    history = list(fleet.store.alerts())
    active = list(AlertTracker.from_history(history).active.values())
    return active, list(reversed(history[-limit:]))


def evaluate_alerts(fleet: Any, now: datetime | None = None, window: str = "1h") -> list[AlertRecord]:
    """Run the rules now, store the changes and return them."""
    monitor = getattr(fleet, "monitor", None)
    if monitor is not None and window == fleet.config.monitor_window:
        # the service's own pass: same rules, same lock as its loop (never raised twice), and published
        return monitor.run_once(now)
    now = now or now_utc()
    since = (now - timedelta(days=60)).isoformat()
    changes = evaluate_fleet(fleet.store.predictions(since=since), fleet.store.reviews(since=since),
                             fleet.store.metrics(since=since), fleet.store.alerts(), now, window)
    if changes:
        fleet.store.insert_records("alerts", [a.model_dump(mode="json") for a in changes])
    return changes


def shadow(fleet: Any, release: str, group: str, days: int = 14, adjudicators: list[str] | None = None,
           criteria: ExitCriteria | None = None, now: datetime | None = None) -> ShadowReport:
    """The shadow report of `release` on `group` over the last `days` days, with the recorded sign-off."""
    if not release or not group:
        raise ConfigError("a shadow report needs a release and a device group")
    now = now or now_utc()
    win = Window.last(timedelta(days=days), end=now)
    preds = list(fleet.store.predictions(group=group, release=release, since=_since(win)))
    revs = list(fleet.store.reviews(group=group, release=release, since=_since(win)))
    return shadow_report(preds, revs, release, win, devices=fleet.store.group_devices(group),
                         adjudicators=adjudicators or [], criteria=criteria,
                         sign_off=latest_signoff(fleet, release, group))
