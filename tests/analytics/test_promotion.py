"""Training-data promotion on real images: which samples are chosen, the dataset layout, the provenance."""

from __future__ import annotations

import hashlib
import json

import pytest

from fleet.analytics.promotion import PromotionPolicy, promote, select
from fleet.protocol import StageOutput
from tests.analytics.streams import at, pred, review
from tests.conftest import IMAGES

PCB = IMAGES / "pcb_winml"
TH = {"default": 0.5, "Defective": 0.5}


def records():
    def p(label, score, decision="pass", th=TH, **kw):
        return pred(at(hours=1), label, score, decision, thresholds=th, models={"verify": "pcb-aoi-v1.0"},
                    image_kept=True, **kw)
    fp = p("Defective", 0.8, "flag")                      # overridden: false positive -> Normal
    sure = p("Defective", 0.95, "flag", th={"default": 0.9})  # near its 0.9 threshold but confirmed at 0.95
    near = p("Defective", 0.55, "flag")                   # near threshold, nobody reviewed it
    missed = p("Normal", 0.7)                             # overridden: missed defect -> Defective
    bad = p("Defective", 0.52, "flag")                    # bad image
    irrelevant = p("Defective", 0.45)                     # inspector: irrelevant
    cand = p("Defective", 0.75, "flag", role="candidate", disagrees_with="x")  # candidate disagreed with active
    gone = p("Defective", 0.6, "flag")                    # image never uploaded
    broken = p("Defective", 0.58, "flag")                 # uploaded bytes are not an image
    plain = p("Normal", 0.99)                             # nothing to learn, not even considered
    preds = [fp, sure, near, missed, bad, irrelevant, cand, gone, broken, plain]
    revs = [review(fp, "false_positive"), review(sure, "confirm"),
            review(missed, "missed_defect", defect_class="Defective"), review(bad, "bad_image"),
            review(irrelevant, "confirm").model_copy(update={"note": "Irrelevant: conveyor empty"}),
            review(cand, "confirm"), review(gone, "confirm"), review(broken, "confirm")]
    images = {fp.id: PCB / "Normal_33.png", near.id: PCB / "Defective_02.png", missed.id: PCB / "Defective_25.png",
              cand.id: PCB / "Defective_02.png", sure.id: PCB / "Defective_25.png"}
    return preds, revs, images, broken.id


def test_selection_reasons_and_exclusions():
    preds, revs, _, _ = records()
    chosen, left_out = select(preds, revs, PromotionPolicy(negative_label="Normal"))
    got = {c.prediction.top_score: (c.label, c.reasons) for c in chosen}
    assert got == {0.8: ("Normal", ["overridden"]), 0.55: ("_unreviewed", ["near_threshold"]),
                   0.7: ("Defective", ["overridden"]), 0.75: ("Defective", ["disagreement"]),
                   0.6: ("Defective", ["near_threshold"]), 0.58: ("Defective", ["near_threshold"])}
    assert dict(left_out) == {"bad_image": 1, "irrelevant": 1, "high_confidence_correct": 1}


def test_classifier_dataset_with_manifest(tmp_path):
    preds, revs, images, broken = records()

    def fetch(p):
        if p.id == broken:
            return b"\x89PNG\r\n\x1a\ntruncated"
        return images[p.id].read_bytes() if p.id in images else None
    out = tmp_path / "dataset"
    out.mkdir()
    (out / "stale.txt").write_text("from an earlier export")
    m = promote(preds, revs, fetch, out, "classify", policy=PromotionPolicy(negative_label="Normal"))
    assert m.counts == {"Defective": 2, "Normal": 1, "_unreviewed": 1}
    assert sorted(x["reason"].split(":")[0] for x in m.missing) == [broken, "image not kept or not uploaded"]
    assert not (out / "stale.txt").exists()
    on_disk = sorted(str(f.relative_to(out)) for f in out.rglob("*") if f.is_file())
    assert on_disk == sorted([e.file for e in m.samples] + ["manifest.json"])
    for e in m.samples:
        data = (out / e.file).read_bytes()
        assert e.file.startswith(e.label + "/") and e.sha256 == hashlib.sha256(data).hexdigest()
        assert e.release == "pcb" and e.models == {"verify": "pcb-aoi-v1.0"} and e.device == "dev-1"
    fp = next(e for e in m.samples if e.reasons == ["overridden"] and e.label == "Normal")
    assert fp.verdict == "false_positive" and fp.inspector == "ann"
    assert (out / fp.file).read_bytes() == (PCB / "Normal_33.png").read_bytes()
    saved = json.loads((out / "manifest.json").read_text())
    assert saved["schema"] == "shadowline.dataset" and saved["left_out"]["bad_image"] == 1


def test_failed_export_leaves_previous_dataset(tmp_path):
    preds, revs, images, _ = records()
    out = tmp_path / "dataset"
    out.mkdir()
    (out / "manifest.json").write_text("{}")

    def explode(p):
        raise RuntimeError("disk full")
    with pytest.raises(RuntimeError):
        promote(preds, revs, explode, out, "classify")
    assert (out / "manifest.json").read_text() == "{}"
    assert [p.name for p in tmp_path.iterdir()] == ["dataset"]


def test_detector_dataset_is_coco(tmp_path, expected):
    photo = IMAGES / "photos" / "coffee.png"
    dets = [{"label": d["label"], "score": d["score"], "box": d["box_xyxy"]} for d in expected["yolox_nano"]["coffee.png"]]

    def det_pred(verdict):
        p = pred(at(hours=2), dets[0]["label"], dets[0]["score"], "flag", thresholds={"default": 0.35})
        p.stages = [StageOutput(role="verify", bundle="yolox-nano-v1.0", detections=dets)]
        return p, review(p, verdict, defect_class="cup" if verdict == "missed_defect" else None)
    (a, ra), (b, rb) = det_pred("missed_defect"), det_pred("false_positive")
    m = promote([a, b], [ra, rb], lambda p: photo.read_bytes(), tmp_path / "coco", "detect", labels=["person", "cup"])
    coco = json.loads((tmp_path / "coco" / "annotations.json").read_text())
    assert [c["name"] for c in coco["categories"]][:2] == ["person", "cup"]
    assert {c["name"] for c in coco["categories"]} == {"person", "cup", "diningtable"}
    assert [(i["width"], i["height"]) for i in coco["images"]] == [(600, 400), (600, 400)]
    # the confirmed-class image keeps the model's two boxes; the false-positive image keeps none
    anns = coco["annotations"]
    assert [a_["image_id"] for a_ in anns] == [1, 1]
    x1, y1, x2, y2 = dets[0]["box"]
    assert anns[0]["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1])
    assert m.counts == {"cup": 1, "none": 1}
