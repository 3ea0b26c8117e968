"""The check must be able to fail: converter variants with the bugs seen in the field are caught on real models."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from export.coreml.package import build_and_check
from runtime.bundle import load_bundle
from runtime.errors import ParityError
from runtime.parity import Reference
from tests.coreml.onnx_cases import CASES, RNG, run_coreml, run_onnxruntime

pytest.importorskip("coremltools")

BUGS = [("pcb-aoi", "ignore_ceil_mode"), ("squeezenet", "softmax_axis_opset13"), ("yolox-nano", "slice_swap_hw")]


# FP32 for all three; FP16 for the bug that top-1 cannot see (the other two fail FP16 at top-1/detection level
# the same way, and each case costs a conversion plus a check).
@pytest.mark.parametrize("preset,bug,precision", [(p, b, "fp32") for p, b in BUGS] + [(*BUGS[0], "fp16")])
def test_planted_bug_fails_the_check(coreml_bundles, tmp_path, preset, bug, precision):
    with load_bundle(coreml_bundles[(preset, precision)]) as b:
        shutil.copy(b.path("model.onnx"), tmp_path / "model.onnx")
        reference = Reference.from_arrays(b.reference())
        manifest = b.manifest
    check, _, _ = build_and_check(tmp_path, manifest, reference, precision, bugs=frozenset({bug}))
    assert not check.passed
    stats = check.stats
    if bug == "ignore_ceil_mode":
        # top-1 survives this bug: only the score tolerances catch it
        assert stats["top1_agree"] == stats["top1_of"]
        assert stats["max_abs_score"] > 0.05
        # FP32: the raw output's element-wise error; FP16: the probabilities the app reads
        assert ("max_abs" in check.detail) if precision == "fp32" else ("classLabel_probs max abs" in check.detail)
    elif bug == "softmax_axis_opset13":
        assert stats["top1_agree"] < stats["top1_of"]
        assert "top-1" in check.detail
    else:
        assert stats["detections_matched"] < stats["detections_reference"]
        assert "unmatched" in check.detail or "extra" in check.detail


def test_planted_bug_fails_the_export(coreml_bundles, tmp_path, monkeypatch):
    """Through the real exporter: the failing check raises ParityError and no bundle is written."""
    import export.coreml.package as package
    from tests.conftest import export_preset

    original = package.build_and_check
    monkeypatch.setattr(package, "build_and_check",
                        lambda *a, **kw: original(*a, **{**kw, "bugs": frozenset({"ignore_ceil_mode"})}))
    with pytest.raises(ParityError, match="max_abs"):
        export_preset("pcb-aoi", tmp_path, None, coreml=True)
    assert not list(tmp_path.iterdir())  # no bundle, no staging directory


@pytest.mark.parametrize("case_id,bug", [("maxpool_ceil_odd", "ignore_ceil_mode"),
                                         ("softmax_opset11_axis1", "softmax_axis_opset13"),
                                         ("slice_hw_asymmetric", "slice_swap_hw")])
def test_planted_bug_visible_on_one_op(tmp_path, case_id, bug):
    case = next(c for c in CASES if c.id == case_id)
    x = RNG.normal(0, 2.0, (1, 3, *case.hw)).astype(np.float32)
    want = run_onnxruntime(case.model(), x)
    got = run_coreml(case.model(), x, tmp_path, bugs=frozenset({bug}))
    assert got.shape != want.shape or not np.allclose(got, want, atol=1e-3)
