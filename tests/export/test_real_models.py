"""The three shipped models, exported from their presets into signed bundles, reproduce the expected results."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.bundle import load_bundle
from runtime.predictor import BundleModel
from runtime.processing.decode import iou_matrix
from runtime.processing.image import read_image
from runtime.signing import TrustStore
from tests.conftest import IMAGES


@pytest.fixture(scope="module")
def trust(keys):
    return TrustStore.load(keys["trust"])


def run(bundle_path, trust, folder):
    with load_bundle(bundle_path, trust) as b:
        model = BundleModel(b).load()
        try:
            files = sorted((IMAGES / folder).iterdir())
            return b.manifest, {f.name: model.predict([read_image(f)])[0] for f in files}
        finally:
            model.close()


def test_pcb_four_of_four(bundles, trust, expected):
    manifest, outs = run(bundles["pcb-aoi"], trust, "pcb_winml")
    exp = expected["pcb-aoi_opset11"]
    assert set(outs) == set(exp)
    for name, out in outs.items():
        label, _ = out.top()
        assert label == exp[name]["pred"] == exp[name]["truth"], name
        for cls, score in exp[name]["scores"].items():
            assert out.scores[cls] == pytest.approx(score, abs=0.02), (name, cls)
    flagged = sorted(n for n, o in outs.items() if o.hits(manifest.thresholds))
    assert flagged == ["Defective_02.png", "Defective_25.png"]  # Normal is in thresholds.ignore
    assert manifest.input.shape[0] == "N" and manifest.batch.dynamic and manifest.batch.max > 1
    assert manifest.validation is not None and manifest.validation.accuracy == 1.0
    assert manifest.validation.per_class["Defective"].recall == 1.0


def test_squeezenet_top1(bundles, trust, expected):
    manifest, outs = run(bundles["squeezenet"], trust, "photos")
    exp = expected["squeezenet1.0_fp32"]
    assert set(outs) == set(exp)
    for name, out in outs.items():
        label, score = out.top()
        assert label.split(" [")[0] == exp[name][0]["label"], name
        assert score == pytest.approx(exp[name][0]["prob"], abs=0.02), name
    # the shipped list has "crane" at 134 and 517: de-duplicated visibly, recorded in the manifest
    assert manifest.labels[134] == "crane [134]" and manifest.labels[517] == "crane [517]"
    assert manifest.label_renames == {"134": "crane [134]", "517": "crane [517]"}
    assert manifest.input.shape[0] == 1 and not manifest.batch.dynamic


def test_yolox_detections(bundles, trust, expected):
    manifest, outs = run(bundles["yolox-nano"], trust, "photos")
    exp = expected["yolox_nano"]
    total = 0
    for name, out in outs.items():
        got = [d for d in out.detections if d.score > 0.35]
        want = exp[name]
        assert len(got) == len(want), (name, [(d.label, d.score) for d in got], want)
        for w in want:
            cands = [d for d in got if d.label == w["label"]]
            assert cands, (name, w)
            ious = iou_matrix(np.asarray([w["box_xyxy"]]), np.asarray([d.box for d in cands]))[0]
            best = cands[int(ious.argmax())]
            assert ious.max() > 0.9, (name, w, best)
            assert best.score == pytest.approx(w["score"], abs=0.02), (name, w, best)
            total += 1
    assert total == sum(len(v) for v in exp.values()) == 8


@pytest.mark.parametrize("preset", ["pcb-aoi", "squeezenet", "yolox-nano"])
def test_fp16_variant_passes_task_check(bundles, trust, preset):
    with load_bundle(bundles[preset], trust) as b:
        checks = [c for c in b.manifest.parity if c.kind == "onnx-fp16"]
        assert len(checks) == 1 and checks[0].passed and checks[0].samples >= 4
        if b.manifest.task == "classify":
            assert checks[0].stats["top1_agree"] == checks[0].stats["top1_of"] == checks[0].samples
        else:
            assert checks[0].stats["detections_matched"] == checks[0].stats["detections_reference"] > 0
        assert "model.fp16.onnx" in b.manifest.files
        import onnx
        m = onnx.load(str(b.path("model.fp16.onnx")))
        assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in m.graph.initializer)


def test_reference_npz_holds_device_preprocessing(bundles, trust):
    """reference.npz inputs equal what the device's own preprocessing makes of the same calibration images."""
    from runtime.parity import Reference
    from runtime.processing.preprocess import preprocess

    with load_bundle(bundles["squeezenet"], trust) as b:
        ref = Reference.from_arrays(b.reference())
        assert ref.names == sorted(p.name for p in (IMAGES / "photos").iterdir())
        x, _ = preprocess(read_image(IMAGES / "photos" / ref.names[0]), b.manifest.input)
        np.testing.assert_array_equal(ref.inputs[0], x)
        assert ref.outputs["softmaxout_1"].shape == (9, 1000, 1, 1)


def test_per_class_nms_keeps_overlapping_classes(bundles, trust):
    """With per-class NMS (DESIGN default) the kitten keeps its overlapping 'cat' box; class-agnostic drops it."""
    from runtime.parity import Reference
    from runtime.processing.decode import decode_yolox

    with load_bundle(bundles["yolox-nano"], trust) as b:
        m = b.manifest
        ref = Reference.from_arrays(b.reference())
        i = ref.names.index("winml_kitten_224.png")
        raw = ref.outputs["output"][i : i + 1]
        agnostic = decode_yolox(raw, (416, 416), m.output, m.labels, ref.transforms[i : i + 1])[0]
        per_class = decode_yolox(raw, (416, 416), m.output.model_copy(update={"class_agnostic_nms": False}),
                                 m.labels, ref.transforms[i : i + 1])[0]
        assert [d.label for d in agnostic if d.score > 0.35] == ["dog"]
        assert [d.label for d in per_class if d.score > 0.35] == ["dog", "cat"]
