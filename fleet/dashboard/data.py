"""What the dashboard shows, read from the fleet's store and computed by fleet.analytics; the pillars, the shadow
report, sign-offs and the audit log come from fleet.decisions, as they do for the API and the CLI."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from fleet import decisions
from fleet.analytics.alerts import AlertTracker, evaluate_fleet
from fleet.analytics.pillars import snapshot
from fleet.analytics.shadow import ShadowReport
from fleet.analytics.windows import Scope, Window
from fleet.decisions import audit_log, latest_signoff, now_utc, pillars, record_signoff
from fleet.protocol import AlertRecord

__all__ = ["audit_log", "capability", "devices", "evaluate_alerts", "latest_signoff", "now_utc", "pillars",
           "record_signoff", "shadow"]


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
    timed = [(p95, c) for c in configs if (p95 := _fig(c.get("p95_ms"))) is not None]
    best = min(timed, key=lambda pc: pc[0])[1] if timed else None
    raw = d.get("verdicts")
    verdicts: dict[Any, Any] = raw if isinstance(raw, dict) else {}
    hw = d.get("hardware")
    return {"bundle": d.get("bundle"), "measured_at": d.get("measured_at") or ev.created_at,
            "hardware": hw if isinstance(hw, (str, dict)) else None,
            "best_config": best.get("id") if best else None, "p95_ms": _fig(best.get("p95_ms")) if best else None,
            "throughput_ips": _fig(best.get("throughput_ips")) if best else None,
            "verdicts": {str(k): str(v.get("status")) for k, v in verdicts.items() if isinstance(v, dict)},
            "configs": len(configs), "record_id": ev.id}


def evaluate_alerts(fleet: Any, now: datetime | None = None, window: str = "1h") -> list[AlertRecord]:
    """Run the rules now, store the changes and return them."""
    monitor = getattr(fleet, "monitor", None)
    if monitor is not None and window == fleet.config.monitor_window:
        # the service's own pass: same rules, same lock as its loop (never raised twice), and published
        return monitor.run_once(now)
    now = now or now_utc()
    since = (now - timedelta(days=fleet.config.monitor_lookback_days)).isoformat()
    changes = evaluate_fleet(fleet.store.predictions(since=since), fleet.store.reviews(since=since),
                             fleet.store.metrics(since=since), fleet.store.alerts(), now, window,
                             fleet.config.alert_rules, decisions.pillar_options(fleet))
    if changes:
        fleet.store.insert_records("alerts", [a.model_dump(mode="json") for a in changes])
    return changes


def shadow(fleet: Any, release: str, group: str, days: int = 14, now: datetime | None = None) -> ShadowReport:
    """The shadow report of `release` on `group` over the last `days` days (fleet.decisions.report)."""
    return decisions.report(fleet, release, group, days, now)
