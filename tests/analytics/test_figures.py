"""One definition per figure (docs/field-truth.md): cases and verdicts, override rate, missed defects, error rate,
P95 latency, and "no data" as None. Expected figures are worked out by hand in the comments."""

from __future__ import annotations

import pytest

from fleet.analytics import figures
from fleet.analytics.cases import NO_DEFECT, build_cases, review_cases
from fleet.analytics.pillars import PillarOptions, snapshot, trend
from fleet.analytics.shadow import shadow_report
from fleet.analytics.windows import Window
from tests.analytics.streams import at, pred, review

QA = "qa-lead"


def sixty_with_ten_overrides(adjudicate: bool = True):
    """The issue's case: 60 verdicts, 10 of them overrides (5 false positives, 5 missed defects), each override
    then upheld by QA. 70 review records, 20 with override=true: 28.6% when reviews are counted, 16.7% per case."""
    preds, revs = [], []
    for k in range(60):
        flag = k % 3 == 0
        p = pred(at(hours=k / 10), "Defective" if flag else "Normal", 0.8, "flag" if flag else "pass")
        preds.append(p)
        verdict = "confirm"
        if flag and k < 15:
            verdict = "false_positive"
        elif not flag and k >= 53:
            verdict = "missed_defect"
        cls = "Defective" if verdict == "missed_defect" else None
        revs.append(review(p, verdict, defect_class=cls))
        if verdict != "confirm" and adjudicate:
            revs.append(review(p, verdict, at(hours=k / 10 + 0.01), QA, defect_class=cls))
    return preds, revs


def test_adjudications_change_a_cases_outcome_never_the_number_of_cases():
    preds, revs = sixty_with_ten_overrides()
    assert (len(revs), sum(r.override for r in revs)) == (70, 20)
    day = Window.last("24h", end=at(hours=24))
    s = snapshot(preds, revs, [], day, opts=PillarOptions(adjudicators=[QA]))
    o = s.overrides.overall
    assert (o.reviews, o.overrides) == (60, 10) and o.rate == pytest.approx(10 / 60)
    assert (s.overrides.false_positive_corrected, s.overrides.missed_defect_caught) == (5, 5)
    assert (s.overrides.disputed, s.overrides.unresolved) == (10, 0)
    # without adjudicators QA's records are later line verdicts: still 60 cases, the same 10 overrides, and now 10
    # unresolved disputes
    s0 = snapshot(preds, revs, [], day)
    assert (s0.overrides.overall.reviews, s0.overrides.overall.overrides, s0.overrides.unresolved) == (60, 10, 10)


def test_an_adjudicator_overturning_an_override_makes_it_no_override():
    p = pred(at(hours=1), "Defective", 0.9, "flag")
    revs = [review(p, "false_positive"), review(p, "confirm", at(hours=2), QA)]
    (case,) = review_cases(revs, [QA])
    assert (case.inspector, case.adjudicator, case.outcome) == (NO_DEFECT, "Defective", "Defective")
    assert case.disputed and case.adjudicated and not case.unresolved and case.overridden is False
    assert figures.override_rate([case]).rate == 0.0
    # not adjudicated: the inspector's override counts, and the dispute stays open
    (open_case,) = review_cases(revs[:1], [QA])
    assert open_case.overridden and open_case.unresolved and open_case.outcome == NO_DEFECT
    # a second line inspector disagreeing with the first is a dispute as well, decided by the first
    (two,) = review_cases([review(p, "confirm"), review(p, "false_positive", at(hours=2), "bob")], [QA])
    assert two.disputed and two.unresolved and two.overridden is False and two.outcome == "Defective"


def test_a_late_adjudication_belongs_to_the_window_of_the_first_verdict():
    p = pred(at(hours=0.5), "Defective", 0.9, "flag")
    revs = [review(p, "false_positive", at(hours=0.5)), review(p, "confirm", at(hours=3.5), QA)]
    first, later = Window.last("1h", end=at(hours=1)), Window.last("1h", end=at(hours=4))
    assert review_cases(revs, [QA], later) == []  # the adjudication adds no case where it was given
    (then,) = review_cases(revs, [QA], first)  # as of the first window's end, the inspector's verdict stood
    assert then.overridden and then.unresolved
    (now,) = review_cases(revs, [QA], Window(start=first.start, end=later.end))
    assert now.overridden is False and now.adjudicated
    # the same through the pillars: the later hour shows no reviewed case; the first shows one override
    assert snapshot([p], revs, [], later, opts=PillarOptions(adjudicators=[QA])).overrides.overall.reviews == 0
    assert snapshot([p], revs, [], first, opts=PillarOptions(adjudicators=[QA])).overrides.overall.overrides == 1


def test_missed_defects_are_the_same_on_the_pillars_and_in_the_shadow_report():
    preds, revs = sixty_with_ten_overrides(adjudicate=False)
    day = Window.last("24h", end=at(hours=24))
    s = snapshot(preds, revs, [], day)
    r = shadow_report(preds, revs, "pcb@1", day)
    assert s.impact.missed_defects == r.missed_defects == 5
    assert s.impact.model_caught_inspector_missed == r.model_only_catches == 0
    assert s.overrides.overall.rate == r.override_rate.rate == pytest.approx(10 / 60)
    assert s.overrides.unresolved == r.unresolved == 10
    # the prediction-based and the verdict-based cases agree on every reviewed case's verdict fields
    keep = ("model", "inspector", "outcome", "overridden", "disputed")
    by_pred = {c.prediction_id: c.model_dump(include=set(keep)) for c in build_cases(preds, revs)}
    assert {c.prediction_id: c.model_dump(include=set(keep)) for c in review_cases(revs)} == by_pred


def test_health_figures_and_no_data():
    preds = [pred(at(hours=0.1 * i), latency=float(i + 1), decision="error" if i == 0 else "pass")
             for i in range(20)]
    assert figures.error_rate(preds).model_dump() == {"count": 1, "of": 20, "value": 0.05}
    assert figures.latency_p95(preds) == 19.0  # nearest rank ceil(0.95 * 20) = 19 of 1..20
    assert figures.latency_p95(preds, "screen") is None
    assert figures.error_rate([]).value is None and figures.latency_p95([]) is None
    assert figures.low_confidence_share([], 0.6).value is None and figures.class_share([]) == {}
    assert figures.confidence_drop(0.7, 0.8) == pytest.approx(0.125)
    assert figures.confidence_drop(0.7, None) is None and figures.confidence_drop(None, 0.8) is None
    assert figures.false_positive_rate([]).value is None and figures.recall([]).value is None
    empty = snapshot([], [], [], Window.last("1h", end=at(hours=1)))
    assert empty.health.error_rate is None and empty.distribution.low_confidence_share is None
    assert empty.overrides.overall.rate is None and empty.health.queue_depth is None
    point = trend(preds, [], [], Window.last("30d", end=at(days=1)))[0]
    assert point.predictions == 0 and point.error_rate is None and point.override_rate is None
    assert point.latency_p95_ms is None and point.low_confidence_share is None
    with pytest.raises(ValueError, match="recall of 'line'"):
        figures.recall([], "line")
