"""The exporter refuses what it cannot read: outputs no decoder reads (a text detector's probability map, a CRNN's
sequence, a detector given the other detector's decoder), label counts that only the reference run can check, and
inputs it cannot feed; NHWC inputs are read and recorded in the manifest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from export.exporter import export_model
from export.options import build_options, load_preset
from runtime.bundle import load_bundle
from runtime.errors import ConfigError, LabelError, ModelRejected
from runtime.predictor import BundleModel
from runtime.processing.image import read_image
from runtime.processing.shapes import check_output_shape
from tests.conftest import IMAGES, MODELS
from tests.export import onnx_models

PHOTOS = str(IMAGES / "photos")
PCB = str(IMAGES / "pcb_winml")


def options(**kw):
    base = dict(name="m", color_order="RGB", resize="stretch", scale=1 / 255, calibration=PHOTOS, max_calibration=4)
    base.update(kw)
    return build_options(None, base)


def refused(model: Path, out: Path, error: type[Exception] = ModelRejected, **kw) -> str:
    with pytest.raises(error) as err:
        export_model(model, options(**kw), out)
    assert not out.exists() or list(out.iterdir()) == [], "a refused export left files behind"
    return str(err.value)


def test_probability_map_is_not_a_classifier(tmp_path):
    model = onnx_models.probability_map(tmp_path / "db.onnx")
    msg = refused(model, tmp_path / "out", task="classify", decoder="sigmoid", labels=["text"])
    assert "output 'prob_map' has shape [N, 1, 96, 96]" in msg
    assert "expects [N, 1] or [N, 1, 1, 1]" in msg
    assert "per-pixel map" in msg and "no Shadowline decoder reads it" in msg


def test_probability_map_is_not_a_yolox_detector(tmp_path):
    model = onnx_models.probability_map(tmp_path / "db.onnx")
    msg = refused(model, tmp_path / "out", task="detect", decoder="yolox", labels=["text"])
    # 96x96 with strides 8, 16, 32: 144 + 36 + 9 anchors
    assert "decoder 'yolox' (task detect) expects [N, 189, 6]" in msg and "per-pixel map" in msg


def test_sequence_recogniser_is_not_a_6625_class_classifier(tmp_path):
    model = onnx_models.sequence_recogniser(tmp_path / "crnn.onnx")
    labels = [f"c{i}" for i in range(6625)]
    msg = refused(model, tmp_path / "out", task="classify", decoder="probabilities", labels=labels)
    assert "output 'probs' has shape [1, 50, 6625]" in msg
    assert "a sequence of 50 steps over 6625 classes" in msg and "CTC" in msg


@pytest.mark.parametrize("file,wrong,right", [("yolov8n_arch_320.onnx", "yolox", "yolov8"),
                                              ("yolox_nano.onnx", "yolov8", "yolox")])
def test_detector_with_the_other_decoder_names_the_one_that_fits(tmp_path, file, wrong, right):
    preset = "yolov8" if right == "yolov8" else "yolox-nano"
    model = MODELS / file
    opts = build_options(load_preset(preset, model), {"decoder": wrong, "max_calibration": 2})
    with pytest.raises(ModelRejected) as err:
        export_model(model, opts, tmp_path / "out")
    assert f"decoder {right}, task detect, 80 labels" in str(err.value)
    assert list((tmp_path / "out").iterdir()) == [] if (tmp_path / "out").exists() else True


def test_label_count_of_a_dynamic_output_is_checked_on_the_reference_run(tmp_path):
    model = onnx_models.dynamic_classes_pcb(tmp_path / "dyn.onnx")
    kw = dict(task="classify", decoder="probabilities", color_order="BGR", resize="short_side_center_crop",
              scale=1.0, calibration=PCB)
    msg = refused(model, tmp_path / "out", LabelError, labels=["Defective", "Normal", "Scratch"], **kw)
    assert "3 labels given, but the model output has 2 classes: output 'scores' has shape [4, 2]" in msg
    path, manifest, _ = export_model(model, options(labels=["Defective", "Normal"], **kw), tmp_path / "ok")
    assert manifest.labels == ["Defective", "Normal"]


def test_nhwc_input_is_read_and_scores_like_the_nchw_model(tmp_path, bundles):
    model = onnx_models.nhwc_pcb(tmp_path / "pcb_nhwc.onnx")
    opts = build_options(load_preset("pcb-aoi", MODELS / "pcb-aoi_opset11.onnx"),
                         {"name": "pcb-nhwc", "fp16": True, "validation": None})
    path, manifest, _ = export_model(model, opts, tmp_path / "out")
    assert manifest.input.layout == "NHWC" and manifest.input.shape == ["N", 227, 227, 3]
    assert [c.passed for c in manifest.parity] == [True]  # the FP16 variant of the NHWC model too
    images = [read_image(p) for p in sorted((IMAGES / "pcb_winml").iterdir())]
    with load_bundle(path) as nhwc, load_bundle(bundles["pcb-aoi"]) as nchw:
        a = BundleModel(nhwc).load().predict(images)
        b = BundleModel(nchw).load().predict(images)
    for x, y in zip(a, b):
        assert x.scores is not None and y.scores is not None
        np.testing.assert_allclose(list(x.scores.values()), list(y.scores.values()), atol=1e-5)


def test_layout_that_contradicts_the_shape_is_refused(tmp_path):
    model = onnx_models.nhwc_pcb(tmp_path / "pcb_nhwc.onnx")
    msg = refused(model, tmp_path / "out", layout="NCHW", task="classify", decoder="probabilities",
                  labels=["Defective", "Normal"])
    assert "layout NCHW puts 227 channels where 3 colour channels are expected" in msg


@pytest.mark.parametrize("maker,text", [(onnx_models.grayscale_input, "neither"),
                                        (onnx_models.uint8_input, "is uint8")])
def test_inputs_that_cannot_be_fed_are_refused_by_name(tmp_path, maker, text):
    model = maker(tmp_path / "m.onnx")
    msg = refused(model, tmp_path / "out", task="classify", decoder="softmax", labels=["a", "b"])
    assert text in msg


def test_input_that_reads_both_ways_needs_a_layout():
    from export.specs import input_layout

    with pytest.raises(ConfigError, match="give --layout"):
        input_layout("x", [1, 3, 8, 3], None, "m.onnx")
    assert input_layout("x", [1, 3, 8, 3], "NHWC", "m.onnx") == "NHWC"


@pytest.mark.parametrize("shape,task,decoder,labels,ok", [
    ([1, 2], "classify", "softmax", 2, True),
    ([1, 1000, 1, 1], "classify", "probabilities", 1000, True),
    (["N", "C"], "classify", "softmax", 7, True),  # unknown until the reference run
    ([1, 3549, 85], "detect", "yolox", 80, True),
    ([1, 84, 2100], "detect", "yolov8", 80, False),  # 2100 anchors are 320x320, not 416x416
    ([1, 84, 3549], "detect", "yolov8", 80, True),
    ([1, 3549, 85], "detect", "yolox", 79, False),
    ([1, 2, 5, 5], "classify", "softmax", 2, False),
    ([1, 2], "detect", "yolox", 2, False),
    ([1, 3549, 85], "classify", "softmax", 85, False),
])
def test_shape_rule_table(shape, task, decoder, labels, ok):
    call = lambda: check_output_shape(shape, task=task, decoder=decoder, labels=labels, input_hw=(416, 416),
                                      strides=[8, 16, 32])
    if ok:
        call()
    else:
        with pytest.raises(ModelRejected):
            call()
