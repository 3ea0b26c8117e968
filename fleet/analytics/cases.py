"""Inspection cases: one prediction joined with its reviews, as three findings (model, inspector, adjudicated).

A finding is a defect class or NO_DEFECT. The inspector's finding is the earliest review by someone who is not an
adjudicator; the adjudicated outcome is the latest review by an adjudicator, or, when nobody adjudicated, the
finding the model and the inspector agree on. A case where they disagree and nobody adjudicated stays unresolved:
it counts in the agreement matrix but not against the truth, because guessing who was right is what the shadow
period exists to stop doing.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict, Field

from fleet.analytics.windows import parse_ts
from fleet.protocol import PredictionRecord, ReviewRecord

NO_DEFECT = "none"


class Case(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prediction_id: str
    device: str
    created_at: str
    release: str
    revision: int
    model: str = Field(description="the model's finding: a defect class or 'none'")
    top_score: float | None = None
    inspector: str | None = Field(None, description="the line inspector's finding, None if not reviewed")
    truth: str | None = Field(None, description="adjudicated outcome, None if unresolved")
    adjudicated: bool = False


def model_finding(p: PredictionRecord) -> str | None:
    """The defect class the model flagged (its highest-scoring hit), NO_DEFECT on pass, None on error."""
    if p.decision == "error":
        return None
    if p.decision == "pass":
        return NO_DEFECT
    if p.flagged:
        return max(p.flagged, key=lambda kv: kv[1])[0]
    return p.top_label or "defect"


def review_finding(r: ReviewRecord, model: str | None = None) -> str | None:
    """What the reviewer says is there: a defect class or NO_DEFECT; None for a bad image (no finding possible)."""
    if r.verdict == "bad_image":
        return None
    if r.verdict == "false_positive":
        return NO_DEFECT
    if r.verdict == "missed_defect":
        return r.defect_class or "defect"
    # confirm: the reviewer agrees with the model's decision, possibly correcting the class
    if r.model_decision == "flag":
        return r.defect_class or (model if model not in (None, NO_DEFECT) else r.top_label) or "defect"
    return NO_DEFECT


def build_cases(predictions: Iterable[PredictionRecord], reviews: Iterable[ReviewRecord],
                adjudicators: Iterable[str] = ()) -> list[Case]:
    """One case per non-error prediction, in time order; bad-image verdicts remove the case entirely."""
    judges = set(adjudicators)
    by_pred: dict[str, list[ReviewRecord]] = defaultdict(list)
    for r in reviews:
        by_pred[r.prediction_id].append(r)
    cases: list[Case] = []
    for p in predictions:
        found = model_finding(p)
        if found is None:
            continue
        revs = sorted(by_pred.get(p.id, ()), key=lambda r: parse_ts(r.created_at))
        if any(r.verdict == "bad_image" for r in revs):
            continue
        line = [r for r in revs if r.inspector not in judges]
        judged = [r for r in revs if r.inspector in judges]
        inspector = review_finding(line[0], found) if line else None
        if judged:
            truth, adjudicated = review_finding(judged[-1], found), True
        elif inspector is not None and inspector == found:
            truth, adjudicated = found, False
        else:
            truth, adjudicated = None, False
        cases.append(Case(prediction_id=p.id, device=p.device, created_at=p.created_at, release=p.release,
                          revision=p.revision, model=found, top_score=p.top_score, inspector=inspector,
                          truth=truth, adjudicated=adjudicated))
    cases.sort(key=lambda c: parse_ts(c.created_at))
    return cases
