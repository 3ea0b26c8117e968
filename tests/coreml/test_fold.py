"""Issue 14.6: constant shape computations are folded before conversion (only what is truly constant), so a
classifier with a Shape -> Gather -> Unsqueeze -> Concat -> Reshape chain exports with --coreml in both precisions,
and the YOLOv8/YOLO11 architecture files (whose head splits its boxes with Shape arithmetic) convert."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from export.coreml.converter import build_program
from export.coreml.fold import fold_constants
from runtime.errors import ConversionError
from tests.conftest import IMAGES, MODELS
from tests.coreml.onnx_cases import manifest_for, shape_classifier

pytest.importorskip("coremltools")
RNG = np.random.default_rng(11)


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def test_static_chain_folds_completely():
    model = shape_classifier()
    folded, report = fold_constants(model)
    ops = {n.op_type for n in folded.graph.node}
    assert ops == {"Conv", "Relu", "GlobalAveragePool", "Reshape", "Gemm"}
    assert report.folded["Shape"] == 2 and report.folded["Gather"] == 1 and report.folded["Concat"] == 2
    x = RNG.normal(0, 1, (1, 3, 64, 64)).astype(np.float32)
    np.testing.assert_array_equal(run(folded, x), run(model, x))


def test_dynamic_batch_is_never_folded_into_a_constant():
    """With a dynamic batch, Shape(g)[0] is not constant: the flatten's target becomes [0, -1] ("copy the batch
    of the input"), which is what it means, and the folded graph still runs any batch like the original."""
    model = shape_classifier(batch="N")
    folded, report = fold_constants(model)
    assert report.rewritten == ["flatten"]
    assert "Shape" not in {n.op_type for n in folded.graph.node}
    target = next(i for i in folded.graph.initializer if i.name.startswith("f__folded_shape"))
    assert numpy_helper.to_array(target).tolist() == [0, -1]
    for n in (1, 3):
        x = RNG.normal(0, 1, (n, 3, 64, 64)).astype(np.float32)
        np.testing.assert_allclose(run(folded, x), run(model, x), rtol=1e-6)


def test_random_ops_are_not_folded():
    nodes = [helper.make_node("RandomNormal", [], ["noise"], name="noise", shape=[1, 3, 8, 8], seed=1.0),
             helper.make_node("Add", ["x", "noise"], ["y"], name="add_noise")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])
    model = helper.make_model(helper.make_graph(nodes, "t", [x], [y]), opset_imports=[helper.make_opsetid("", 13)])
    folded, report = fold_constants(model)
    assert [n.op_type for n in folded.graph.node] == ["RandomNormal", "Add"] and not report.folded
    with pytest.raises(ConversionError, match="RandomNormal node 'noise'"):
        build_program(model, manifest_for("x", (1, 3, 8, 8)), 1)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("batch", [1, "N"])
def test_shape_classifier_exports_with_coreml(tmp_path, precision, batch):
    from export.exporter import export_model
    from export.options import build_options

    path = tmp_path / "shape_classifier.onnx"
    onnx.save(shape_classifier(batch), str(path))
    opts = build_options(None, dict(name="shape-classifier", task="classify", labels=["scratch", "dent", "ok"],
                                    color_order="RGB", resize="stretch", scale=1 / 255, decoder="softmax",
                                    calibration=str(IMAGES / "photos"), coreml=True, coreml_precision=precision))
    _, manifest, _ = export_model(path, opts, tmp_path / "out")
    check = next(c for c in manifest.parity if c.kind == "coreml")
    assert check.passed, check.detail
    assert check.stats["top1_agree"] == check.samples == 9
    folded = manifest.extras["coreml"]["folded"]
    assert folded["folded"]["Shape"] == 2  # both gone; with a dynamic batch, one by the rewrite
    assert folded["reshape_targets_rewritten"] == ([] if batch == 1 else ["flatten"])
    assert manifest.extras["coreml"]["batch"]["flexible"] is (batch == "N")


@pytest.mark.parametrize("model", ["yolov8n_arch_320.onnx", "yolo11n_arch_320.onnx"])
def test_yolo_architectures_convert_and_match(model, tmp_path):
    """The network part of the Ultralytics heads (C2f / C3k2 + attention, Shape arithmetic in the box split):
    converted, saved, read back and evaluated, it gives ONNX Runtime's raw output on a real photo."""
    from export.coreml.converter import convert
    from export.coreml.executor import PackageExecutor, load_package
    from export.coreml.package import save_package
    from runtime.processing.image import read_image
    from runtime.processing.preprocess import preprocess
    from runtime.processing.spec import InputSpec

    path = MODELS / model
    converted = convert(path, manifest_for("images", (1, 3, 320, 320), "output0"), "fp32")
    assert converted.fold["folded"]["Shape"] == 1
    assert ("matmul" in converted.op_counts) == model.startswith("yolo11")  # YOLO11's attention
    save_package(converted.model, tmp_path / "net.mlpackage")
    spec = InputSpec(name="images", shape=[1, 3, 320, 320], color_order="RGB", resize="letterbox", scale=1 / 255)
    x, _ = preprocess(read_image(IMAGES / "photos" / "astronaut.png", 50_000_000), spec)
    want = run(onnx.load(str(path)), x[None])
    got = PackageExecutor(load_package(tmp_path / "net.mlpackage")).run({"image": x[None]})[0][converted.compared_var]
    assert got.shape == want.shape == (1, 84, 2100)
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def test_fold_report_is_json_ready():
    import json

    _, report = fold_constants(shape_classifier())
    data = json.loads(json.dumps(report.as_dict()))
    assert data["folded"]["Shape"] == 2 and data["reshape_targets_rewritten"] == []


def test_nothing_to_fold_leaves_the_graph_alone():
    model = onnx.load(str(MODELS / "pcb-aoi_opset11.onnx"))
    folded, report = fold_constants(model)
    assert [n.name for n in folded.graph.node] == [n.name for n in model.graph.node]
    assert not report.folded and not report.rewritten
    assert len(folded.graph.initializer) == len(model.graph.initializer)

