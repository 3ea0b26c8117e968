from __future__ import annotations

import pytest

from fleet.analytics.figures import percentile
from fleet.analytics.pillars import PillarOptions, baseline, snapshot, trend
from fleet.analytics.windows import Scope, Window, group_by, select
from runtime.errors import ConfigError, NotFound
from tests.analytics.streams import at, pred, queue, review


def test_health_figures_by_hand():
    # 20 predictions in the first hour, total latencies 1..20 ms, two of them errors
    preds = [pred(at(hours=i / 20), latency=float(i + 1), decision="error" if i in (3, 7) else "pass")
             for i in range(20)]
    outside = pred(at(hours=1.5), latency=999.0)
    mets = [queue(at(hours=0.1), 3), queue(at(hours=0.5), 7), queue(at(hours=2), 50)]
    s = snapshot(preds + [outside], [], mets, Window.last("1h", end=at(hours=1)))
    h = s.health
    assert h.predictions == 20 and h.errors == 2 and h.error_rate == pytest.approx(2 / 20)
    assert h.throughput_per_min == pytest.approx(20 / 60)
    tot = h.latency_ms["total"]
    assert tot.avg == pytest.approx(sum(range(1, 21)) / 20)
    # nearest rank: P95 is rank ceil(0.95*20) = 19, P99 rank ceil(19.8) = 20
    assert (tot.p95, tot.p99) == (19.0, 20.0)
    assert h.latency_ms["verify"].avg == pytest.approx(0.8 * 10.5)
    assert h.queue_depth == 7 and [v for _, v in h.queue_series] == [3, 7]


def test_percentile_nearest_rank():
    assert percentile([5.0], 99) == 5.0
    assert percentile([], 95) is None  # nothing measured is no figure, not 0
    assert percentile(list(map(float, range(1, 101))), 95) == 95.0


def test_distribution_and_overrides_by_hand():
    w = Window.last("24h", end=at(hours=24))
    preds = ([pred(at(hours=1), "Defective", 0.95, "flag") for _ in range(3)]
             + [pred(at(hours=2), "Defective", 0.55, "flag")]
             + [pred(at(hours=3), "Normal", s) for s in (0.9, 0.8, 0.7, 0.4, 0.85, 0.65)])
    revs = [review(preds[0], "confirm"), review(preds[1], "false_positive"), review(preds[3], "false_positive"),
            review(preds[4], "confirm"), review(preds[7], "missed_defect", defect_class="Defective"),
            review(preds[8], "bad_image")]
    s = snapshot(preds, revs, [], w)
    d = s.distribution
    assert d.predictions == 10
    assert d.share == {"Defective": pytest.approx(0.4), "Normal": pytest.approx(0.6)}
    assert d.mean_confidence["Defective"] == pytest.approx((0.95 * 3 + 0.55) / 4)
    assert d.mean_confidence["Normal"] == pytest.approx((0.9 + 0.8 + 0.7 + 0.4 + 0.85 + 0.65) / 6)
    # bins of 0.1: 0.4 -> 4, 0.55 -> 5, 0.65 -> 6, 0.7 -> 7, 0.8/0.85 -> 8, 0.9/0.95 x3 -> 9
    assert d.histogram == [0, 0, 0, 0, 1, 1, 1, 1, 2, 4]
    assert d.low_confidence_share == pytest.approx(2 / 10)  # 0.4 and 0.55 are below 0.6
    o = s.overrides
    assert o.bad_image == 1
    assert (o.overall.reviews, o.overall.overrides) == (5, 3) and o.overall.rate == pytest.approx(0.6)
    assert (o.per_class["Defective"].reviews, o.per_class["Defective"].overrides) == (3, 2)
    assert (o.per_class["Normal"].reviews, o.per_class["Normal"].overrides) == (2, 1)
    assert o.false_positive_corrected == 2 and o.missed_defect_caught == 1
    # bands: 0.95 x2 in 0.90-1.00 (1 override), 0.55 in 0.50-0.70 (1), 0.9 in 0.90-1.00 (0), 0.4 in 0.00-0.50 (1)
    assert {k: (v.reviews, v.overrides) for k, v in o.per_band.items()} == {
        "0.00-0.50": (1, 1), "0.50-0.70": (1, 1), "0.90-1.00": (3, 1)}


def test_impact_actions_and_shadow_catches():
    w = Window.last("24h", end=at(hours=24))
    prod = [pred(at(hours=1), "Defective", 0.9, "flag", mode="production") for _ in range(4)]
    prod.append(pred(at(hours=1), "Defective", 0.9, "flag", mode="production", role="candidate"))
    shadow = [pred(at(hours=2), "Defective", 0.8, "flag"), pred(at(hours=2), "Normal", 0.8)]
    # line inspector missed the model's catch; the adjudicator (qa) confirmed the model
    revs = [review(shadow[0], "false_positive", inspector="ann"), review(shadow[0], "confirm", at(hours=3), "qa"),
            # inspector found a defect the model passed, adjudicator agrees
            review(shadow[1], "missed_defect", inspector="ann", defect_class="Defective"),
            review(shadow[1], "missed_defect", at(hours=3), "qa", defect_class="Defective")]
    s = snapshot(prod + shadow, revs, [], w, opts=PillarOptions(adjudicators=["qa"]))
    assert s.impact.actions_sent == 4
    assert s.impact.model_caught_inspector_missed == 1 and s.impact.missed_defects == 1


def test_scope_release_and_device():
    recs = [pred(at(hours=1), device="a", revision=1), pred(at(hours=1), device="b", revision=2),
            pred(at(hours=1), device="a", release="other")]
    assert len(select(recs, scope=Scope(device="a"))) == 2
    assert len(select(recs, scope=Scope(release="pcb"))) == 2
    assert len(select(recs, scope=Scope(release="pcb@2"))) == 1
    assert set(group_by(recs, "revision")) == {"pcb@1", "pcb@2", "other@1"}
    with pytest.raises(ConfigError):
        Window.last("2h")


def test_baseline_first_days_and_trend():
    preds = ([pred(at(days=d, hours=1), latency=10.0) for d in range(3)]
             + [pred(at(days=d, hours=1), latency=30.0) for d in range(3, 6)])
    b = baseline(preds, [], [], "pcb@1", first_days=3)
    assert b.source == "first_days:3"
    assert b.snapshot.health.predictions == 3 and b.snapshot.health.latency_ms["total"].avg == 10.0
    with pytest.raises(NotFound):
        baseline(preds, [], [], "pcb@9")
    pts = trend(preds, [], [], Window.last("30d", end=at(days=6)))
    assert len(pts) == 30
    assert [p.predictions for p in pts[-6:]] == [1] * 6
    assert [p.latency_p95_ms for p in pts[-6:]] == [10.0] * 3 + [30.0] * 3
    assert pts[0].predictions == 0 and pts[0].latency_p95_ms is None
