"""Executor self-tests: every supported ONNX op, converted, saved, loaded back and evaluated by the reference
executor, agrees with ONNX Runtime on the same single-op graph (including padding and ceil-mode edge cases)."""

from __future__ import annotations

import numpy as np
import pytest

from export.coreml.ops import CONVERTERS
from tests.coreml.onnx_cases import CASES, RNG, SUPPORTED, run_coreml, run_onnxruntime

pytest.importorskip("coremltools")


def test_every_supported_op_has_a_case_and_a_converter():
    covered = {node.op_type for case in CASES for node in case.nodes}
    assert SUPPORTED <= covered
    assert SUPPORTED <= set(CONVERTERS)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_op_matches_onnxruntime(case, tmp_path):
    x = RNG.normal(0, 2.0, (1, 3, *case.hw)).astype(np.float32)
    model = case.model()
    want = run_onnxruntime(model, x)
    got = run_coreml(model, x, tmp_path)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_fp16_ops_are_rounded(tmp_path):
    """An FP16 package is evaluated in FP16 storage: close to ONNX Runtime, but not bit-equal."""
    case = next(c for c in CASES if c.id == "conv_pad1")
    x = RNG.normal(0, 2.0, (1, 3, *case.hw)).astype(np.float32)
    model = case.model()
    want = run_onnxruntime(model, x)
    got = run_coreml(model, x, tmp_path, precision="fp16")
    err = np.abs(got - want).max()
    assert 0 < err < 0.02 * np.abs(want).max()


def test_shape_mismatch_is_caught(tmp_path):
    """The executor refuses a program whose declared shape its computation does not reproduce."""
    from export.coreml.executor import OPS, ExecutorError

    case = next(c for c in CASES if c.id == "maxpool_basic")
    x = RNG.normal(0, 1.0, (1, 3, *case.hw)).astype(np.float32)
    original = OPS["max_pool"]
    OPS["max_pool"] = lambda o, x, **kw: original(o, x, **kw)[:, :, :-1]
    try:
        with pytest.raises(ExecutorError, match="declares"):
            run_coreml(case.model(), x, tmp_path)
    finally:
        OPS["max_pool"] = original
