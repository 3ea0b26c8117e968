"""The figures that decide, one function each. docs/field-truth.md defines every figure (formula, denominator, what
"no data" gives); this module is the only place that computes them. The pillars, the alert rules, the rollout
gates, the shadow report and its go/no-go, the dashboard, /metrics, the API and the CLI all call these functions
(or read a Snapshot / ShadowReport built by them) and never recompute a figure of their own.

No data is None, never 0: a rate whose denominator is empty, a percentile of no measurements, a drop against a
baseline that has no such class. A 0 is a measurement ("0 errors in 500 predictions")."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence

from pydantic import BaseModel, Field

from fleet.analytics.cases import NO_DEFECT, Case
from fleet.protocol import PredictionRecord
from runtime import stats


class Ratio(BaseModel):
    """`count` of `of`; `value` is their quotient, or None when `of` is 0 (nothing was measured)."""

    count: int = 0
    of: int = 0
    value: float | None = None


def ratio(count: int, of: int) -> Ratio:
    return Ratio(count=count, of=of, value=count / of if of else None)


class Rate(BaseModel):
    """An override rate: `overrides` of `reviews` reviewed cases; `rate` None without reviewed cases."""

    reviews: int = 0
    overrides: int = 0
    rate: float | None = None


# -- predictions ------------------------------------------------------------------------------------------------
def percentile(values: Sequence[float], q: float) -> float | None:
    """The project's nearest-rank percentile (runtime.stats: always one of the measured values); None for no
    values."""
    return stats.percentile(values, q) if values else None


def error_rate(predictions: Iterable[PredictionRecord]) -> Ratio:
    """Predictions whose decision is `error`, of all predictions."""
    decisions = [p.decision for p in predictions]
    return ratio(sum(1 for d in decisions if d == "error"), len(decisions))


def latencies(predictions: Iterable[PredictionRecord], stage: str = "total") -> list[float]:
    """The `stage` latency (ms) of every prediction that reports one, errors included (their time was spent)."""
    return [p.latency_ms[stage] for p in predictions if stage in p.latency_ms]


def latency_p95(predictions: Iterable[PredictionRecord], stage: str = "total") -> float | None:
    """P95 (nearest rank) of the `stage` latency in ms; None when no prediction reports that stage."""
    return percentile(latencies(predictions, stage), 95)


def scored(predictions: Iterable[PredictionRecord]) -> list[PredictionRecord]:
    """The predictions a distribution is taken over: not errors, with a top class and score."""
    return [p for p in predictions if p.decision != "error" and p.top_label is not None and p.top_score is not None]


def class_counts(predictions: Iterable[PredictionRecord]) -> Counter[str]:
    return Counter(p.top_label for p in scored(predictions) if p.top_label is not None)


def class_share(predictions: Iterable[PredictionRecord]) -> dict[str, float]:
    """Per top class, its share of the scored predictions; no entry for a class never seen (no predictions: {})."""
    counts = class_counts(predictions)
    n = sum(counts.values())
    return {k: c / n for k, c in sorted(counts.items())}


def mean_confidence(predictions: Iterable[PredictionRecord]) -> dict[str, float]:
    """Per top class, the mean top score of the scored predictions of that class."""
    conf: dict[str, list[float]] = defaultdict(list)
    for p in scored(predictions):
        if p.top_label is not None and p.top_score is not None:
            conf[p.top_label].append(p.top_score)
    return {k: sum(v) / len(v) for k, v in sorted(conf.items())}


def low_confidence_share(predictions: Iterable[PredictionRecord], below: float) -> Ratio:
    """Scored predictions whose top score is below `below`, of all scored predictions."""
    scores = [p.top_score for p in scored(predictions) if p.top_score is not None]
    return ratio(sum(1 for s in scores if s < below), len(scores))


def confidence_drop(mean: float | None, baseline_mean: float | None) -> float | None:
    """(baseline mean - mean) / baseline mean of one class; None when either is missing or the baseline is 0."""
    if mean is None or baseline_mean is None or baseline_mean <= 0:
        return None
    return (baseline_mean - mean) / baseline_mean


# -- verdicts (over fleet.analytics.cases) -----------------------------------------------------------------------
def judged(cases: Iterable[Case]) -> list[Case]:
    """The cases that count in verdict figures: reviewed, not a bad image."""
    return [c for c in cases if c.reviewed]


def override_rate(cases: Iterable[Case]) -> Rate:
    """Reviewed cases whose deciding verdict (the adjudicator's, else the line inspector's) overrides the model,
    of all reviewed cases; bad images count in neither."""
    rc = judged(cases)
    n, k = len(rc), sum(1 for c in rc if c.overridden)
    return Rate(reviews=n, overrides=k, rate=k / n if n else None)


def missed_defects(cases: Iterable[Case]) -> int:
    """Reviewed cases whose outcome is a defect the model passed."""
    return sum(1 for c in judged(cases) if c.outcome != NO_DEFECT and c.model == NO_DEFECT)


def model_only_catches(cases: Iterable[Case]) -> int:
    """Reviewed cases whose outcome is a defect the model flagged and the line inspector did not."""
    return sum(1 for c in judged(cases) if c.outcome != NO_DEFECT and c.model not in (None, NO_DEFECT)
               and c.inspector == NO_DEFECT)


def false_positive_rate(cases: Iterable[Case]) -> Ratio:
    """Reviewed cases the model flagged whose outcome is no defect, of reviewed cases whose outcome is no defect."""
    clean = [c for c in judged(cases) if c.outcome == NO_DEFECT and c.model is not None]
    return ratio(sum(1 for c in clean if c.model != NO_DEFECT), len(clean))


def recall(cases: Iterable[Case], who: str = "model") -> Ratio:
    """Reviewed cases whose outcome is a defect that `who` ('model' or 'inspector') flagged, whatever the class (a
    flag with the wrong class still stops the part), of those with a defect outcome; for 'inspector', of those
    with a line verdict."""
    if who not in ("model", "inspector"):
        raise ValueError(f"recall of {who!r}: expected 'model' or 'inspector'")
    defects = [c for c in judged(cases) if c.outcome != NO_DEFECT and getattr(c, who) is not None]
    return ratio(sum(1 for c in defects if getattr(c, who) != NO_DEFECT), len(defects))


def unresolved_disputes(cases: Iterable[Case]) -> int:
    """Disputed cases (the line verdicts and the model disagree) that no adjudicator decided."""
    return sum(1 for c in cases if c.unresolved)


class ClassScore(BaseModel):
    tp: int
    fp: int
    fn: int
    precision: float | None = Field(description="tp / (tp + fp); None when nothing was flagged as the class")
    recall: float | None = Field(description="tp / (tp + fn); None when the class never was the outcome")
    f1: float | None = Field(description="harmonic mean of the two; None when either is None")


def class_scores(cases: Iterable[Case], cls: str, who: str = "model") -> ClassScore:
    """Precision, recall and F1 of `who` ('model' or 'inspector') for one class against the outcome."""
    rc = [c for c in judged(cases) if getattr(c, who) is not None]
    tp = sum(1 for c in rc if getattr(c, who) == cls and c.outcome == cls)
    fp = sum(1 for c in rc if getattr(c, who) == cls and c.outcome != cls)
    fn = sum(1 for c in rc if c.outcome == cls and getattr(c, who) != cls)
    p = tp / (tp + fp) if tp + fp else None
    r = tp / (tp + fn) if tp + fn else None
    f1 = (2 * p * r / (p + r) if p + r else 0.0) if p is not None and r is not None else None
    return ClassScore(tp=tp, fp=fp, fn=fn, precision=p, recall=r, f1=f1)
