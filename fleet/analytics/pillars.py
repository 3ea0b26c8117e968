"""The four monitoring pillars over one window and scope: inference health, prediction distribution, human
override rate and business impact; a release's baseline; daily trend points for 30-day charts."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import timedelta

from pydantic import BaseModel, ConfigDict, Field

from fleet.analytics import figures
from fleet.analytics.cases import NO_DEFECT, Case, review_cases
from fleet.analytics.figures import Rate
from fleet.analytics.windows import Scope, Window, days, parse_ts, select
from fleet.protocol import MetricsRecord, PredictionRecord, ReviewRecord
from runtime.errors import NotFound

# A device reports its outbox backlog under one of these names in MetricsRecord.values; the first found counts.
QUEUE_KEYS = ("queue_depth", "outbox_depth", "outbox_pending")
HIST_BINS = 10


class PillarOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    low_confidence: float = Field(0.6, ge=0, le=1, description="a prediction whose top score is below this is "
                                                              "low-confidence")
    confidence_bands: list[float] = Field([0.0, 0.5, 0.7, 0.9, 1.0], description="band edges for override rates; "
                                          "the last band includes its upper edge")
    adjudicators: list[str] = Field(default_factory=list, description="reviewers whose verdict decides a case "
                                    "(the fleet config's `adjudicators`)")


class LatencyStats(BaseModel):
    count: int
    avg: float
    p95: float
    p99: float


class Health(BaseModel):
    predictions: int = 0
    errors: int = 0
    error_rate: float | None = Field(None, description="figures.error_rate; None without predictions")
    throughput_per_min: float = 0.0
    latency_ms: dict[str, LatencyStats] = Field(default_factory=dict, description="per stage plus 'total'")
    queue_depth: float | None = Field(None, description="last reported backlog in the window")
    queue_series: list[tuple[str, float]] = Field(default_factory=list, description="(time, backlog) in order")


class Distribution(BaseModel):
    predictions: int = Field(0, description="scored predictions (errors left out)")
    counts: dict[str, int] = Field(default_factory=dict, description="scored predictions per top class")
    share: dict[str, float] = Field(default_factory=dict, description="figures.class_share")
    mean_confidence: dict[str, float] = Field(default_factory=dict, description="mean top score per top class")
    histogram: list[int] = Field(default_factory=lambda: [0] * HIST_BINS, description="top scores in 10 bins of 0.1")
    low_confidence_share: float | None = Field(None, description="figures.low_confidence_share; None without "
                                                                 "scored predictions")


class Overrides(BaseModel):
    overall: Rate = Field(default_factory=Rate, description="figures.override_rate over the window's cases")
    per_class: dict[str, Rate] = Field(default_factory=dict, description="keyed by the model's top class")
    per_band: dict[str, Rate] = Field(default_factory=dict, description="keyed by confidence band 'lo-hi'")
    false_positive_corrected: int = Field(0, description="overridden cases decided as false_positive")
    missed_defect_caught: int = Field(0, description="overridden cases decided as missed_defect")
    bad_image: int = 0
    disputed: int = 0
    unresolved: int = Field(0, description="figures.unresolved_disputes")


class Impact(BaseModel):
    actions_sent: int = Field(0, description="production flags of the active release (each triggers its actions)")
    model_caught_inspector_missed: int = Field(0, description="figures.model_only_catches")
    missed_defects: int = Field(0, description="figures.missed_defects: outcome a defect, the model passed")


class Snapshot(BaseModel):
    scope: Scope
    window: Window
    health: Health
    distribution: Distribution
    overrides: Overrides
    impact: Impact


def health(predictions: Sequence[PredictionRecord], metrics: Sequence[MetricsRecord], window: Window) -> Health:
    n = len(predictions)
    err = figures.error_rate(predictions)
    lat: dict[str, LatencyStats] = {}
    for stage in sorted({k for p in predictions for k in p.latency_ms}):
        v = figures.latencies(predictions, stage)
        p95, p99 = figures.latency_p95(predictions, stage), figures.percentile(v, 99)
        assert p95 is not None and p99 is not None  # the stage was reported, so v is not empty
        lat[stage] = LatencyStats(count=len(v), avg=sum(v) / len(v), p95=p95, p99=p99)
    series: list[tuple[str, float]] = []
    for m in metrics:
        key = next((k for k in QUEUE_KEYS if k in m.values), None)
        if key is not None:
            series.append((m.created_at, m.values[key]))
    return Health(predictions=n, errors=err.count, error_rate=err.value,
                  throughput_per_min=n / (window.seconds / 60) if window.seconds > 0 else 0.0, latency_ms=lat,
                  queue_depth=series[-1][1] if series else None, queue_series=series)


def distribution(predictions: Sequence[PredictionRecord], opts: PillarOptions) -> Distribution:
    scored = figures.scored(predictions)
    hist = [0] * HIST_BINS
    for p in scored:
        hist[min(HIST_BINS - 1, max(0, int((p.top_score or 0.0) * HIST_BINS)))] += 1
    counts = figures.class_counts(scored)
    return Distribution(predictions=len(scored), counts=dict(sorted(counts.items())),
                        share=figures.class_share(scored), mean_confidence=figures.mean_confidence(scored),
                        histogram=hist, low_confidence_share=figures.low_confidence_share(scored,
                                                                                          opts.low_confidence).value)


def _band(score: float | None, edges: list[float]) -> str | None:
    if score is None:
        return None
    for lo, hi in zip(edges, edges[1:]):
        if lo <= score < hi or (hi == edges[-1] and score == hi):
            return f"{lo:.2f}-{hi:.2f}"
    return None


def overrides(cases: Sequence[Case], opts: PillarOptions) -> Overrides:
    """Override rates over cases (figures.override_rate); a bad image says nothing about the model, so it is
    counted apart, not in a rate."""
    judged = figures.judged(cases)
    per_class: dict[str, list[Case]] = defaultdict(list)
    per_band: dict[str, list[Case]] = defaultdict(list)
    for c in judged:
        per_class[c.top_label or NO_DEFECT].append(c)
        band = _band(c.top_score, opts.confidence_bands)
        if band is not None:
            per_band[band].append(c)
    return Overrides(
        overall=figures.override_rate(judged),
        per_class={k: figures.override_rate(v) for k, v in sorted(per_class.items())},
        per_band={k: figures.override_rate(v) for k, v in sorted(per_band.items())},
        false_positive_corrected=sum(1 for c in judged if c.overridden and c.verdict == "false_positive"),
        missed_defect_caught=sum(1 for c in judged if c.overridden and c.verdict == "missed_defect"),
        bad_image=sum(1 for c in cases if c.bad_image), disputed=sum(1 for c in judged if c.disputed),
        unresolved=figures.unresolved_disputes(cases))


def impact(predictions: Sequence[PredictionRecord], cases: Sequence[Case]) -> Impact:
    return Impact(
        actions_sent=sum(1 for p in predictions if p.mode == "production" and p.role == "active"
                         and p.decision == "flag"),
        model_caught_inspector_missed=figures.model_only_catches(cases), missed_defects=figures.missed_defects(cases))


def snapshot(predictions: Iterable[PredictionRecord], reviews: Iterable[ReviewRecord],
             metrics: Iterable[MetricsRecord], window: Window, scope: Scope | None = None,
             opts: PillarOptions | None = None) -> Snapshot:
    """All four pillars for the records inside `window` and `scope`. Verdict figures are over the cases whose
    first verdict falls in the window (fleet.analytics.cases.review_cases): pass the verdicts from before the window
    too, so that a later adjudication of an earlier case is recognised as such (the fleet reads
    `monitor_lookback_days` of them)."""
    scope = scope or Scope()
    opts = opts or PillarOptions()
    preds = select(predictions, window, scope)
    cases = review_cases(select(reviews, None, scope), opts.adjudicators, window)
    mets = select(metrics, window, scope)
    return Snapshot(scope=scope, window=window, health=health(preds, mets, window),
                    distribution=distribution(preds, opts), overrides=overrides(cases, opts),
                    impact=impact(preds, cases))


class Baseline(BaseModel):
    """The reference figures of one release: its first N days in the field, or a window set explicitly."""

    release: str = Field(description="release ref name@revision")
    source: str = Field(description="'first_days:N' or 'explicit'")
    snapshot: Snapshot


def baseline(predictions: Sequence[PredictionRecord], reviews: Sequence[ReviewRecord],
             metrics: Sequence[MetricsRecord], release: str, first_days: float = 7.0, device: str = "*",
             window: Window | None = None, opts: PillarOptions | None = None) -> Baseline:
    """The baseline of `release` (name@revision): over `window` if given, else from its first prediction on for
    `first_days` days. NotFound when the release has no predictions in scope."""
    scope = Scope(device=device, release=release)
    if window is None:
        mine = select(predictions, None, scope)
        if not mine:
            raise NotFound(f"no predictions of release {release} to take a baseline from")
        start = parse_ts(mine[0].created_at)
        window, source = Window(start=start, end=start + timedelta(days=first_days)), f"first_days:{first_days:g}"
    else:
        source = "explicit"
    return Baseline(release=release, source=source,
                    snapshot=snapshot(predictions, reviews, metrics, window, scope, opts))


class TrendPoint(BaseModel):
    day: str
    predictions: int
    error_rate: float | None
    latency_p95_ms: float | None
    throughput_per_min: float
    low_confidence_share: float | None
    share: dict[str, float]
    mean_confidence: dict[str, float]
    override_rate: float | None
    reviews: int
    actions_sent: int
    queue_depth: float | None


def trend(predictions: Iterable[PredictionRecord], reviews: Iterable[ReviewRecord],
          metrics: Iterable[MetricsRecord], window: Window, scope: Scope | None = None,
          opts: PillarOptions | None = None) -> list[TrendPoint]:
    """One point per UTC day of `window` (30 days for the dashboard's trend charts)."""
    preds, revs, mets = list(predictions), list(reviews), list(metrics)
    points = []
    for day in days(window):
        s = snapshot(preds, revs, mets, day, scope, opts)
        total = s.health.latency_ms.get("total")
        points.append(TrendPoint(
            day=day.start.date().isoformat(), predictions=s.health.predictions, error_rate=s.health.error_rate,
            latency_p95_ms=total.p95 if total else None, throughput_per_min=s.health.throughput_per_min,
            low_confidence_share=s.distribution.low_confidence_share, share=s.distribution.share,
            mean_confidence=s.distribution.mean_confidence, override_rate=s.overrides.overall.rate,
            reviews=s.overrides.overall.reviews, actions_sent=s.impact.actions_sent,
            queue_depth=s.health.queue_depth))
    return points
