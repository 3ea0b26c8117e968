"""What the page templates are handed, built from data already computed (fleet.analytics snapshots, the store's
rows): table rows, chart geometry, the latency table that adds up. No HTML here: the templates escape everything."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fleet.analytics.pillars import HIST_BINS, Distribution, Health, TrendPoint
from fleet.dashboard.charts import Chart, histogram, line_chart
from fleet.protocol import PredictionRecord

# What each latency key of a prediction record measures on the device (edge/records.py and edge/pipeline.py):
# `decode` is taken before the first model; each stage role includes its own preprocessing; the record's `total`
# is the sum of the model stages and leaves decode out.
STAGE_ORDER = ("decode", "screen", "verify")
INCLUDES = {
    "decode": "image read and decoded, before any model",
    "screen": "preprocessing + screen model, every frame",
    "verify": "preprocessing + verify model (after a screen: its candidates only)",
    "total": "the model stages, no decode: the figure of the P95 SLO, latency alert and rollout gate",
}


@dataclass(frozen=True)
class LatencyRow:
    key: str
    label: str
    includes: str
    per_prediction: float | None  # mean over every prediction in scope, 0 where the stage did not run
    avg: float | None = None
    p95: float | None = None
    p99: float | None = None
    count: int | None = None
    sum: bool = False


@dataclass(frozen=True)
class LatencyTable:
    rows: list[LatencyRow]
    sum_text: str


def latency_table(h: Health) -> LatencyTable:
    """The stage table of the pillars: decode, each model stage, then the record's `total` (the model stages)
    and decode + total ("end to end"). Its "ms per prediction" column is each stage's time over all predictions,
    so decode + the stages = end to end, and the stages = total: the column adds up, whatever ran how often."""
    n = h.predictions
    lat = h.latency_ms
    stages = [k for k in STAGE_ORDER if k in lat and k != "decode"]
    stages += sorted(k for k in lat if k not in STAGE_ORDER and k != "total")

    def per(key: str) -> float | None:
        s = lat.get(key)
        return s.avg * s.count / n if s is not None and n else None

    def row(key: str, label: str, includes: str) -> LatencyRow:
        s = lat[key]
        return LatencyRow(key, label, includes, per(key), s.avg, s.p95, s.p99, s.count)

    rows = [row("decode", "decode", INCLUDES["decode"])] if "decode" in lat else []
    rows += [row(k, k, INCLUDES.get(k, f"preprocessing and the {k} model")) for k in stages]
    if "total" in lat:
        rows.append(LatencyRow("total", "total (model stages)", INCLUDES["total"], per("total"), lat["total"].avg,
                               lat["total"].p95, lat["total"].p99, lat["total"].count, sum=True))
    parts = [p for p in (per("decode"), per("total") if "total" in lat else None) if p is not None]
    if parts:
        rows.append(LatencyRow("end-to-end", "end to end", "decode + model stages: image to decision on the device "
                               "(time queued before decode not included)", sum(parts), sum=True))
    terms = (["decode"] if "decode" in lat else []) + (stages or (["total"] if "total" in lat else []))
    text = " + ".join(f"{k} {per(k):.1f}" for k in terms) + (f" = {sum(parts):.1f} ms end to end" if parts else "")
    if stages and "total" in lat:
        text += f"; {' + '.join(stages)} = total {per('total'):.1f} ms"
    return LatencyTable(rows, text or "no latencies reported")


def end_to_end(p: PredictionRecord) -> float | None:
    """Decode + the model stages of one record (ms); None when it reports neither."""
    parts = [p.latency_ms[k] for k in ("decode", "total") if k in p.latency_ms]
    return sum(parts) if parts else None


def confidence_histogram(d: Distribution, low: float) -> Chart:
    edges = [i / HIST_BINS for i in range(HIST_BINS + 1)]
    return histogram("chart-confidence", "confidence histogram (top score, bins of 0.1)", d.histogram, edges, low,
                     f"low confidence below {low:g}", note="errors left out; amber bins count as low confidence")


def trend_charts(points: Sequence[TrendPoint], limits: dict[str, float | None]) -> list[Chart]:
    """The 30-day trends, each from 0, with the alert rules' limits where a rule judges the figure."""
    days = [p.day for p in points]

    def lim(key: str, what: str) -> tuple[float | None, str]:
        v = limits.get(key)
        return v, (f"{what} {v * 100:.3g}%" if v is not None and key != "latency" else
                   f"{what} {v:.1f} ms" if v is not None else "")

    err, err_label = lim("error_rate", "error_rate alert above")
    ovr, ovr_label = lim("override_rate", "override_rate alert above")
    latency, lat_label = lim("latency", "latency alert above")
    low, low_label = lim("low_confidence", "low_confidence_spike above")
    return [
        line_chart("chart-predictions", "predictions per day", days, [float(p.predictions) for p in points], "count"),
        line_chart("chart-errors", "error rate", days, [p.error_rate if p.predictions else None for p in points],
                   "rate", err, err_label),
        line_chart("chart-latency", "P95 latency, model stages (ms)", days, [p.latency_p95_ms for p in points], "ms",
                   latency, lat_label, note="the record's total: decode not included"),
        line_chart("chart-overrides", "override rate", days, [p.override_rate if p.reviews else None for p in points],
                   "rate", ovr, ovr_label),
        line_chart("chart-lowconf", "low-confidence share", days,
                   [p.low_confidence_share if p.predictions else None for p in points], "rate", low, low_label),
        line_chart("chart-actions", "actions sent per day", days, [float(p.actions_sent) for p in points], "count"),
    ]


def queue_chart(series: Sequence[tuple[str, float]]) -> Chart:
    """The backlog readings of the device's metrics records (last 24 h), from 0."""
    return line_chart("chart-queue", "queue depth, last 24 h", [t[5:16].replace("T", " ") + " UTC" for t, _ in series],
                      [v for _, v in series], "count", note="from the device's metrics records, one reading per window")


@dataclass(frozen=True)
class GateView:
    name: str
    passed: bool | None
    detail: str


def gate_rows(gates: Sequence[Any] | None) -> list[list[GateView] | None]:
    """Per wave, each gate judged (✓/✗ with its values on hover); None for a wave not judged yet."""
    out: list[list[GateView] | None] = []
    for g in gates or []:
        if not g:
            out.append(None)
            continue
        views = []
        for name, v in (g.get("gates") or {}).items():
            passed = v.get("passed") if isinstance(v, dict) else v
            detail = {k: x for k, x in v.items() if k != "passed"} if isinstance(v, dict) else {}
            views.append(GateView(str(name), passed if passed is None else bool(passed),
                                  json.dumps(detail, default=str)))
        out.append(views or [GateView(json.dumps(g, default=str), None, "")])
    return out
