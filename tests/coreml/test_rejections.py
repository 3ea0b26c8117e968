"""What the converter refuses, and how it says so: the legacy 2018 model, unsupported ops and attributes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from export.coreml.converter import build_program
from runtime.errors import ConversionError, ModelRejected
from tests.conftest import MODELS
from tests.coreml.onnx_cases import manifest_for

pytest.importorskip("coremltools")


def model_with(node, opset: int = 13, inits=(), out_shape=(1, 3, 8, 8)) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_shape))
    g = helper.make_graph([node], "t", [x], [y], initializer=list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def test_legacy_2018_model_refused():
    legacy = onnx.load(str(MODELS / "pcb-aoi_original_2018.onnx"))
    with pytest.raises(ModelRejected) as err:
        build_program(legacy, manifest_for("data_0", (1, 3, 227, 227)), 1)
    text = str(err.value)
    assert "legacy ONNX" in text and "opset" in text and "LegacyPadding" in text and "Re-export" in text


def test_legacy_2018_model_refused_by_export(tmp_path):
    from export.exporter import export_model
    from export.options import build_options, load_preset

    legacy = MODELS / "pcb-aoi_original_2018.onnx"
    opts = build_options(load_preset("pcb-aoi", legacy), {"coreml": True, "labels": ["Defective", "Normal"]})
    with pytest.raises(ModelRejected, match="LegacyPadding"):
        export_model(legacy, opts, tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_unsupported_op_names_op_node_and_attributes():
    node = helper.make_node("LpNormalization", ["x"], ["y"], name="norm_7", axis=1, p=2)
    with pytest.raises(ConversionError) as err:
        build_program(model_with(node), manifest_for("x", (1, 3, 8, 8)), 1)
    text = str(err.value)
    assert "LpNormalization" in text and "norm_7" in text and "axis" in text and "p" in text


@pytest.mark.parametrize("node,attr", [
    (helper.make_node("MaxPool", ["x"], ["y"], name="pool_d", kernel_shape=[2, 2], dilations=[2, 2]), "dilations"),
    (helper.make_node("Resize", ["x", "", "s"], ["y"], name="rs", mode="cubic"), "mode"),
    (helper.make_node("Pad", ["x", "p"], ["y"], name="pd", mode="wrap"), "mode"),
    (helper.make_node("Relu", ["x"], ["y"], name="r", extra_flag=1), "extra_flag"),
    (helper.make_node("Conv", ["x", "w"], ["y"], name="cv", auto_pad="BOGUS"), "auto_pad"),
])
def test_unsupported_attribute_is_named(node, attr):
    inits = [numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "s"),
             numpy_helper.from_array(np.zeros(8, np.int64), "p"),
             numpy_helper.from_array(np.ones((3, 3, 1, 1), np.float32), "w")]
    with pytest.raises(ConversionError) as err:
        build_program(model_with(node, opset=19 if node.op_type == "Pad" else 13, inits=inits),
                      manifest_for("x", (1, 3, 8, 8)), 1)
    text = str(err.value)
    assert node.op_type in text and repr(node.name) in text and attr in text


def test_computed_shape_input_refused():
    """A shape that depends on the dynamic batch, used as a number (not as a Reshape target): not constant, so not
    folded, and the converter refuses it naming the op."""
    nodes = [helper.make_node("Shape", ["x"], ["s"], name="shape_of_x"),
             helper.make_node("Gather", ["s", "zero"], ["n"], name="batch_size"),
             helper.make_node("Cast", ["n"], ["nf"], name="to_float", to=TensorProto.FLOAT),
             helper.make_node("Div", ["x", "nf"], ["y"], name="per_batch")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 8, 8])
    zero = numpy_helper.from_array(np.asarray(0, np.int64), "zero")
    m = helper.make_model(helper.make_graph(nodes, "t", [x], [y], initializer=[zero]),
                          opset_imports=[helper.make_opsetid("", 13)])
    with pytest.raises(ConversionError, match="Shape node 'shape_of_x'"):
        build_program(m, manifest_for("x", ("N", 3, 8, 8)), 1)


def test_export_with_unsupported_op_fails_cleanly(tmp_path):
    """ORT runs LpNormalization, Core ML conversion refuses it: the export fails naming it, leaves nothing."""
    from export.exporter import export_model
    from export.options import build_options

    w = numpy_helper.from_array(np.full((2, 3 * 8 * 8), 0.01, np.float32), "w")
    nodes = [helper.make_node("LpNormalization", ["x"], ["e"], name="lpnorm_1", axis=1),
             helper.make_node("Flatten", ["e"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "w"], ["y"], name="fc", transB=1)]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])
    m = helper.make_model(helper.make_graph(nodes, "t", [x], [y], initializer=[w]),
                          opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    path = tmp_path / "lpnorm.onnx"
    onnx.save(m, str(path))
    from tests.conftest import IMAGES
    opts = build_options(None, dict(name="lpnorm", task="classify", labels=["a", "b"], color_order="RGB",
                                    resize="stretch", decoder="probabilities", calibration=str(IMAGES / "pcb_winml"),
                                    coreml=True))
    out = tmp_path / "out"
    with pytest.raises(ConversionError, match="LpNormalization node 'lpnorm_1'"):
        export_model(path, opts, out)
    assert not list(out.iterdir())


def test_unknown_planted_bug_refused():
    from export.coreml.graph import Graph

    with pytest.raises(ValueError):
        Graph(13, frozenset({"no_such_bug"}))


def test_bad_onnx_file(tmp_path: Path):
    from export.coreml.converter import convert

    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelRejected):
        convert(bad, manifest_for("x", (1, 3, 8, 8)), "fp32")


@pytest.mark.parametrize("ct_version,np_version,ok", [("9.0", "2.3.5", True), ("9.0", "2.4.0", False),
                                                      ("9.1", "2.4.1", True), ("7.2", "1.26.4", False)])
def test_version_guard(ct_version, np_version, ok):
    from export.coreml.package import version_problem

    problem = version_problem(ct_version, np_version)
    assert (problem is None) == ok
    if not ok:
        assert ct_version in problem


def test_missing_coremltools_says_what_to_install(monkeypatch):
    import builtins

    from export.coreml.package import require_coremltools
    from runtime.errors import BackendUnavailable

    real_import = builtins.__import__

    def no_coremltools(name, *args, **kwargs):
        if name == "coremltools" or name.startswith("coremltools."):
            raise ImportError("No module named 'coremltools'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_coremltools)
    with pytest.raises(BackendUnavailable, match=r"shadowline\[coreml\]"):
        require_coremltools()
