"""Issue 11.5: Core ML is checked on what the app receives. `classLabel_probs` (after the converted softmax or
sigmoid) is compared with the reference probabilities, so a package that lost its softmax is refused; and the
tolerance follows both sides' precision (an FP16-I/O model's correct FP32 package passes at FP16 tolerance, and
the result says which side limits the comparison)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from export.coreml.checks import tolerance
from export.coreml.package import build_and_check
from runtime.errors import ParityError
from runtime.parity import Reference
from tests.conftest import MODELS

pytest.importorskip("coremltools")


def logits_squeezenet(path: Path) -> Path:
    """SqueezeNet 1.0 without its final Softmax node: the model outputs logits, as most trained classifiers do."""
    model = onnx.load(str(MODELS / "squeezenet1.0_fp32.onnx"))
    softmax = next(n for n in model.graph.node if n.op_type == "Softmax")
    logits = softmax.input[0]
    model.graph.node.remove(softmax)
    out = model.graph.output[0]
    out.name = logits
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def logits_bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The logits SqueezeNet exported with decoder=softmax and --coreml, once per precision."""
    from export.exporter import export_model
    from export.options import build_options, load_preset

    work = tmp_path_factory.mktemp("logits")
    model = logits_squeezenet(work / "squeezenet_logits.onnx")
    out = {}
    for precision in ("fp32", "fp16"):
        opts = build_options(load_preset("squeezenet", MODELS / "squeezenet1.0_fp32.onnx"),
                             {"decoder": "softmax", "name": "squeezenet-logits", "coreml": True,
                              "coreml_precision": precision})
        out[precision], _, _ = export_model(model, opts, work / precision)
    return out


def _check(bundle: Path):
    from runtime.bundle import load_bundle

    with load_bundle(bundle) as b:
        return next(c for c in b.manifest.parity if c.kind == "coreml"), b.manifest


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_probabilities_compared_and_passed(logits_bundles, precision):
    check, manifest = _check(logits_bundles[precision])
    assert check.passed, check.detail
    stats = check.stats
    assert stats["class_label_agree"] == check.samples == 9
    assert stats["probs_max_abs"] <= (1e-4 if precision == "fp32" else 0.05)
    assert check.tolerances["probabilities_max_abs"] == (1e-4 if precision == "fp32" else 0.05)
    assert stats["tolerance"].startswith("FP32" if precision == "fp32" else "FP16 tolerance (limited by the package")
    outputs = [o["name"] for o in manifest.extras["coreml"]["outputs"]]
    assert outputs == ["classLabel", "classLabel_probs", "pool10_1"]  # the logits stay available for diagnosis


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_dropped_softmax_is_refused(logits_bundles, tmp_path, precision):
    """The planted bug: the converter forgets the softmax it adds for a logits classifier. Logits and top-1 still
    agree; the probabilities the app reads do not (the astronaut's "barbell" reads as a logit, not 0.53)."""
    from runtime.bundle import load_bundle

    with load_bundle(logits_bundles[precision]) as b:
        (tmp_path / "model.onnx").write_bytes(b.path("model.onnx").read_bytes())
        reference = Reference.from_arrays(b.reference())
        manifest = b.manifest
    check, _, _ = build_and_check(tmp_path, manifest, reference, precision, bugs=frozenset({"drop_softmax"}))
    assert not check.passed
    assert check.stats["top1_agree"] == check.samples  # what the old check looked at still agrees
    assert check.stats["class_label_agree"] == check.samples
    assert check.stats["probs_max_abs"] > 1.0
    assert "classLabel_probs['barbell']" in check.detail and "astronaut.png" in check.detail
    assert ("FP32 tolerance" if precision == "fp32" else "FP16 tolerance") in check.detail


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_dropped_in_graph_softmax_is_refused(coreml_bundles, tmp_path, precision):
    """The same bug on the shipped SqueezeNet, whose softmax is an ONNX node (decoder `probabilities`)."""
    from runtime.bundle import load_bundle

    with load_bundle(coreml_bundles[("squeezenet", precision)]) as b:
        (tmp_path / "model.onnx").write_bytes(b.path("model.onnx").read_bytes())
        reference = Reference.from_arrays(b.reference())
        manifest = b.manifest
    check, _, _ = build_and_check(tmp_path, manifest, reference, precision, bugs=frozenset({"drop_softmax"}))
    assert not check.passed
    assert check.stats["probs_max_abs"] > 1.0 and "classLabel_probs[" in check.detail


def test_dropped_softmax_fails_the_export(tmp_path, monkeypatch):
    """Through the real exporter: ParityError, and nothing written."""
    import export.coreml.package as package
    from export.exporter import export_model
    from export.options import build_options, load_preset

    original = package.build_and_check
    monkeypatch.setattr(package, "build_and_check",
                        lambda *a, **kw: original(*a, **{**kw, "bugs": frozenset({"drop_softmax"})}))
    model = logits_squeezenet(tmp_path / "logits.onnx")
    opts = build_options(load_preset("squeezenet", MODELS / "squeezenet1.0_fp32.onnx"),
                         {"decoder": "softmax", "coreml": True})
    out = tmp_path / "out"
    with pytest.raises(ParityError, match="classLabel_probs"):
        export_model(model, opts, out)
    assert not list(out.iterdir())


def fp16_io_pcb(path: Path) -> Path:
    """The PCB model with float16 weights, input and output (what onnxconverter's keep_io_types=False makes)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    onnx.save(convert_float_to_float16(onnx.load(str(MODELS / "pcb-aoi_opset11.onnx")), keep_io_types=False),
              str(path))
    return path


def test_fp16_io_model_compared_at_fp16_tolerance(tmp_path):
    """The FP32 package of an FP16-I/O model is correct; its reference is FP16, so FP16 tolerance applies (an FP32
    tolerance refused it with max abs 2.3e-4 > 1e-4), and the result says the reference limits the comparison."""
    from export.exporter import export_model
    from export.options import build_options, load_preset

    model = fp16_io_pcb(tmp_path / "pcb_fp16io.onnx")
    opts = build_options(load_preset("pcb-aoi", MODELS / "pcb-aoi_opset11.onnx"), {"coreml": True})
    _, manifest, _ = export_model(model, opts, tmp_path / "out")
    assert manifest.input.dtype == "float16"
    check = next(c for c in manifest.parity if c.kind == "coreml")
    assert check.passed, check.detail
    assert check.precision == "fp32" and check.level == "task"
    assert check.stats["tolerance"] == ("FP16 tolerance (limited by the reference: the reference is float16 "
                                        "(the ONNX model's output))")
    assert 1e-4 < check.stats["max_abs"] < 1e-2  # what an FP32 tolerance used to refuse
    assert check.stats["top1_agree"] == check.samples == 4


def test_fp16_io_model_still_catches_a_planted_bug(tmp_path):
    """FP16 tolerance is not a free pass: ceil_mode ignored moves scores by 0.1 and is refused, naming the side."""
    from export.exporter import export_model
    from export.options import build_options, load_preset
    from runtime.bundle import load_bundle

    model = fp16_io_pcb(tmp_path / "pcb_fp16io.onnx")
    opts = build_options(load_preset("pcb-aoi", MODELS / "pcb-aoi_opset11.onnx"), {})
    path, _, _ = export_model(model, opts, tmp_path / "out")
    with load_bundle(path) as b:
        (tmp_path / "model.onnx").write_bytes(b.path("model.onnx").read_bytes())
        reference = Reference.from_arrays(b.reference())
        manifest = b.manifest
    check, _, _ = build_and_check(tmp_path, manifest, reference, "fp32", bugs=frozenset({"ignore_ceil_mode"}))
    assert not check.passed
    assert "limited by the reference" in check.detail and "classLabel_probs" in check.detail


@pytest.mark.parametrize("precision,dtype,level,limited", [
    ("fp32", np.float32, "fp32", ""), ("fp16", np.float32, "fp16", "package"),
    ("fp32", np.float16, "fp16", "reference"), ("fp16", np.float16, "fp16", "package and reference")])
def test_tolerance_follows_both_sides(precision, dtype, level, limited):
    tol = tolerance(precision, np.zeros((1, 2), dtype))
    assert (tol.level, tol.limited_by) == (level, limited)
    text = tol.describe()
    assert text.startswith(level.upper()) and (limited in text if limited else "both FP32" in text)
