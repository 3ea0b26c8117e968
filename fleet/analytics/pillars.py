"""The four monitoring pillars over one window and scope: inference health, prediction distribution, human
override rate and business impact; a release's baseline; daily trend points for 30-day charts."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from datetime import timedelta

from pydantic import BaseModel, ConfigDict, Field

from fleet.analytics.cases import NO_DEFECT, build_cases
from fleet.analytics.windows import Scope, Window, days, parse_ts, select
from fleet.protocol import MetricsRecord, PredictionRecord, ReviewRecord
from runtime.errors import NotFound
from runtime.stats import percentile

# A device reports its outbox backlog under one of these names in MetricsRecord.values; the first found counts.
QUEUE_KEYS = ("queue_depth", "outbox_depth", "outbox_pending")
HIST_BINS = 10


class PillarOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    low_confidence: float = Field(0.6, ge=0, le=1, description="a prediction whose top score is below this is "
                                                              "low-confidence")
    confidence_bands: list[float] = Field([0.0, 0.5, 0.7, 0.9, 1.0], description="band edges for override rates; "
                                          "the last band includes its upper edge")
    adjudicators: list[str] = Field(default_factory=list, description="reviewers whose verdict is the adjudicated "
                                    "outcome in shadow comparisons")


class LatencyStats(BaseModel):
    count: int
    avg: float
    p95: float
    p99: float


class Health(BaseModel):
    predictions: int = 0
    errors: int = 0
    error_rate: float = 0.0
    throughput_per_min: float = 0.0
    latency_ms: dict[str, LatencyStats] = Field(default_factory=dict, description="per stage plus 'total'")
    queue_depth: float | None = Field(None, description="last reported backlog in the window")
    queue_series: list[tuple[str, float]] = Field(default_factory=list, description="(time, backlog) in order")


class Distribution(BaseModel):
    predictions: int = 0
    share: dict[str, float] = Field(default_factory=dict, description="share of predictions per top class")
    mean_confidence: dict[str, float] = Field(default_factory=dict, description="mean top score per top class")
    histogram: list[int] = Field(default_factory=lambda: [0] * HIST_BINS, description="top scores in 10 bins of 0.1")
    low_confidence_share: float = 0.0


class Rate(BaseModel):
    reviews: int = 0
    overrides: int = 0
    rate: float = 0.0


class Overrides(BaseModel):
    overall: Rate = Field(default_factory=Rate)
    per_class: dict[str, Rate] = Field(default_factory=dict, description="keyed by the model's top class")
    per_band: dict[str, Rate] = Field(default_factory=dict, description="keyed by confidence band 'lo-hi'")
    false_positive_corrected: int = 0
    missed_defect_caught: int = 0
    bad_image: int = 0


class Impact(BaseModel):
    actions_sent: int = Field(0, description="production flags of the active release (each triggers its actions)")
    model_caught_inspector_missed: int = 0
    inspector_caught_model_missed: int = 0


class Snapshot(BaseModel):
    scope: Scope
    window: Window
    health: Health
    distribution: Distribution
    overrides: Overrides
    impact: Impact


def _rate(n: int, k: int) -> Rate:
    return Rate(reviews=n, overrides=k, rate=k / n if n else 0.0)


def health(predictions: Sequence[PredictionRecord], metrics: Sequence[MetricsRecord], window: Window) -> Health:
    n = len(predictions)
    errors = sum(1 for p in predictions if p.decision == "error")
    per_stage: dict[str, list[float]] = defaultdict(list)
    for p in predictions:
        for stage, ms in p.latency_ms.items():
            per_stage[stage].append(ms)
    lat = {k: LatencyStats(count=len(v), avg=sum(v) / len(v), p95=percentile(v, 95), p99=percentile(v, 99))
           for k, v in sorted(per_stage.items())}
    series: list[tuple[str, float]] = []
    for m in metrics:
        key = next((k for k in QUEUE_KEYS if k in m.values), None)
        if key is not None:
            series.append((m.created_at, m.values[key]))
    return Health(predictions=n, errors=errors, error_rate=errors / n if n else 0.0,
                  throughput_per_min=n / (window.seconds / 60) if window.seconds > 0 else 0.0, latency_ms=lat,
                  queue_depth=series[-1][1] if series else None, queue_series=series)


def distribution(predictions: Sequence[PredictionRecord], opts: PillarOptions) -> Distribution:
    scored = [p for p in predictions if p.decision != "error" and p.top_label is not None and p.top_score is not None]
    n = len(scored)
    counts = Counter(p.top_label for p in scored)
    conf: dict[str, list[float]] = defaultdict(list)
    hist = [0] * HIST_BINS
    low = 0
    for p in scored:
        conf[p.top_label].append(p.top_score)  # type: ignore[index, arg-type]
        hist[min(HIST_BINS - 1, max(0, int(p.top_score * HIST_BINS)))] += 1  # type: ignore[operator]
        low += p.top_score < opts.low_confidence  # type: ignore[operator]
    return Distribution(predictions=n, share={k: c / n for k, c in sorted(counts.items())},
                        mean_confidence={k: sum(v) / len(v) for k, v in sorted(conf.items())}, histogram=hist,
                        low_confidence_share=low / n if n else 0.0)


def _band(score: float | None, edges: list[float]) -> str | None:
    if score is None:
        return None
    for lo, hi in zip(edges, edges[1:]):
        if lo <= score < hi or (hi == edges[-1] and score == hi):
            return f"{lo:.2f}-{hi:.2f}"
    return None


def overrides(reviews: Sequence[ReviewRecord], opts: PillarOptions) -> Overrides:
    """Override rates; a bad-image verdict says nothing about the model, so it is counted apart, not in a rate."""
    judged = [r for r in reviews if r.verdict != "bad_image"]
    per_class: dict[str, list[bool]] = defaultdict(list)
    per_band: dict[str, list[bool]] = defaultdict(list)
    for r in judged:
        per_class[r.top_label or NO_DEFECT].append(r.override)
        band = _band(r.top_score, opts.confidence_bands)
        if band is not None:
            per_band[band].append(r.override)
    return Overrides(
        overall=_rate(len(judged), sum(r.override for r in judged)),
        per_class={k: _rate(len(v), sum(v)) for k, v in sorted(per_class.items())},
        per_band={k: _rate(len(v), sum(v)) for k, v in sorted(per_band.items())},
        false_positive_corrected=sum(1 for r in judged if r.override and r.verdict == "false_positive"),
        missed_defect_caught=sum(1 for r in judged if r.override and r.verdict == "missed_defect"),
        bad_image=len(reviews) - len(judged))


def impact(predictions: Sequence[PredictionRecord], reviews: Sequence[ReviewRecord], opts: PillarOptions) -> Impact:
    cases = build_cases(predictions, reviews, opts.adjudicators)
    defects = [c for c in cases if c.truth not in (None, NO_DEFECT) and c.inspector is not None]
    return Impact(
        actions_sent=sum(1 for p in predictions if p.mode == "production" and p.role == "active"
                         and p.decision == "flag"),
        model_caught_inspector_missed=sum(1 for c in defects if c.model != NO_DEFECT and c.inspector == NO_DEFECT),
        inspector_caught_model_missed=sum(1 for c in defects if c.model == NO_DEFECT and c.inspector != NO_DEFECT))


def snapshot(predictions: Iterable[PredictionRecord], reviews: Iterable[ReviewRecord],
             metrics: Iterable[MetricsRecord], window: Window, scope: Scope | None = None,
             opts: PillarOptions | None = None) -> Snapshot:
    """All four pillars for the records inside `window` and `scope`."""
    scope = scope or Scope()
    opts = opts or PillarOptions()
    preds = select(predictions, window, scope)
    revs = select(reviews, window, scope)
    mets = select(metrics, window, scope)
    return Snapshot(scope=scope, window=window, health=health(preds, mets, window),
                    distribution=distribution(preds, opts), overrides=overrides(revs, opts),
                    impact=impact(preds, revs, opts))


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
    error_rate: float
    latency_p95_ms: float | None
    throughput_per_min: float
    low_confidence_share: float
    share: dict[str, float]
    mean_confidence: dict[str, float]
    override_rate: float
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
