"""One dataset with every kind of verdict, for the tests that check every surface shows the same figures:
predictions, line verdicts, adjudications that uphold overrides, adjudications that overturn them ("overrides of
overrides"), disputes nobody adjudicated, a bad image, unreviewed predictions and errors. All records fall within
the last hour, so the 1 h windows (/metrics, alert rules), the pillars and a one-day shadow report see them all.

The expected figures (EXPECTED) are worked out by hand below from the table, not by the code under test."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

from fleet.config import FleetConfig
from fleet.protocol import PredictionRecord, ReleaseSpec, ReviewRecord, StageSpec
from fleet.service import Fleet

RELEASE, REF, GROUP = "seal", "seal@1", "line-7"
DEVICES = ("cam-1", "cam-2")
INSPECTOR, QA = "ann", "qa-lead"

# 40 predictions, total latency 10 + i ms (i = 0..39), alternating between the two devices:
#   12 flagged Defective (score 0.9):
#     F0-F5   confirmed by ann                                   outcome Defective
#     F6-F8   ann: false positive; QA upholds (false positive)   override, outcome none
#     F9-F10  ann: false positive; QA overturns (confirm)        no override, outcome Defective
#     F11     ann: false positive; nobody adjudicates            override, unresolved, outcome none
#   26 passed Normal (score 0.5 for P0-P9: low confidence; 0.8 for the rest):
#     P0-P19  confirmed by ann                                   outcome none
#     P20-P21 ann: missed defect; QA upholds                     override, outcome Defective
#     P22     ann: missed defect; nobody adjudicates             override, unresolved, outcome Defective
#     P23     ann: bad image                                     left out of every figure
#     P24-P25 not reviewed
#   2 errors (decision=error)
#
# error rate           2 errors / 40 predictions                            = 0.05
# P95 total latency    nearest rank ceil(0.95 * 40) = 38 of 10..49 ms        = 47.0 ms
# class share          scored (non-error) 38: Defective 12/38, Normal 26/38
# low-confidence share 10/38 below 0.6
# reviewed cases       12 flagged + P0-P22 = 35 (P23 bad image, P24-P25 unreviewed)
# override rate        F6-F8, F11, P20-P22 = 7 / 35                          = 0.2
#   (review records: 42 judged records, 14 with override=true: counting records would say 33.3%)
# disputed             F6-F11, P20-P22 = 9; adjudicated 7 (F6-F10, P20-P21); unresolved 2 (F11, P22)
# outcomes             defects: F0-F5, F9-F10, P20-P22 = 11; clean: F6-F8, F11, P0-P19 = 24
# missed defects       outcome defect, model passed: P20-P22                 = 3
# model-only catches   outcome defect, model flagged, ann said none: F9-F10  = 2
# false-positive rate  model flagged, outcome none: F6-F8, F11 = 4 / 24
# model recall         8 / 11 (F0-F5, F9-F10); inspector recall 9 / 11 (F0-F5, P20-P22)
EXPECTED = {
    "predictions": 40, "errors": 2, "error_rate": 0.05, "latency_p95_ms": 47.0,
    "class_share": {"Defective": 12 / 38, "Normal": 26 / 38}, "low_confidence_share": 10 / 38,
    "reviewed": 35, "overrides": 7, "override_rate": 0.2, "disputed": 9, "adjudicated": 7, "unresolved": 2,
    "defects": 11, "missed_defects": 3, "model_only_catches": 2, "model_false_positives": 4,
    "fp_rate": 4 / 24, "model_recall": 8 / 11, "inspector_recall": 9 / 11, "bad_images": 1,
}


def dataset(now: datetime | None = None) -> tuple[list[PredictionRecord], list[ReviewRecord]]:
    now = now or datetime.now(timezone.utc)
    start = now - timedelta(minutes=50)
    preds: list[PredictionRecord] = []
    revs: list[ReviewRecord] = []

    def at(i: int, minutes: float = 0.0) -> str:
        return (start + timedelta(seconds=30 * i, minutes=minutes)).isoformat()

    def verdict(p: PredictionRecord, who: str, what: str, minutes: float, cls: str | None = None) -> None:
        override = what == "false_positive" or (what == "missed_defect" and p.decision != "flag")
        revs.append(ReviewRecord(prediction_id=p.id, device=p.device, created_at=at(len(preds), minutes),
                                 inspector=who, verdict=what, defect_class=cls, override=override,
                                 model_decision=p.decision, release=p.release, revision=p.revision,
                                 top_label=p.top_label, top_score=p.top_score))

    for i in range(40):
        kind, k = ("F", i) if i < 12 else ("P", i - 12) if i < 38 else ("E", i - 38)
        flagged = kind == "F"
        score = 0.9 if flagged else (0.5 if k < 10 else 0.8)
        p = PredictionRecord(
            device=DEVICES[i % 2], created_at=at(i), source=f"folder:{kind}{k}.png", release=RELEASE, revision=1,
            mode="shadow", decision="error" if kind == "E" else "flag" if flagged else "pass",
            flagged=[("Defective", score)] if flagged else [],
            top_label=None if kind == "E" else "Defective" if flagged else "Normal",
            top_score=None if kind == "E" else score, latency_ms={"total": 10.0 + i},
            error="decode failed" if kind == "E" else None)
        preds.append(p)
        if kind == "F":
            if k <= 5:
                verdict(p, INSPECTOR, "confirm", 1)
            else:
                verdict(p, INSPECTOR, "false_positive", 1)
                if k <= 8:
                    verdict(p, QA, "false_positive", 2)
                elif k <= 10:
                    verdict(p, QA, "confirm", 2)
        elif kind == "P":
            if k <= 19:
                verdict(p, INSPECTOR, "confirm", 1)
            elif k <= 22:
                verdict(p, INSPECTOR, "missed_defect", 1, "Defective")
                if k <= 21:
                    verdict(p, QA, "missed_defect", 2, "Defective")
            elif k == 23:
                verdict(p, INSPECTOR, "bad_image", 1)
    return preds, revs


def seeded_fleet(config: FleetConfig, bundle_dir: Path) -> Fleet:
    """A Fleet (publishing nowhere) with QA as adjudicator, the release `seal@1` (the real PCB bundle) and the
    dataset stored."""
    f = Fleet(config.model_copy(update={"adjudicators": [QA]}), publish=lambda topic, payload, retain: None)
    bid = f.registry.push(bundle_dir)["id"]
    f.releases.create(ReleaseSpec(name=RELEASE, stages=[StageSpec(role="verify", bundle=bid)]))
    seed(f)
    return f


@contextmanager
def served_fleet(config: FleetConfig, bundle_dir: Path) -> Iterator[tuple[Fleet, str]]:
    """The seeded fleet behind a real uvicorn on a free port: (fleet, base URL)."""
    from tests.fleet.apiserver import ApiServer

    f = seeded_fleet(config, bundle_dir)
    try:
        with ApiServer(f) as server:
            yield f, server.url
    finally:
        f.close()


def seed(fleet: Fleet, now: datetime | None = None) -> tuple[list[PredictionRecord], list[ReviewRecord]]:
    """Store the dataset in `fleet`'s store (the devices registered in GROUP)."""
    preds, revs = dataset(now)
    for d in DEVICES:
        fleet.devices.add(d, [GROUP])
    fleet.store.insert_records("predictions", [p.model_dump(mode="json") for p in preds])
    fleet.store.insert_records("reviews", [r.model_dump(mode="json") for r in revs])
    return preds, revs
