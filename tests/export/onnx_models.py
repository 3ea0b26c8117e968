"""Small ONNX models made with onnx.helper for the exporter's refusals: the output shapes real third-party models
have (a text detector's probability map, a CRNN recogniser's sequence), and inputs the exporter must read or refuse
(NHWC, grayscale, uint8). Weights are seeded; where a real model fits, the real PCB model is wrapped instead."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import MODELS

OPSET = [helper.make_opsetid("", 13)]


def _w(name: str, shape: tuple[int, ...], seed: int, scale: float = 0.1) -> onnx.TensorProto:
    return numpy_helper.from_array((np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32),
                                   name)


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=OPSET, producer_name="shadowline-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def probability_map(path: Path, size: int = 96) -> Path:
    """A DB-style text detector head: [N, 3, S, S] -> per-pixel text probability [N, 1, S, S]."""
    nodes = [
        helper.make_node("Conv", ["image", "w1", "b1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], kernel_shape=[1, 1]),
        helper.make_node("Sigmoid", ["c2"], ["prob_map"]),
    ]
    graph = helper.make_graph(
        nodes, "prob_map",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("prob_map", TensorProto.FLOAT, ["N", 1, size, size])],
        [_w("w1", (4, 3, 3, 3), 1, 0.01), _w("b1", (4,), 2), _w("w2", (1, 4, 1, 1), 3), _w("b2", (1,), 4)])
    return _save(graph, path)


def sequence_recogniser(path: Path, classes: int = 6625, height: int = 32, width: int = 100) -> Path:
    """A CRNN-style recogniser: [N, 3, 32, 100] -> per-time-step class probabilities [N, T, classes] (T = 50)."""
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("ReduceMean", ["r1"], ["pooled"], axes=[2], keepdims=0),  # [N, 16, T]
        helper.make_node("Transpose", ["pooled"], ["steps"], perm=[0, 2, 1]),  # [N, T, 16]
        helper.make_node("MatMul", ["steps", "proj"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes, "crnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, height, width])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, width // 2, classes])],
        [_w("w1", (16, 3, 3, 3), 5, 0.01), _w("b1", (16,), 6), _w("proj", (16, classes), 7)])
    return _save(graph, path)


def _pcb() -> onnx.ModelProto:
    return onnx.load(str(MODELS / "pcb-aoi_opset11.onnx"))


def nhwc_pcb(path: Path) -> Path:
    """The real PCB classifier behind a Transpose: it takes NHWC [N, 227, 227, 3] and scores like the NCHW model."""
    model = _pcb()
    g = model.graph
    old_input = g.input[0].name
    g.node.insert(0, helper.make_node("Transpose", ["image_nhwc"], [old_input], perm=[0, 3, 1, 2]))
    new_input = helper.make_tensor_value_info("image_nhwc", TensorProto.FLOAT, ["N", 227, 227, 3])
    kept = [i for i in g.input if i.name != old_input]
    del g.input[:]
    g.input.extend([new_input, *kept])
    onnx.save(model, str(path))
    return path


def grayscale_input(path: Path) -> Path:
    """One channel in, two scores out: a grayscale classifier, which Shadowline refuses by name."""
    nodes = [helper.make_node("GlobalAveragePool", ["gray"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("MatMul", ["f", "w"], ["scores"])]
    graph = helper.make_graph(nodes, "gray", [helper.make_tensor_value_info("gray", TensorProto.FLOAT, [1, 1, 64, 64])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 2])], [_w("w", (1, 2), 8)])
    return _save(graph, path)


def uint8_input(path: Path) -> Path:
    """An image classifier that takes uint8 pixels (as some TF exports do), refused by name."""
    nodes = [helper.make_node("Cast", ["pixels"], ["x"], to=TensorProto.FLOAT),
             helper.make_node("GlobalAveragePool", ["x"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("MatMul", ["f", "w"], ["scores"])]
    graph = helper.make_graph(nodes, "u8", [helper.make_tensor_value_info("pixels", TensorProto.UINT8, [1, 3, 64, 64])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 2])], [_w("w", (3, 2), 9)])
    return _save(graph, path)


def dynamic_classes_pcb(path: Path) -> Path:
    """The real PCB classifier with its output reshaped through a computed shape: the class dimension is dynamic
    ([N, 'classes']) until the model runs, so only the reference run can check the label count."""
    model = _pcb()
    g = model.graph
    old = g.output[0].name
    g.node.extend([
        helper.make_node("Shape", [old], ["out_shape"]),
        helper.make_node("Slice", ["out_shape", "zero", "one"], ["batch"]),
        helper.make_node("Concat", ["batch", "minus_one"], ["new_shape"], axis=0),
        helper.make_node("Reshape", [old, "new_shape"], ["scores"]),
    ])
    g.initializer.extend([numpy_helper.from_array(np.array([v], np.int64), n)
                          for n, v in (("zero", 0), ("one", 1), ("minus_one", -1))])
    del g.output[:]
    g.output.extend([helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", "classes"])])
    onnx.save(model, str(path))
    return path


def one_score_pcb(path: Path) -> Path:
    """The real PCB classifier with its output cut to the first score ([N, 1]): a model file that no longer fits the
    two labels its bundle was exported with."""
    model = _pcb()
    g = model.graph
    name = g.output[0].name  # kept: the bundle's manifest names this output
    for node in g.node:
        node.output[:] = [f"{name}_all" if o == name else o for o in node.output]
    g.node.append(helper.make_node("Slice", [f"{name}_all", "start", "end", "axis"], [name]))
    g.initializer.extend([numpy_helper.from_array(np.array([v], np.int64), n)
                          for n, v in (("start", 0), ("end", 1), ("axis", 1))])
    del g.output[:]
    g.output.extend([helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", 1])])
    onnx.save(model, str(path))
    return path
