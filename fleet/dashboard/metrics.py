"""Prometheus text exposition of the fleet service (the device daemon serves its own): devices, ingested
records, last-hour health and override rate per device and fleet-wide, raised alerts, rollouts by state."""

from __future__ import annotations

from collections import Counter
from typing import Any

from fleet.analytics.alerts import AlertTracker
from fleet.analytics.pillars import snapshot
from fleet.analytics.windows import FLEET, Scope, Window
from fleet.decisions import now_utc, pillar_options, review_since


def _label(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class _Out:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def metric(self, name: str, kind: str, help_text: str, samples: list[tuple[dict[str, str], float]]) -> None:
        self.lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        for labels, value in samples:
            lab = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
            self.lines.append(f"{name}{{{lab}}} {value:.6g}" if lab else f"{name} {value:.6g}")


def render_metrics(fleet: Any) -> str:
    now = now_utc()
    win = Window.last("1h", end=now)
    out = _Out()
    devices = fleet.devices.list()
    status = Counter(d.get("status") or "unknown" for d in devices)
    out.metric("shadowline_fleet_devices", "gauge", "Registered devices by connection status.",
               [({"status": s}, float(n)) for s, n in sorted(status.items())])
    out.metric("shadowline_fleet_records_total", "counter", "Records ingested and stored, by kind.",
               [({"kind": k}, float(fleet.store.count(k))) for k in ("predictions", "reviews", "metrics", "alerts",
                                                                      "events")])
    preds = list(fleet.store.predictions(since=win.start.isoformat()))
    revs = list(fleet.store.reviews(since=review_since(fleet, win.start)))
    mets = list(fleet.store.metrics(since=win.start.isoformat()))
    scopes = [FLEET] + [d["id"] for d in devices]
    opts = pillar_options(fleet)
    snaps = {s: snapshot(preds, revs, mets, win, Scope(device=s), opts) for s in scopes}

    def per(fn) -> list[tuple[dict[str, str], float]]:
        rows = []
        for s, snap in snaps.items():
            v = fn(snap)
            if v is not None:
                rows.append(({"device": "fleet" if s == FLEET else s}, float(v)))
        return rows

    out.metric("shadowline_fleet_predictions_1h", "gauge", "Predictions in the last hour.",
               per(lambda x: x.health.predictions))
    out.metric("shadowline_fleet_error_rate_1h", "gauge", "Share of predictions with decision=error, last hour.",
               per(lambda x: x.health.error_rate))
    out.metric("shadowline_fleet_latency_p95_ms_1h", "gauge", "P95 total latency in ms, last hour.",
               per(lambda x: x.health.latency_ms["total"].p95 if "total" in x.health.latency_ms else None))
    out.metric("shadowline_fleet_low_confidence_share_1h", "gauge", "Share of low-confidence predictions, last hour.",
               per(lambda x: x.distribution.low_confidence_share))
    out.metric("shadowline_fleet_override_rate_1h", "gauge", "Share of reviewed cases whose deciding verdict "
               "overrides the model (first verdict in the last hour).", per(lambda x: x.overrides.overall.rate))
    out.metric("shadowline_fleet_queue_depth", "gauge", "Last reported outbox backlog in the last hour.",
               per(lambda x: x.health.queue_depth))
    out.metric("shadowline_fleet_actions_sent_1h", "gauge", "Production flags (actions sent), last hour.",
               per(lambda x: x.impact.actions_sent))
    share = []
    for cls, v in snaps[FLEET].distribution.share.items():
        share.append(({"class": cls}, v))
    out.metric("shadowline_fleet_class_share_1h", "gauge", "Share of predictions per top class, fleet, last hour.",
               share)
    active = AlertTracker.from_history(fleet.store.alerts()).active
    out.metric("shadowline_fleet_alerts_raised", "gauge", "Alerts currently raised.", [({}, float(len(active)))])
    states = Counter(r["state"] for r in fleet.rollouts.list())
    out.metric("shadowline_fleet_rollouts", "gauge", "Rollouts by state.",
               [({"state": s}, float(n)) for s, n in sorted(states.items())])
    return "\n".join(out.lines) + "\n"
