"""Threshold tuning on a constructed labelled set (figures recomputed here with numpy), on inspector verdicts,
and on the real PCB model over the real PCB images."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from fleet.analytics.tuning import (
    CostWeighted,
    MaxF1,
    MinRecall,
    Sample,
    TuningConfig,
    plot_pr,
    render_table,
    retune_release,
    tune,
)
from fleet.analytics.tuning_data import samples_from_images, samples_from_verdicts
from fleet.protocol import ReleaseSpec, StageOutput
from runtime.errors import ConfigError
from tests.analytics.streams import at, pred, review
from tests.conftest import IMAGES

GRID = [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
# crack: 20 positives and 80 negatives, scores per count
CRACK_POS = {0.95: 8, 0.85: 4, 0.75: 3, 0.65: 2, 0.55: 1, 0.45: 1, 0.35: 1}
CRACK_NEG = {0.05: 50, 0.35: 10, 0.45: 8, 0.55: 5, 0.65: 4, 0.75: 2, 0.85: 1}
# short: 10 positives, 90 negatives; independent of crack
SHORT_POS = {0.95: 5, 0.65: 3, 0.45: 2}
SHORT_NEG = {0.05: 85, 0.55: 5}


def constructed() -> list[Sample]:
    crack = [(s, True) for s, n in CRACK_POS.items() for _ in range(n)] + \
            [(s, False) for s, n in CRACK_NEG.items() for _ in range(n)]
    short = [(s, True) for s, n in SHORT_POS.items() for _ in range(n)] + \
            [(s, False) for s, n in SHORT_NEG.items() for _ in range(n)]
    out = []
    for i, ((cs, cp), (ss, sp)) in enumerate(zip(crack, short)):
        out.append(Sample(id=f"img-{i:03d}", scores={"crack": cs, "short": ss},
                          truth=[c for c, present in (("crack", cp), ("short", sp)) if present]))
    return out


def independent_table(samples: list[Sample], cls: str, grid: list[float]) -> np.ndarray:
    """Columns: threshold, precision, recall, F1, false positives, misses (vectorised, not the library's loop)."""
    scores = np.array([s.scores[cls] for s in samples])
    truth = np.array([cls in s.truth for s in samples])
    rows = []
    for t in grid:
        flag = scores >= t
        tp, fp, fn = np.sum(flag & truth), np.sum(flag & ~truth), np.sum(~flag & truth)
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / (tp + fn)
        rows.append((t, p, r, 2 * p * r / (p + r) if p + r else 0.0, fp, fn))
    return np.array(rows)


def test_table_matches_independent_computation_and_hand_figures():
    samples = constructed()
    res = tune(samples, TuningConfig(grid=GRID, holdout=0))
    for cls in ("crack", "short"):
        got = np.array([(r.threshold, r.precision, r.recall, r.f1, r.fp, r.misses) for r in res.table[cls]])
        np.testing.assert_allclose(got, independent_table(samples, cls, GRID), atol=1e-12)
    crack = {r.threshold: r for r in res.table["crack"]}
    # by hand: at 0.7, 15 of 20 positives and 3 of 80 negatives score >= 0.7
    assert (crack[0.7].tp, crack[0.7].fp, crack[0.7].misses) == (15, 3, 5)
    assert crack[0.7].precision == pytest.approx(15 / 18) and crack[0.7].recall == pytest.approx(0.75)
    assert (crack[0.3].fp, crack[0.3].misses, crack[0.9].fp, crack[0.9].misses) == (30, 0, 0, 12)
    md = render_table(res, "crack")
    assert md.count("\n") == 2 + len(GRID) and "| 0.70 **<-** | 0.833 | 0.750 | 0.789 | 3 | 5 |" in md


@pytest.mark.parametrize("strategy,expected", [
    # F1 by threshold: .571 .644 .720 .773 .789 .727 .571 -> 0.70
    (MaxF1(), 0.7),
    # recall is 1.0 only at 0.30 (0.95 at 0.40) -> 0.30
    (MinRecall(recall=0.98), 0.3),
    # recall 0.90 holds up to 0.50 -> the highest such threshold, 0.50
    (MinRecall(recall=0.90), 0.5),
    # 4 x misses + false alarms: 30, 24, 20, 19, 23, 33, 48 -> 0.60
    (CostWeighted(miss_cost=4, false_alarm_cost=1), 0.6),
])
def test_each_strategy_picks_the_documented_threshold(strategy, expected):
    res = tune(constructed(), TuningConfig(grid=GRID, holdout=0, default=strategy))
    assert res.proposed["crack"].threshold == expected and res.proposed["crack"].met


def test_unmeetable_recall_and_per_class_strategies():
    res = tune(constructed(), TuningConfig(grid=[0.5, 0.6], holdout=0, default=MaxF1(),
                                           per_class={"crack": {"kind": "min_recall", "recall": 0.99}}))
    assert res.proposed["crack"].threshold == 0.5 and not res.proposed["crack"].met
    assert res.proposed["short"].strategy == "max_f1"
    with pytest.raises(ConfigError, match="no positive"):
        tune(constructed(), TuningConfig(classes=["missing"], holdout=0))
    with pytest.raises(ConfigError):
        tune([], TuningConfig())


def test_holdout_split_checks_the_choice():
    samples = constructed()
    res = tune(samples, TuningConfig(grid=GRID, holdout=0.3, default=MinRecall(recall=0.9)))
    assert (res.train, res.holdout) == (70, 30) and len(res.holdout_ids) == 30
    held = [s for s in samples if s.id in set(res.holdout_ids)]
    train = [s for s in samples if s.id not in set(res.holdout_ids)]
    ch = res.proposed["crack"]
    exp_train = independent_table(train, "crack", GRID)
    ok = exp_train[exp_train[:, 2] >= 0.9]
    assert ch.threshold == ok[:, 0].max()
    t, p, r, f1, fp, fn = independent_table(held, "crack", [ch.threshold])[0]
    assert (ch.holdout.recall, ch.holdout.fp, ch.holdout.misses) == (pytest.approx(r), fp, fn)
    assert ch.holdout_met == (r >= 0.9)
    again = tune(samples, TuningConfig(grid=GRID, holdout=0.3))
    assert again.holdout_ids == res.holdout_ids  # deterministic


def test_plot_and_new_release_revision(tmp_path):
    res = tune(constructed(), TuningConfig(grid=GRID, holdout=0))
    png = plot_pr(res, tmp_path / "pr.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    spec = ReleaseSpec(name="pcb", revision=3, stages=[
        {"role": "screen", "bundle": "pcb-screen-v1.0", "candidate_classes": ["crack", "short"], "threshold": 0.3},
        {"role": "verify", "bundle": "pcb-defect-v2.0", "thresholds": {"default": 0.5, "crack": 0.4}}])
    new = retune_release(spec, res.thresholds)
    assert new.revision == 4 and [s.bundle for s in new.stages] == [s.bundle for s in spec.stages]
    assert new.stages[1].thresholds == {"default": 0.5, "crack": 0.7, "short": res.thresholds["short"]}
    assert new.stages[0].threshold == 0.3 and "same model" in new.note
    single = ReleaseSpec(name="s", stages=[{"role": "screen", "bundle": "b-v1.0", "candidate_classes": ["crack"],
                                            "threshold": 0.5}])
    assert retune_release(single, {"crack": 0.7, "short": 0.2}).stages[0].threshold == 0.7


def test_samples_from_verdicts():
    def scored(p, d, n):
        p.stages = [StageOutput(role="verify", bundle="pcb-v1.0", scores={"Defective": d, "Normal": n})]
        return p
    flagged = scored(pred(at(hours=1), "Defective", 0.9, "flag"), 0.9, 0.1)
    fp = scored(pred(at(hours=1), "Defective", 0.6, "flag"), 0.6, 0.4)
    missed = scored(pred(at(hours=1), "Normal", 0.7), 0.3, 0.7)
    bad = scored(pred(at(hours=1), "Normal", 0.7), 0.2, 0.8)
    no_scores = pred(at(hours=1), "Normal", 0.7)
    revs = [review(flagged, "confirm"), review(fp, "false_positive"),
            review(missed, "missed_defect", defect_class="Defective"), review(bad, "bad_image"),
            review(no_scores, "confirm")]
    got = samples_from_verdicts([flagged, fp, missed, bad, no_scores], revs)
    assert [(s.truth, s.scores["Defective"]) for s in got.samples] == [(["Defective"], 0.9), ([], 0.6),
                                                                         (["Defective"], 0.3)]
    assert sorted(s.reason for s in got.skipped) == ["bad image", "no scores recorded"]
    res = tune(got.samples, TuningConfig(grid=[0.25, 0.5, 0.75], holdout=0, default=MinRecall(recall=1.0)))
    assert res.proposed["Defective"].threshold == 0.25  # only 0.25 catches the 0.3 miss


def test_real_pcb_model_on_real_images(bundles, keys, tmp_path, expected):
    from runtime.bundle import load_bundle
    from runtime.predictor import BundleModel
    from runtime.signing import TrustStore

    folder = tmp_path / "val"
    shutil.copytree(IMAGES / "pcb_winml", folder)
    (folder / "Normal_99.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")  # a truncated upload
    model = BundleModel(load_bundle(bundles["pcb-aoi"], TrustStore.load(keys["trust"]))).load()
    try:
        got = samples_from_images(model, folder)
    finally:
        model.close()
    assert [s.source.split("/")[-1] for s in got.skipped] == ["Normal_99.png"]
    ref = expected["pcb-aoi_opset11"]
    assert sorted(s.id for s in got.samples) == sorted(ref)
    for s in got.samples:
        assert s.truth == [ref[s.id]["truth"]]
        assert s.scores["Defective"] == pytest.approx(ref[s.id]["scores"]["Defective"], abs=0.02)
    res = tune(got.samples, TuningConfig(classes=["Defective"], holdout=0, default=MaxF1()))
    # the two defective boards score ~1.0 and the normal ones ~0.003: every threshold 0.05..0.95 separates them,
    # so F1 is 1.0 throughout and the tie goes to the highest threshold
    assert all(r.f1 == 1.0 for r in res.table["Defective"])
    assert res.proposed["Defective"].threshold == 0.95
    json.loads(res.model_dump_json())
