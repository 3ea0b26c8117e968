"""Each rule on a recorded stream, hour by hour: it fires exactly when its threshold is crossed, once, and clears
once when the figure is back within the threshold. Expected figures are computed here, by hand."""

from __future__ import annotations

import pytest

from fleet.analytics.alerts import AlertRules, AlertTracker, evaluate
from fleet.analytics.pillars import snapshot
from fleet.analytics.windows import Scope, Window
from fleet.protocol import MetricsRecord, PredictionRecord, ReviewRecord
from tests.analytics.streams import at, pred, queue, review


def hour(h: int) -> Window:
    return Window.last("1h", end=at(hours=h + 1))


def run(steps: list[tuple[list, list, list]], base: tuple[list, list, list] | None = None,
        rules: AlertRules | None = None, tracker: AlertTracker | None = None) -> list[list[tuple[str, str, float]]]:
    """Feed hour h the records of steps[h]; return per hour the (rule, state, value) changes."""
    tracker = tracker or AlertTracker(rules)
    base_snap = snapshot(*base, Window.last("24h", end=at(hours=0))) if base else None
    out = []
    for h, (p, r, m) in enumerate(steps):
        changes = tracker.update(snapshot(p, r, m, hour(h)), base_snap, at=at(hours=h + 1))
        out.append([(a.rule, a.state, a.value) for a in changes])
    return out


def preds_in(h: int, n: int, **kw) -> list[PredictionRecord]:
    return [pred(at(hours=h + i / (n + 1)), **kw) for i in range(n)]


def states(changes):
    return [[(rule, state) for rule, state, _ in hour] for hour in changes]


def test_error_rate_over_one_percent():
    def step(h, errors):
        return (preds_in(h, 100 - errors) + preds_in(h, errors, decision="error"), [], [])
    got = run([step(0, 1), step(1, 2), step(2, 3), step(3, 1), step(4, 2)])
    # 1/100 = 1% is not over 1%; 2/100 is; 3/100 stays raised; 1/100 clears; 2/100 raises again
    assert states(got) == [[], [("error_rate", "raised")], [], [("error_rate", "cleared")], [("error_rate", "raised")]]
    assert got[1][0][2] == pytest.approx(0.02)


def test_error_rate_needs_enough_samples():
    got = run([(preds_in(0, 5) + preds_in(0, 5, decision="error"), [], [])])
    assert got == [[]]


def test_latency_over_twice_baseline():
    base = (preds_in(-24, 20, latency=10.0), [], [])  # baseline P95 of total latency = 10 ms
    got = run([(preds_in(0, 20, latency=20.0), [], []), (preds_in(1, 20, latency=20.5), [], []),
               (preds_in(2, 20, latency=25.0), [], []), (preds_in(3, 20, latency=15.0), [], [])], base)
    assert states(got) == [[], [("latency:total", "raised")], [], [("latency:total", "cleared")]]
    assert got[1][0][2] == 20.5


def test_latency_without_baseline_is_not_judged():
    assert run([(preds_in(0, 20, latency=500.0), [], [])]) == [[]]


def test_queue_depth_growing():
    def step(h, depths):
        return ([], [], [queue(at(hours=h + (i + 1) / 10), d) for i, d in enumerate(depths)])
    got = run([step(0, [1, 2, 3, 3]), step(1, [1, 2, 3, 4]), step(2, [5, 6, 7, 8]), step(3, [9, 10, 11]),
               step(4, [8, 7, 6, 5])])
    # hour 3 has only three readings: not enough to judge, the raised alert stands
    assert states(got) == [[], [("queue_growing", "raised")], [], [], [("queue_growing", "cleared")]]
    assert got[1][0][2] == 3  # 4 - 1


def test_class_share_moving_over_15_points():
    def mix(h, defective):
        return (preds_in(h, defective, label="Defective", score=0.9, decision="flag")
                + preds_in(h, 100 - defective, label="Normal", score=0.9), [], [])
    base = mix(-24, 30)
    got = run([mix(0, 45), mix(1, 46), mix(2, 40), mix(3, 14)], base)
    # 45 vs 30 moves exactly 15 points: not more than 15; 46 moves 16 (both classes); 40 moves 10; 14 moves 16
    assert states(got) == [
        [], [("class_share:Defective", "raised"), ("class_share:Normal", "raised")],
        [("class_share:Defective", "cleared"), ("class_share:Normal", "cleared")],
        [("class_share:Defective", "raised"), ("class_share:Normal", "raised")]]
    assert got[1][0][2] == pytest.approx(0.46 - 0.30)
    assert got[3][0][2] == pytest.approx(0.14 - 0.30)


def test_mean_confidence_dropping_over_ten_percent():
    def step(h, score):
        return (preds_in(h, 20, label="Defective", score=score, decision="flag"), [], [])
    base = step(-24, 0.8)
    rules = AlertRules(low_confidence_spike={"enabled": False})
    got = run([step(0, 0.72), step(1, 0.71), step(2, 0.70), step(3, 0.79)], base, rules)
    # (0.8 - 0.72) / 0.8 = 10%: not over; 0.71 -> 11.25%: raised; 0.70 -> 12.5%: stays; 0.79 -> 1.25%: cleared
    assert states(got) == [[], [("confidence_drop:Defective", "raised")], [],
                           [("confidence_drop:Defective", "cleared")]]
    assert got[1][0][2] == pytest.approx((0.8 - 0.71) / 0.8)


def test_low_confidence_spike():
    def step(h, low):
        return (preds_in(h, low, score=0.5) + preds_in(h, 100 - low, score=0.95), [], [])
    base = step(-24, 4)
    # limit = max(2 x 4%, 4% + 5 points) = 9%
    got = run([step(0, 9), step(1, 10), step(2, 5)], base, AlertRules(confidence_drop={"enabled": False}))
    assert states(got) == [[], [("low_confidence_spike", "raised")], [("low_confidence_spike", "cleared")]]


def test_override_rate_overall_and_per_class():
    def step(h, defective_overrides, normal_overrides):
        d = preds_in(h, 20, label="Defective", score=0.9, decision="flag")
        n = preds_in(h, 80, label="Normal", score=0.9)
        revs = ([review(p, "false_positive" if i < defective_overrides else "confirm") for i, p in enumerate(d)]
                + [review(p, "missed_defect" if i < normal_overrides else "confirm", defect_class="Defective")
                   for i, p in enumerate(n)])
        return (d + n, revs, [])
    got = run([step(0, 5, 10),    # overall 15/100 = 15%, Defective 5/20 = 25%, Normal 10/80: nothing is over
               step(1, 6, 0),     # Defective 6/20 = 30% > 25%; overall 6%
               step(2, 5, 11),    # Defective back to 25%; overall 16/100 = 16% > 15%
               step(3, 0, 0)])
    assert states(got) == [[], [("override_rate:Defective", "raised")],
                           [("override_rate", "raised"), ("override_rate:Defective", "cleared")],
                           [("override_rate", "cleared")]]
    assert got[2][0][2] == pytest.approx(0.16)


def test_restart_does_not_raise_twice_and_release_scope():
    def step(h, errors):
        return (preds_in(h, 100 - errors) + preds_in(h, errors, decision="error"), [], [])
    t1 = AlertTracker()
    raised = t1.update(snapshot(*step(0, 5), hour(0)), None)
    scoped = t1.update(snapshot(*step(0, 5), hour(0), Scope(release="pcb@1")), None)
    assert [a.rule for a in raised] == ["error_rate"] and [a.rule for a in scoped] == ["error_rate|pcb@1"]
    t2 = AlertTracker.from_history(raised + scoped)
    assert t2.update(snapshot(*step(1, 5), hour(1)), None) == []
    cleared = t2.update(snapshot(*step(2, 0), hour(2)), None)
    assert [(a.rule, a.state, a.device) for a in cleared] == [("error_rate", "cleared", "*")]


def test_disabled_rule_and_bad_config():
    p = preds_in(0, 100, decision="error")
    conds = evaluate(AlertRules(error_rate={"enabled": False}), snapshot(p, [], [], hour(0)), None)
    assert all(c.rule != "error_rate" for c in conds)
    with pytest.raises(ValueError, match="max_rate"):
        AlertRules(error_rate={"max_rate": 2})
    with pytest.raises(ValueError, match="extra"):
        AlertRules(error_rate={"maxrate": 0.1})


def test_alert_records_roundtrip_the_protocol():
    from fleet.protocol import AlertRecord, decode, encode
    p = preds_in(0, 100, decision="error")
    rec = AlertTracker().update(snapshot(p, [], [], hour(0)), None)[0]
    assert decode("t", encode(rec), AlertRecord) == rec
    assert isinstance(rec, AlertRecord) and not isinstance(rec, (MetricsRecord, ReviewRecord))


def test_fleet_pass_raises_per_device_and_fleet_against_release_baseline():
    from fleet.analytics.alerts import evaluate_fleet
    # release pcb@1 ran cleanly for its first day (latency 10 ms); on day 3 dev-2 slows to 30 ms
    first_day = [pred(at(hours=h), device=d, latency=10.0) for h in range(24) for d in ("dev-1", "dev-2")]
    now = at(days=3)
    slow = [pred(at(days=3, hours=-1 + i / 40), device="dev-2", latency=30.0) for i in range(30)]
    fine = [pred(at(days=3, hours=-1 + i / 40), device="dev-1", latency=10.0) for i in range(30)]
    changes = evaluate_fleet(first_day + slow + fine, [], [], [], now, baseline_days=1)
    # fleet-wide P95 over the hour: 30 of 60 at 30 ms -> 30 ms > 2 x 10 ms as well
    assert sorted((a.device, a.rule, a.state) for a in changes) == [
        ("*", "latency:total", "raised"), ("dev-2", "latency:total", "raised")]
    again = evaluate_fleet(first_day + slow + fine, [], [], changes, now, baseline_days=1)
    assert again == []
