"""What the dashboard shows, read from the fleet's store and computed by fleet.analytics; the pillars, the shadow
report, sign-offs, the audit log and a device's details come from fleet.decisions, as they do for the API and the
CLI."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from fleet import decisions
from fleet.analytics.alerts import AlertTracker, evaluate, evaluate_fleet
from fleet.analytics.pillars import Snapshot, baseline, health, snapshot
from fleet.analytics.shadow import ShadowReport
from fleet.analytics.windows import FLEET, Scope, Window, parse_ts
from fleet.decisions import audit_log, latest_signoff, now_utc, pillars, record_signoff
from fleet.devices import activation_of
from fleet.protocol import AlertRecord
from runtime.errors import NotFound

__all__ = ["audit_log", "capability", "device_page", "devices", "evaluate_alerts", "latest_signoff", "limits",
           "now_utc", "pillars", "record_signoff", "releases_newest_first", "shadow", "start_warnings"]


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
        act = activation_of(d)
        out.append({**d, "activation_state": act.state.value if act else "–",
                    "predictions_24h": s.health.predictions, "error_rate_24h": s.health.error_rate,
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
    hardware = hw if isinstance(hw, (str, dict)) else None
    return {"bundle": d.get("bundle"), "measured_at": d.get("measured_at") or ev.created_at,
            "hardware": hardware,
            "hardware_text": json.dumps(hardware, sort_keys=True) if isinstance(hardware, dict) else hardware or "",
            "config_rows": [{"id": c.get("id"), "p95_ms": _fig(c.get("p95_ms")),
                             "throughput_ips": _fig(c.get("throughput_ips"))} for c in configs],
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


def limits(fleet: Any, snap: Snapshot, device: str, release: str) -> tuple[dict[str, float | None], str]:
    """The alert rules' limits for the pillars' trend charts, as the rules compute them (alerts.evaluate over
    `snap`): error rate and override rate always; the latency and low-confidence limits are relative to a
    release's baseline (its first 7 days), so only when one release (`name@revision`) is chosen."""
    rules = fleet.config.alert_rules
    base: Snapshot | None = None
    note = "Choose a release (name@revision) to see the latency and low-confidence limits: they are relative to its baseline."
    if "@" in release:
        kw: dict[str, Any] = {"release": release} | ({"device": device} if device != FLEET else {})
        first = list(fleet.store.predictions(limit=1, **kw))
        if first:
            start = first[0].created_at
            end = (parse_ts(start) + timedelta(days=7)).isoformat()
            preds = list(fleet.store.predictions(since=start, until=end, **kw))
            base = baseline(preds, [], [], release, 7.0, device, opts=decisions.pillar_options(fleet)).snapshot
            note = f"Latency and low-confidence limits from {release}'s baseline (its first 7 days)."
        else:
            note = f"{release} has no predictions here to take a baseline from."
    found = {c.rule: c.threshold for c in evaluate(rules, snap, base)}
    lat = rules.latency
    latency = found.get("latency:total") if lat.stage == "total" and lat.statistic == "p95" else None
    return ({"error_rate": found.get("error_rate"), "override_rate": found.get("override_rate"),
             "latency": latency, "low_confidence": found.get("low_confidence_spike")}, note)


def releases_newest_first(fleet: Any) -> list[dict[str, Any]]:
    """Every release as {ref, mode, created_at}, the newest first (what a rollout most likely wants)."""
    rows = [{"ref": r["ref"], "mode": (r.get("spec") or {}).get("mode", "?"), "created_at": r.get("created_at") or ""}
            for r in fleet.releases.list()]
    return sorted(rows, key=lambda r: (r["created_at"], r["ref"]), reverse=True)


def start_warnings(fleet: Any, release: str, group: str, shadow_first: bool) -> list[str]:
    """What an admin must know before starting a rollout: a shadow release rolled out in place of a production
    release takes the group's devices back to shadow (they stop acting on flags)."""
    modes = {r["ref"]: r["mode"] for r in releases_newest_first(fleet)}
    if shadow_first or modes.get(release) != "shadow":
        return []
    prod = sorted((d["id"], d["active"]) for d in fleet.devices.list(group=group)
                  if d.get("active") and modes.get(d["active"]) == "production")
    if not prod:
        return []
    running = ", ".join(f"{dev} ({ref})" for dev, ref in prod)
    return [f"{release} is a shadow release. It replaces the production release on {len(prod)} device(s) of group "
            f"{group}: {running}. They go back to shadow mode and stop acting on flags (no work orders, no "
            f"webhooks) until a production release is rolled out. To evaluate {release} beside production, go back "
            f"and tick \"shadow first\"."]


def device_page(fleet: Any, device: str, now: datetime | None = None, recent: int = 20) -> dict[str, Any]:
    """Everything the device page shows: fleet.decisions.device_details (registry, reported state, desired state,
    24 h health, open alerts, capability, recent errors) plus its recent predictions, alert history, refused
    records, refused control messages, latest readings and backlog series. NotFound for an unknown device."""
    now = now or now_utc()
    d = decisions.device_details(fleet, device, now)
    win = Window.last("24h", end=now)
    modes = {r["ref"]: r["mode"] for r in releases_newest_first(fleet)}
    stages: list[dict[str, Any]] = []
    if d["desired"]["release"]:
        try:
            spec = fleet.releases.get(d["desired"]["release"])
            stages = [{"role": s.role, "bundle": s.bundle, "thresholds": _thresholds(s)} for s in spec.stages]
        except NotFound:
            stages = []
    preds = list(fleet.store.predictions(device=device, since=win.start.isoformat()))
    mets = list(fleet.store.metrics(device=device, since=win.start.isoformat()))
    caps = fleet.store.latest_events("capability", device=device)
    views = [v for v in fleet.alerts.current() if v.device == device]
    seen = {v.id for v in views}
    views += [v for v in fleet.alerts.history() if v.device == device and v.id not in seen][:recent]
    return {"d": d, "modes": modes, "stages": stages, "reported": _reported(d), "predictions": preds[-recent:][::-1],
            "cap": capability(caps[device]) if device in caps else None, "alerts": views,
            "refused": [r for r in fleet.store.refused() if r["device"] == device],
            "control_refused": fleet.store.control_refused(device),
            "readings": _readings(mets[-1].values if mets else {}),
            "queue_series": health([], mets, win).queue_series}


def _reported(d: dict[str, Any]) -> dict[str, Any]:
    """What the device reported, as text. The stored activation is read as the protocol's Activation (a row that
    does not parse shows as unknown)."""
    raw_rep = d.get("reported")
    rep: dict[str, Any] = raw_rep if isinstance(raw_rep, dict) else {}
    act = activation_of(d)
    text = act.state.value if act else "–"
    if act and act.target:
        text += f" → {act.target}"
    if act and act.chain:
        text += f" ({' → '.join(s.value for s in act.chain)})"
    hw = rep.get("hardware")
    return {"cached": [str(x) for x in rep.get("cached") or [] if x is not None],
            "backends": [str(x) for x in rep.get("backends") or [] if x is not None],
            "hardware": sorted((str(k), str(v)) for k, v in hw.items()) if isinstance(hw, dict) else [],
            "updated_at": rep.get("updated_at"), "activation": text}


def _thresholds(stage: Any) -> str:
    if stage.thresholds:
        return ", ".join(f"{k} {v:g}" for k, v in stage.thresholds.items())
    classes = ", ".join(stage.candidate_classes or []) or "any class"
    return f"{classes} at {stage.threshold:g}" if stage.threshold is not None else "bundle defaults"


def _readings(values: dict[str, float]) -> list[tuple[str, str]]:
    """The latest metrics record's platform readings, as people read them."""
    out: list[tuple[str, str]] = []
    if "rss_bytes" in values:
        out.append(("memory (daemon RSS)", f"{values['rss_bytes'] / 2**20:.0f} MiB"))
    if "cpu_percent" in values:
        out.append(("CPU (of one core)", f"{values['cpu_percent']:.0f}%"))
    if "gpu_percent" in values:
        out.append(("GPU", f"{values['gpu_percent']:.0f}%"))
    for k, v in sorted(values.items()):
        if k.startswith("temp_c:"):
            out.append((f"temperature {k[7:]}", f"{v:.1f} °C"))
        elif k.startswith("power_mw:"):
            out.append((f"power {k[9:]}", f"{v / 1000:.2f} W"))
    return out
