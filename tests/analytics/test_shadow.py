"""The shadow report on a hand-built example, and the promotion gate with its audit log."""

from __future__ import annotations

import json

import pytest

from fleet.analytics.gate import AdminOverride, JsonlAuditLog, MemoryAuditLog, PromotionGate
from fleet.analytics.shadow import ExitCriteria, SignOff, shadow_report
from fleet.analytics.windows import Window
from runtime.errors import Conflict
from tests.analytics.streams import at, pred, review

QA = "qa"  # the adjudicator


def example(days: int = 14):
    """One clean part a day plus the cases of the table below; returns predictions, reviews.

    case  model    inspector  adjudicator  outcome
    1     scratch  scratch    -            scratch    (agree)
    2     scratch  none       scratch      scratch    (model-only catch)
    3     none     short      short        short      (inspector-only catch)
    4     short    none       none         none       (model false positive)
    7     scratch  short      short        short      (both flag; model has the wrong class)
    8     scratch  none       -            unresolved
    plus: a bad image (left out), an error (left out), an unreviewed pass, another device (not in the group).
    """
    preds, revs = [], []
    for d in range(days):
        p = pred(at(days=d, hours=9), "ok", 0.9)
        preds.append(p)
        revs.append(review(p, "confirm"))

    def flag(day, cls):
        return pred(at(days=day, hours=10), cls, 0.8, "flag")

    p1 = flag(0, "scratch"); revs.append(review(p1, "confirm"))
    p2 = flag(1, "scratch"); revs += [review(p2, "false_positive"), review(p2, "confirm", at(days=2), QA)]
    p3 = pred(at(days=5, hours=10), "ok", 0.7)
    revs += [review(p3, "missed_defect", defect_class="short"),
             review(p3, "missed_defect", at(days=6), QA, defect_class="short")]
    p4 = flag(6, "short"); revs += [review(p4, "false_positive"), review(p4, "false_positive", at(days=7), QA)]
    p7 = flag(8, "scratch"); revs += [review(p7, "confirm", defect_class="short"),
                                      review(p7, "confirm", at(days=9), QA, defect_class="short")]
    p8 = flag(10, "scratch"); revs.append(review(p8, "false_positive"))
    bad = flag(3, "scratch"); revs.append(review(bad, "bad_image"))
    err = pred(at(days=4), decision="error")
    unreviewed = pred(at(days=4, hours=1), "ok", 0.95)
    elsewhere = pred(at(days=4), "scratch", 0.9, "flag", device="dev-9")
    revs.append(review(elsewhere, "false_positive"))
    preds += [p1, p2, p3, p4, p7, p8, bad, err, unreviewed, elsewhere]
    return preds, revs


WINDOW = Window(start=at(days=-1), end=at(days=30))


def report(days=14, **kw):
    preds, revs = example(days)
    return shadow_report(preds, revs, "pcb@1", WINDOW, devices=["dev-1"], adjudicators=[QA], **kw)


LENIENT = ExitCriteria(max_fp_rate=0.15, max_unresolved=1)


def test_report_reproduces_the_hand_built_example():
    r = report(criteria=LENIENT, sign_off=SignOff(by="plant manager"))
    assert r.devices == ["dev-1"] and r.adjudicators == [QA]
    # 14 daily parts + cases 1, 2, 3, 4, 7, 8 + the unreviewed pass; the bad image is counted apart
    assert (r.cases, r.bad_images, r.reviewed) == (21, 1, 20)
    # disputed: 2, 3, 4, 7 (adjudicated) and 8 (nobody adjudicated: unresolved, counted with the inspector's verdict)
    assert (r.disputed, r.adjudicated, r.unresolved) == (5, 4, 1)
    assert r.agreement == {"none": {"none": 14, "scratch": 2, "short": 1}, "scratch": {"scratch": 1},
                           "short": {"none": 1, "scratch": 1}}
    assert r.agreement_rate == pytest.approx(15 / 20)
    # deciding verdicts that override the model: 3 and 4 (upheld by QA) and 8 (the inspector's, unresolved); the
    # inspector's override of case 2 was overturned by QA, so it is no override
    assert (r.override_rate.overrides, r.override_rate.reviews) == (3, 20)
    assert r.override_rate.rate == pytest.approx(0.15)
    assert (r.model_only_catches, r.missed_defects) == (1, 1)  # case 2; case 3
    assert (r.model_false_positives, r.inspector_false_positives) == (2, 0)  # cases 4 and 8
    # outcomes: 4 defects (cases 1, 2, 3, 7), 16 clean (14 daily parts + cases 4 and 8)
    assert r.defects == 4
    assert r.model_recall == pytest.approx(3 / 4) and r.inspector_recall == pytest.approx(3 / 4)
    assert r.fp_rate == pytest.approx(2 / 16)
    m, i = r.per_class["scratch"]["model"], r.per_class["scratch"]["inspector"]
    assert (m.tp, m.fp, m.fn) == (2, 2, 0)  # tp: 1, 2; fp: 7 (short), 8 (none)
    assert m.precision == pytest.approx(0.5) and m.recall == 1.0 and m.f1 == pytest.approx(2 / 3)
    assert (i.tp, i.fp, i.fn) == (1, 0, 1) and i.f1 == pytest.approx(2 / 3)
    ms, is_ = r.per_class["short"]["model"], r.per_class["short"]["inspector"]
    assert (ms.tp, ms.fp, ms.fn, ms.precision, ms.recall, ms.f1) == (0, 1, 2, 0.0, 0.0, 0.0)
    assert (is_.tp, is_.fp, is_.fn, is_.f1) == (2, 0, 0, 1.0)
    # 2026-03-02 (Mon) .. 03-15 (Sun): 10 weekdays, 4 weekend days
    assert (r.coverage.days, r.coverage.weekdays, r.coverage.weekend_days) == (14, 10, 4)
    assert r.go and [c.name for c in r.checks] == ["days", "recall", "fp_rate", "unresolved", "sign_off"]


def test_default_criteria_fail_on_fp_rate_days_unresolved_and_sign_off():
    r = report(days=13)
    failed = {c.name for c in r.checks if not c.passed}
    assert failed == {"days", "fp_rate", "unresolved", "sign_off"} and not r.go
    assert r.coverage.days == 13
    assert next(c for c in r.checks if c.name == "unresolved").detail == (
        "1 unresolved disputes of 5 disputed cases, at most 0 allowed")


def test_without_adjudicators_every_dispute_counts_with_the_inspectors_verdict():
    preds, revs = example()
    r = shadow_report(preds, revs, "pcb@1", WINDOW, devices=["dev-1"], criteria=LENIENT, sign_off=SignOff(by="x"))
    # QA's verdicts are ordinary later reviews now: the inspector's verdict decides every case, nothing is dropped
    assert (r.reviewed, r.disputed, r.adjudicated, r.unresolved) == (20, 5, 0, 5)
    # case 2 counts as the inspector said (no defect: a model false positive, and an override), case 7 as "short"
    assert (r.defects, r.model_false_positives) == (3, 3)  # defects 1, 3, 7; false positives 2, 4, 8
    assert r.override_rate.overrides == 4 and r.fp_rate == pytest.approx(3 / 17)
    assert r.model_recall == pytest.approx(2 / 3) and r.inspector_recall == 1.0  # the model missed case 3
    assert not r.go and {c.name for c in r.checks if not c.passed} == {"recall", "fp_rate", "unresolved"}


def demo_shaped(adjudicate: bool):
    """60 verdicts, 10 of them overrides (16.7%), one reviewed part per hour over 15 days: the model flags 16
    parts and the inspector calls 6 of those false; it passes 44 and the inspector finds a defect in 4 of those.
    When `adjudicate`, QA upholds every override."""
    preds, revs = [], []
    for k in range(60):
        flag = k < 16
        p = pred(at(hours=6 * k), "Defective" if flag else "Normal", 0.8, "flag" if flag else "pass")
        preds.append(p)
        verdict = ("false_positive" if flag and k < 6 else "missed_defect" if not flag and k < 20 else "confirm")
        cls = "Defective" if verdict == "missed_defect" else None
        revs.append(review(p, verdict, defect_class=cls))
        if verdict != "confirm" and adjudicate:
            revs.append(review(p, verdict, at(hours=6 * k + 1), QA, defect_class=cls))
    return preds, revs


def test_a_model_inspectors_overrode_17_percent_of_the_time_is_no_go_by_default():
    win = Window(start=at(days=-1), end=at(days=20))
    for adjudicate in (False, True):
        preds, revs = demo_shaped(adjudicate)
        r = shadow_report(preds, revs, "pcb@1", win, adjudicators=[QA] if adjudicate else [],
                          sign_off=SignOff(by="plant manager"))
        # every case counts: 10 defects (the 10 the model flagged rightly) + 4 it missed; 46 clean, 6 flagged
        assert (r.reviewed, r.defects, r.missed_defects, r.model_false_positives) == (60, 14, 4, 6)
        assert r.override_rate.rate == pytest.approx(10 / 60)
        assert r.model_recall == pytest.approx(10 / 14) and r.inspector_recall == 1.0
        assert r.fp_rate == pytest.approx(6 / 46)
        assert r.unresolved == (0 if adjudicate else 10)
        failed = {c.name for c in r.checks if not c.passed}
        assert failed == ({"recall", "fp_rate"} if adjudicate else {"recall", "fp_rate", "unresolved"})
        assert not r.go and r.coverage.days == 15


def test_report_renders_json_and_markdown():
    r = report(criteria=LENIENT, sign_off=SignOff(by="plant manager", note="ok"))
    again = type(r).model_validate_json(r.to_json())
    assert again.model_recall == r.model_recall and again.go and again.override_rate == r.override_rate
    md = r.to_markdown()
    assert md.startswith("# Shadow report: pcb@1 — GO")
    assert "| none | 14 | 2 | 1 |" in md
    assert "| scratch | 0.500 | 1.000 | 0.667 | 1.000 | 0.500 | 0.667 |" in md
    assert "| unresolved disputes | 1 |" in md and "| override rate | 15.0% (3 of 20) |" in md
    assert "Signed off by plant manager" in md


def test_no_data_is_no_figure():
    r = shadow_report([], [], "pcb@1", WINDOW)
    assert (r.cases, r.reviewed) == (0, 0)
    assert r.model_recall is None and r.fp_rate is None and r.agreement_rate is None
    assert r.override_rate.rate is None and not r.go
    assert "| false-positive rate | no data |" in r.to_markdown()


def test_promotion_refused_then_allowed_with_audited_override(tmp_path):
    audit = JsonlAuditLog(tmp_path / "audit.jsonl")
    gate = PromotionGate(audit, is_admin=lambda who: who == "alice")
    r = report()  # default criteria: FP rate, unresolved disputes and sign-off fail
    with pytest.raises(Conflict, match="fp_rate, unresolved, sign_off"):
        gate.promote("pcb@1", "line-3", r, actor="bob")
    with pytest.raises(Conflict, match="not an admin"):
        gate.promote("pcb@1", "line-3", r, actor="bob", override=AdminOverride(by="bob", reason="trust me"))
    with pytest.raises(ValueError):
        AdminOverride(by="alice", reason="   ")
    d = gate.promote("pcb@1", "line-3", r, actor="alice",
                     override=AdminOverride(by="alice", reason="FP are all on the old fixture, replaced on 03-12"))
    assert d.allowed and d.overridden and d.failed_checks == ["fp_rate", "unresolved", "sign_off"]
    entries = audit.entries()
    assert [e.outcome for e in entries] == ["refused", "refused", "overridden"]
    assert entries[2].id == d.audit_id and entries[2].reason.startswith("FP are all")
    assert entries[2].report["fp_rate"] == pytest.approx(2 / 16) and entries[2].report["unresolved"] == 1
    lines = (tmp_path / "audit.jsonl").read_text().splitlines()
    assert json.loads(lines[2])["actor"] == "alice"


def test_promotion_allowed_when_go():
    log = MemoryAuditLog()
    gate = PromotionGate(log, is_admin=lambda who: False)
    r = report(criteria=LENIENT, sign_off=SignOff(by="carol"))
    d = gate.promote("pcb@1", "line-3", r, actor="carol")
    assert d.allowed and not d.overridden and log.entries[0].outcome == "allowed"
