"""Paths the shipped models do not take: a logits classifier (softmax/sigmoid decoder: activation added inside the
Core ML model, raw output kept) with a per-channel std (explicit normalisation ops), RGB, exported for real."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from export.exporter import export_model
from export.options import build_options
from runtime.bundle import load_bundle
from tests.conftest import IMAGES

pytest.importorskip("coremltools")



def save_classifier(path, name: str, nodes: list, inits: list, input_shape: list, classes: int) -> None:
    """A one-input graph `data` -> `logits` [N, classes], opset 13, IR 8, saved to `path`."""
    x = helper.make_tensor_value_info("data", TensorProto.FLOAT, input_shape)
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])
    m = helper.make_model(helper.make_graph(nodes, name, [x], [y], initializer=inits),
                          opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.save(m, str(path))

def logits_model(path, classes: int = 3) -> None:
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.normal(0, 0.3, (classes, 8)).astype(np.float32), "fc"),
             numpy_helper.from_array(rng.normal(0, 0.1, (classes,)).astype(np.float32), "fcb")]
    nodes = [helper.make_node("Conv", ["data", "w"], ["c"], name="conv", strides=[4, 4], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "fc", "fcb"], ["logits"], name="fc", transB=1)]
    save_classifier(path, "tiny", nodes, inits, ["N", 3, 64, 64], classes)


@pytest.mark.parametrize("decoder", ["softmax", "sigmoid"])
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_logits_classifier_per_channel_std(tmp_path, decoder, precision):
    model = tmp_path / "tiny.onnx"
    logits_model(model)
    opts = build_options(None, dict(
        name="tiny", task="classify", labels=["scratch", "dent", "ok"], color_order="RGB", resize="stretch",
        scale=1 / 255, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225], decoder=decoder,
        calibration=str(IMAGES / "photos"), coreml=True, coreml_precision=precision, author="QA team",
        description="tiny test classifier", license="Apache-2.0"))
    path, manifest, _ = export_model(model, opts, tmp_path / "out")
    check = next(c for c in manifest.parity if c.kind == "coreml")
    assert check.passed, check.detail
    assert check.stats["top1_agree"] == check.samples == 9
    if precision == "fp32":
        assert check.stats["max_abs"] <= 1e-4
    extras = manifest.extras["coreml"]
    assert [o["name"] for o in extras["outputs"]] == ["classLabel", "classLabel_probs", "logits"]
    raw = next(o for o in extras["outputs"] if o["name"] == "logits")
    assert raw["dtype"] == "FLOAT32"
    assert extras["batch"]["flexible"] is True
    assert all(f["passed"] for f in extras["description_checks"])
    with load_bundle(path) as b:
        from export.coreml.executor import load_program

        _, prog = load_program(b.root / extras["package"])
        ops = [o.op_type for o in prog.functions["main"].operations]
        assert decoder in ops  # the activation is inside the model: classLabel_probs are scores
        # per-channel std: explicit normalisation ops (coremltools fuses the mul and add into one batch_norm)
        assert any(v.name.startswith("normalised") for o in prog.functions["main"].operations for v in o.outputs)
        meta = b.manifest
        assert meta.author == "QA team"


def nhwc_logits_model(path, classes: int = 3) -> None:
    """The logits classifier behind a Transpose: input [N, 48, 64, 3] (NHWC, as TensorFlow exports), not square,
    so a wrong axis order cannot pass by symmetry."""
    rng = np.random.default_rng(4)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.normal(0, 0.3, (classes, 8)).astype(np.float32), "fc")]
    nodes = [helper.make_node("Transpose", ["data"], ["nchw"], name="to_nchw", perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["nchw", "w"], ["c"], name="conv", strides=[4, 4], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "fc"], ["logits"], name="fc", transB=1)]
    save_classifier(path, "tiny_nhwc", nodes, inits, ["N", 48, 64, 3], classes)


def test_nhwc_input_converts_and_passes_on_the_reference_images(tmp_path):
    """An NHWC model gets the same Core ML image input as any other ([N, 3, H, W], normalised per channel), turned
    to NHWC inside the program; its probabilities match ONNX Runtime's on the reference images."""
    model = tmp_path / "tiny_nhwc.onnx"
    nhwc_logits_model(model)
    opts = build_options(None, dict(
        name="tiny-nhwc", task="classify", labels=["scratch", "dent", "ok"], color_order="RGB", resize="stretch",
        scale=1 / 255, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225], decoder="softmax",
        calibration=str(IMAGES / "photos"), coreml=True, coreml_precision="fp32"))
    _, manifest, _ = export_model(model, opts, tmp_path / "out")
    assert manifest.input.layout == "NHWC" and manifest.input.shape == ["N", 48, 64, 3]
    check = next(c for c in manifest.parity if c.kind == "coreml")
    assert check.passed, check.detail
    assert check.stats["top1_agree"] == check.samples and check.stats["max_abs"] <= 1e-4
