"""Alert rules over pillar snapshots, the tracker that turns them into AlertRecords (raised once when a condition
starts to hold, cleared once when it stops), and one pass of the rules over a whole fleet (`evaluate_fleet`).
Defaults are the field guide's."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from fleet.analytics.figures import confidence_drop
from fleet.analytics.pillars import Baseline, PillarOptions, Snapshot, baseline, snapshot
from fleet.analytics.windows import FLEET, Scope, Window, parse_ts, select
from fleet.protocol import AlertRecord, MetricsRecord, PredictionRecord, ReviewRecord, now_iso

# Figures such as 0.45 - 0.30 come out as 0.15000000000000002; a rule on "more than 15 points" must not fire there.
EPS = 1e-9


class _Cfg(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(True, description="evaluate this rule")


class LatencyRule(_Cfg):
    factor: float = Field(2.0, gt=0, description="fires when latency > factor x baseline")
    stage: str = Field("total", description="latency key: a stage role or 'total'")
    statistic: Literal["avg", "p95", "p99"] = Field("p95", description="which latency figure is compared")
    min_samples: int = Field(20, ge=1, description="predictions needed in the window before the rule is judged")


class ErrorRateRule(_Cfg):
    max_rate: float = Field(0.01, ge=0, le=1, description="fires when error rate > this")
    min_samples: int = Field(20, ge=1, description="predictions needed in the window")


class QueueRule(_Cfg):
    readings: int = Field(4, ge=2, description="fires when this many latest backlog readings strictly increase")


class ShareRule(_Cfg):
    max_points: float = Field(0.15, gt=0, le=1, description="fires when a class's share moves more than this "
                              "(absolute, 0.15 = 15 points) from baseline")
    min_samples: int = Field(50, ge=1, description="predictions needed in the window")


class ConfidenceRule(_Cfg):
    max_drop: float = Field(0.10, gt=0, le=1, description="fires when a class's mean confidence falls more than "
                            "this fraction below baseline")
    min_samples: int = Field(20, ge=1, description="predictions of the class needed in the window")


class LowConfidenceRule(_Cfg):
    factor: float = Field(2.0, gt=0, description="fires when the low-confidence share > factor x baseline ...")
    min_points: float = Field(0.05, ge=0, le=1, description="... and is at least this much above baseline")
    min_samples: int = Field(50, ge=1, description="predictions needed in the window")


class OverrideRule(_Cfg):
    max_overall: float = Field(0.15, ge=0, le=1, description="fires when the overall override rate > this")
    max_class: float = Field(0.25, ge=0, le=1, description="fires when any class's override rate > this")
    min_reviews: int = Field(20, ge=1, description="reviews needed for the overall rate")
    min_class_reviews: int = Field(10, ge=1, description="reviews of a class needed for its rate")


class AlertRules(BaseModel):
    """Every rule, each configurable; the defaults are the field guide's."""

    model_config = ConfigDict(extra="forbid")
    latency: LatencyRule = Field(default_factory=LatencyRule)
    error_rate: ErrorRateRule = Field(default_factory=ErrorRateRule)
    queue_growing: QueueRule = Field(default_factory=QueueRule)
    class_share: ShareRule = Field(default_factory=ShareRule)
    confidence_drop: ConfidenceRule = Field(default_factory=ConfidenceRule)
    low_confidence_spike: LowConfidenceRule = Field(default_factory=LowConfidenceRule)
    override_rate: OverrideRule = Field(default_factory=OverrideRule)


class Condition(BaseModel):
    """One rule's verdict on one snapshot; `active` None means not enough data to judge (state is kept)."""

    rule: str
    active: bool | None
    value: float | None = None
    threshold: float | None = None
    message: str = ""


def _over(value: float | None, limit: float, enough: bool) -> bool | None:
    """Strictly above `limit` (with EPS); None (not judged) without enough data or without a figure."""
    if not enough or value is None:
        return None
    return value > limit + EPS


def evaluate(rules: AlertRules, now: Snapshot, base: Snapshot | None) -> list[Condition]:
    """Judge every enabled rule on `now` against `base` (rules that need a baseline are skipped without one). The
    figures are the snapshot's (fleet.analytics.figures); a rule only compares them with its threshold."""
    out: list[Condition] = []
    h, d, o = now.health, now.distribution, now.overrides
    r = rules.error_rate
    if r.enabled:
        out.append(Condition(rule="error_rate", active=_over(h.error_rate, r.max_rate, h.predictions >= r.min_samples),
                             value=h.error_rate, threshold=r.max_rate,
                             message=f"error rate {_pct(h.error_rate, 2)} over {h.predictions} predictions "
                                     f"(limit {r.max_rate:.2%})"))
    q = rules.queue_growing
    if q.enabled and h.queue_series:
        tail = [v for _, v in h.queue_series[-q.readings:]]
        ok = len(tail) >= q.readings
        growing = ok and all(b > a for a, b in zip(tail, tail[1:]))
        out.append(Condition(rule="queue_growing", active=growing if ok else None,
                             value=tail[-1] - tail[0] if tail else None, threshold=0.0,
                             message=f"queue depth over the last {len(tail)} readings: {tail}"))
    o_r = rules.override_rate
    if o_r.enabled:
        out.append(Condition(rule="override_rate",
                             active=_over(o.overall.rate, o_r.max_overall, o.overall.reviews >= o_r.min_reviews),
                             value=o.overall.rate, threshold=o_r.max_overall,
                             message=f"override rate {_pct(o.overall.rate)} of {o.overall.reviews} reviewed cases "
                                     f"(limit {o_r.max_overall:.0%})"))
        for cls, rate in o.per_class.items():
            out.append(Condition(rule=f"override_rate:{cls}",
                                 active=_over(rate.rate, o_r.max_class, rate.reviews >= o_r.min_class_reviews),
                                 value=rate.rate, threshold=o_r.max_class,
                                 message=f"override rate for {cls} {_pct(rate.rate)} of {rate.reviews} reviewed "
                                         f"cases (limit {o_r.max_class:.0%})"))
    if base is None:
        return out
    bh, bd = base.health, base.distribution
    lr = rules.latency
    if lr.enabled and lr.stage in h.latency_ms and lr.stage in bh.latency_ms:
        cur = getattr(h.latency_ms[lr.stage], lr.statistic)
        ref = getattr(bh.latency_ms[lr.stage], lr.statistic)
        ok = h.latency_ms[lr.stage].count >= lr.min_samples and ref > 0
        out.append(Condition(rule=f"latency:{lr.stage}", active=_over(cur, lr.factor * ref, ok),
                             value=cur, threshold=lr.factor * ref,
                             message=f"{lr.stage} latency {lr.statistic} {cur:.1f} ms vs baseline {ref:.1f} ms "
                                     f"(limit {lr.factor:g}x)"))
    sr = rules.class_share
    if sr.enabled:
        ok = d.predictions >= sr.min_samples and bd.predictions > 0
        for cls in sorted(set(d.share) | set(bd.share)):
            # a class absent from one side has a share of 0 there: both sides were measured
            move = d.share.get(cls, 0.0) - bd.share.get(cls, 0.0)
            out.append(Condition(rule=f"class_share:{cls}", active=_over(abs(move), sr.max_points, ok),
                                 value=move, threshold=sr.max_points,
                                 message=f"share of {cls} {d.share.get(cls, 0.0):.1%} vs baseline "
                                         f"{bd.share.get(cls, 0.0):.1%} (limit {sr.max_points * 100:g} points)"))
    cr = rules.confidence_drop
    if cr.enabled:
        for cls, ref in sorted(bd.mean_confidence.items()):
            drop = confidence_drop(d.mean_confidence.get(cls), ref)
            if drop is None:
                continue
            out.append(Condition(rule=f"confidence_drop:{cls}",
                                 active=_over(drop, cr.max_drop, d.counts.get(cls, 0) >= cr.min_samples),
                                 value=drop, threshold=cr.max_drop,
                                 message=f"mean confidence of {cls} {d.mean_confidence[cls]:.3f} vs baseline "
                                         f"{ref:.3f} (drop {drop:.1%}, limit {cr.max_drop:.0%})"))
    lc = rules.low_confidence_spike
    if lc.enabled and bd.low_confidence_share is not None:
        limit = max(lc.factor * bd.low_confidence_share, bd.low_confidence_share + lc.min_points)
        out.append(Condition(rule="low_confidence_spike",
                             active=_over(d.low_confidence_share, limit, d.predictions >= lc.min_samples),
                             value=d.low_confidence_share, threshold=limit,
                             message=f"low-confidence share {_pct(d.low_confidence_share)} vs baseline "
                                     f"{bd.low_confidence_share:.1%}"))
    return out


def _pct(x: float | None, digits: int = 1) -> str:
    return "no data" if x is None else f"{x:.{digits}%}"


class AlertTracker:
    """Remembers which (scope, rule) alerts are raised, so each is raised once and cleared once."""

    def __init__(self, rules: AlertRules | None = None) -> None:
        self.rules = rules or AlertRules()
        self.active: dict[tuple[str, str], AlertRecord] = {}

    @classmethod
    def from_history(cls, alerts: Iterable[AlertRecord], rules: AlertRules | None = None) -> AlertTracker:
        """Rebuild the raised set from stored alerts (after a restart): the latest state per (device, rule) wins."""
        t = cls(rules)
        for a in sorted(alerts, key=lambda a: parse_ts(a.created_at)):
            key = (a.device, a.rule)
            if a.state == "raised":
                t.active[key] = a
            else:
                t.active.pop(key, None)
        return t

    def update(self, now: Snapshot, base: Snapshot | None, at: str | None = None) -> list[AlertRecord]:
        """Evaluate the rules on `now` and return the alerts that changed state (raised or cleared)."""
        device = now.scope.device
        # A release-scoped alert carries its release in the rule name, so from_history tells the scopes apart.
        suffix = f"|{now.scope.release}" if now.scope.release else ""
        changes: list[AlertRecord] = []
        for c in evaluate(self.rules, now, base):
            rule = c.rule + suffix
            key = (device, rule)
            if c.active is None:
                continue
            if c.active and key not in self.active:
                rec = AlertRecord(device=device, created_at=at or now_iso(), rule=rule, state="raised",
                                  value=c.value, threshold=c.threshold, message=c.message)
                self.active[key] = rec
                changes.append(rec)
            elif not c.active and key in self.active:
                del self.active[key]
                changes.append(AlertRecord(device=device, created_at=at or now_iso(), rule=rule, state="cleared",
                                           value=c.value, threshold=c.threshold, message=c.message))
        return changes


def evaluate_fleet(predictions: Iterable[PredictionRecord], reviews: Iterable[ReviewRecord],
                   metrics: Iterable[MetricsRecord], history: Iterable[AlertRecord], now: datetime | str,
                   window: str = "1h", rules: AlertRules | None = None, opts: PillarOptions | None = None,
                   baseline_days: float = 7.0) -> list[AlertRecord]:
    """One pass of the rules over a fleet: every device and the whole fleet, each against the baseline of the
    release it mostly ran in the window. Returns the alerts raised or cleared at `now`; `history` (stored alerts)
    tells which are raised already. The caller stores and publishes them (fleet.monitoring)."""
    preds, revs, mets = list(predictions), list(reviews), list(metrics)
    win = Window.last(window, end=now)
    tracker = AlertTracker.from_history(history, rules)
    recent = select(preds, win)
    cache: dict[str, Baseline | None] = {}

    def base_for(scope_preds: list[PredictionRecord]) -> Baseline | None:
        if not scope_preds:
            return None
        ref = Counter(f"{p.release}@{p.revision}" for p in scope_preds).most_common(1)[0][0]
        if ref not in cache:
            mine = select(preds, None, Scope(release=ref))
            start = parse_ts(mine[0].created_at) if mine else None
            # the baseline is the release's first days, but never the window being judged: that would hide
            # every change
            end = min(start + timedelta(days=baseline_days), win.start) if start else None
            cache[ref] = (baseline(preds, revs, mets, ref, window=Window(start=start, end=end), opts=opts)
                          if start is not None and end is not None and end > start else None)
        return cache[ref]

    changes: list[AlertRecord] = []
    devices = sorted({p.device for p in recent} | {m.device for m in select(mets, win)}
                     | {r.device for r in select(revs, win)})
    for device in devices + [FLEET]:
        scope = Scope(device=device)
        now_snap = snapshot(preds, revs, mets, win, scope, opts)
        b = base_for(select(recent, None, scope))
        changes += tracker.update(now_snap, b.snapshot if b else None, at=win.end.isoformat())
    return changes
