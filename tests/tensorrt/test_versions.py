"""Version parsing and the 10.x / 11.x API paths (no TensorRT needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.errors import BackendUnavailable, ConfigError, ModelRejected
from runtime.loaders.tensorrt.versions import (
    TrtVersion,
    check_supported,
    network_flags,
    onnx_has_qdq,
    plan_build,
    resolve_precision,
)
from tests.conftest import MODELS
from tests.tensorrt.fake_trt import make_tensorrt

BASE = {"model.onnx", "reference.npz"}
WITH_FP16 = BASE | {"model.fp16.onnx"}


@pytest.mark.parametrize("text,expected", [("10.3.0.30", (10, 3, 0)), ("10.12.0.36", (10, 12, 0)),
                                           ("11.0.0", (11, 0, 0)), ("10.3", (10, 3, 0)), ("8.5.2.2", (8, 5, 2))])
def test_parse_version(text: str, expected: tuple[int, int, int]) -> None:
    v = TrtVersion.parse(text)
    assert (v.major, v.minor, v.patch) == expected


def test_parse_version_garbage() -> None:
    with pytest.raises(BackendUnavailable, match="cannot read the TensorRT version"):
        TrtVersion.parse("dev-build")


def test_versions_order() -> None:
    assert TrtVersion.parse("10.12.0") > TrtVersion.parse("10.3.0") and TrtVersion.parse("11.0") > TrtVersion(10, 99)


def test_unsupported_majors() -> None:
    with pytest.raises(BackendUnavailable, match="JetPack 6"):
        check_supported(TrtVersion(8, 5, 2))
    with pytest.raises(BackendUnavailable, match="10.x and 11.x"):
        check_supported(TrtVersion(12, 0, 0))
    with pytest.raises(BackendUnavailable):
        plan_build(TrtVersion(8, 6), "fp32", BASE)


def test_trt10_fp16_uses_the_builder_flag_on_the_fp32_onnx() -> None:
    plan = plan_build(TrtVersion(10, 3, 0), "fp16", WITH_FP16)
    assert plan.onnx_file == "model.onnx" and plan.builder_flags == ("FP16",) and not plan.strongly_typed
    assert not any("deprecated" in n for n in plan.notes)
    late = plan_build(TrtVersion(10, 12, 0), "fp16", BASE)
    assert late.builder_flags == ("FP16",) and any("deprecated since TensorRT 10.12" in n for n in late.notes)


def test_trt11_fp16_comes_from_the_fp16_onnx_without_flags() -> None:
    plan = plan_build(TrtVersion(11, 0, 0), "fp16", WITH_FP16)
    assert plan.onnx_file == "model.fp16.onnx" and plan.strongly_typed and plan.builder_flags == ()
    with pytest.raises(ConfigError, match="--fp16"):
        plan_build(TrtVersion(11, 1, 0), "fp16", BASE)


@pytest.mark.parametrize("major", [10, 11])
def test_fp32_clears_tf32(major: int) -> None:
    plan = plan_build(TrtVersion(major, 0), "fp32", BASE)
    assert plan.onnx_file == "model.onnx" and plan.builder_flags == () and plan.clear_flags == ("TF32",)
    assert plan.strongly_typed == (major == 11)


def test_unknown_precision() -> None:
    with pytest.raises(ConfigError, match="bf16"):
        plan_build(TrtVersion(10, 3), "bf16", BASE)


def _qdq_model(path: Path) -> Path:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    scale = numpy_helper.from_array(np.array(0.02, dtype=np.float32), "scale")
    zero = numpy_helper.from_array(np.array(0, dtype=np.int8), "zero")
    nodes = [helper.make_node("QuantizeLinear", ["x", "scale", "zero"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["dq"]),
             helper.make_node("Relu", ["dq"], ["y"])]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])], [scale, zero])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("major", [10, 11])
def test_int8_only_from_qdq(tmp_path: Path, major: int) -> None:
    import shutil

    shutil.copy(MODELS / "pcb-aoi_opset11.onnx", tmp_path / "model.onnx")
    assert not onnx_has_qdq(tmp_path / "model.onnx")
    with pytest.raises(ModelRejected, match="QuantizeLinear/DequantizeLinear"):
        plan_build(TrtVersion(major, 3), "int8", BASE, tmp_path)
    _qdq_model(tmp_path / "model.int8.onnx")
    assert onnx_has_qdq(tmp_path / "model.int8.onnx")
    plan = plan_build(TrtVersion(major, 3), "int8", BASE | {"model.int8.onnx"}, tmp_path)
    assert plan.onnx_file == "model.int8.onnx" and plan.strongly_typed and plan.builder_flags == ()
    # A bundle whose model.onnx is itself Q/DQ-quantized needs no separate file.
    _qdq_model(tmp_path / "model.onnx")
    assert plan_build(TrtVersion(major, 3), "int8", BASE, tmp_path).onnx_file == "model.onnx"


def test_auto_precision() -> None:
    assert resolve_precision(TrtVersion(10, 3), "auto", BASE) == "fp16"
    assert resolve_precision(TrtVersion(11, 0), "auto", BASE) == "fp32"
    assert resolve_precision(TrtVersion(11, 0), "auto", WITH_FP16) == "fp16"
    assert resolve_precision(TrtVersion(11, 0), "int8", BASE) == "int8"


def test_network_flags_per_version() -> None:
    t10, t11 = make_tensorrt("10.3.0"), make_tensorrt("11.0.0")
    assert network_flags(t10, plan_build(TrtVersion(10, 3), "fp16", BASE)) == 0
    assert network_flags(t10, plan_build(TrtVersion(10, 3), "fp32", BASE)) == 0
    strongly = 1 << int(t11.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    assert network_flags(t11, plan_build(TrtVersion(11, 0), "fp16", WITH_FP16)) == strongly
    assert not hasattr(t11.BuilderFlag, "FP16") and hasattr(t10.BuilderFlag, "FP16")
