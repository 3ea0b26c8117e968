"""Inspection cases: one prediction joined with every verdict given on it, as findings (model, line inspector,
adjudicator) and one outcome. The rules are docs/field-truth.md's "Cases, verdicts and disputes"; every figure
over verdicts (override rate, missed defects, false-positive rate, recall) is computed from these cases, so the
pillars, the alert rules, the rollout gates and the shadow report count the same cases the same way.

A finding is a defect class or NO_DEFECT. The inspector's verdict is the earliest one by someone who is not an
adjudicator; the adjudicator's is the latest one by an adjudicator. The outcome is the adjudicator's finding when
there is one, else the inspector's: an inspector's override counts unless an adjudicator overturned it, and an
adjudication changes a case's outcome, never the number of cases. A case is *disputed* when the line verdicts and
the model do not all give the same finding; a disputed case nobody adjudicated is *unresolved*. It still counts in
every figure, with the inspector's verdict; the shadow report's exit criteria bound how many may remain.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Sequence
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from fleet.analytics.windows import Window, parse_ts
from fleet.protocol import PredictionRecord, ReviewRecord

NO_DEFECT = "none"


class Case(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prediction_id: str
    device: str
    created_at: str = Field(description="the prediction's time (from predictions) or its first verdict's (from "
                                        "verdicts alone)")
    release: str
    revision: int
    model: str | None = Field(description="the model's finding: a defect class or 'none'; None when the model "
                                          "returned an error (only in cases built from verdicts alone)")
    top_label: str | None = None
    top_score: float | None = None
    inspector: str | None = Field(None, description="the line inspector's finding, None if no line verdict")
    adjudicator: str | None = Field(None, description="the latest adjudicator's finding, None if not adjudicated")
    outcome: str | None = Field(None, description="adjudicator's finding, else inspector's; None if not reviewed")
    verdict: str | None = Field(None, description="the deciding verdict (adjudicator's, else inspector's)")
    overridden: bool | None = Field(None, description="the deciding verdict overrides the model; None if not "
                                                      "reviewed")
    disputed: bool = Field(False, description="line verdicts and the model do not all agree")
    bad_image: bool = Field(False, description="someone called the image unusable: the case counts in no figure")
    reviewed_at: str | None = Field(None, description="time of the first verdict")

    @property
    def reviewed(self) -> bool:
        return self.outcome is not None and not self.bad_image

    @property
    def adjudicated(self) -> bool:
        return self.adjudicator is not None

    @property
    def unresolved(self) -> bool:
        return self.disputed and not self.adjudicated and not self.bad_image


def model_finding(p: PredictionRecord) -> str | None:
    """The defect class the model flagged (its highest-scoring hit), NO_DEFECT on pass, None on error."""
    if p.decision == "error":
        return None
    if p.decision == "pass":
        return NO_DEFECT
    if p.flagged:
        return max(p.flagged, key=lambda kv: kv[1])[0]
    return p.top_label or "defect"


def model_finding_of_review(r: ReviewRecord) -> str | None:
    """The model's finding as the verdict records it (for verdicts whose prediction the fleet never stored, such
    as an iPad's): NO_DEFECT on pass, the top class on flag, None on error."""
    if r.model_decision == "error":
        return None
    if r.model_decision == "pass":
        return NO_DEFECT
    return r.top_label or "defect"


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


def _judge(case: Case, reviews: Sequence[ReviewRecord], judges: Collection[str]) -> Case:
    """Fill the verdict fields of `case` from its reviews (in time order)."""
    if not reviews:
        return case
    if any(r.verdict == "bad_image" for r in reviews):
        return case.model_copy(update={"bad_image": True, "reviewed_at": reviews[0].created_at})
    line = [r for r in reviews if r.inspector not in judges]
    judged = [r for r in reviews if r.inspector in judges]
    findings = [review_finding(r, case.model) for r in line]
    deciding = judged[-1] if judged else line[0]
    disputed = case.model is not None and bool(line) and len({case.model, *findings}) > 1
    return case.model_copy(update={
        "inspector": findings[0] if line else None,
        "adjudicator": review_finding(judged[-1], case.model) if judged else None,
        "outcome": review_finding(deciding, case.model), "verdict": deciding.verdict,
        "overridden": deciding.override, "disputed": disputed, "reviewed_at": reviews[0].created_at})


def _by_prediction(reviews: Iterable[ReviewRecord], before: datetime | None = None) -> dict[str, list[ReviewRecord]]:
    by_pred: dict[str, list[ReviewRecord]] = defaultdict(list)
    for r in reviews:
        if before is None or parse_ts(r.created_at) < before:
            by_pred[r.prediction_id].append(r)
    for revs in by_pred.values():
        revs.sort(key=lambda r: parse_ts(r.created_at))
    return by_pred


def build_cases(predictions: Iterable[PredictionRecord], reviews: Iterable[ReviewRecord],
                adjudicators: Iterable[str] = ()) -> list[Case]:
    """One case per non-error prediction (reviewed or not), in time order; bad images are marked, not dropped."""
    judges = set(adjudicators)
    by_pred = _by_prediction(reviews)
    cases: list[Case] = []
    for p in predictions:
        found = model_finding(p)
        if found is None:
            continue
        case = Case(prediction_id=p.id, device=p.device, created_at=p.created_at, release=p.release,
                    revision=p.revision, model=found, top_label=p.top_label, top_score=p.top_score)
        cases.append(_judge(case, by_pred.get(p.id, []), judges))
    cases.sort(key=lambda c: parse_ts(c.created_at))
    return cases


def review_cases(reviews: Iterable[ReviewRecord], adjudicators: Iterable[str] = (),
                 window: Window | None = None) -> list[Case]:
    """One case per reviewed prediction, from the verdicts alone. With `window`, the cases whose first verdict
    falls inside it, judged on the verdicts given before its end: a later adjudication of an earlier case changes
    that case, it never adds one to the window it was given in (so the caller passes verdicts from before the
    window too; see docs/field-truth.md)."""
    judges = set(adjudicators)
    cases: list[Case] = []
    for pid, revs in _by_prediction(reviews, window.end if window is not None else None).items():
        first = revs[0]
        if window is not None and not window.contains(first.created_at):
            continue
        case = Case(prediction_id=pid, device=first.device, created_at=first.created_at, release=first.release,
                    revision=first.revision, model=model_finding_of_review(first), top_label=first.top_label,
                    top_score=first.top_score)
        cases.append(_judge(case, revs, judges))
    cases.sort(key=lambda c: parse_ts(c.created_at))
    return cases
