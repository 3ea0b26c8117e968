"""Small ONNX graphs for the executor self-tests (each exercises one supported op; a Flatten or Transpose feeds
2-D ops), and the helpers to run them through ONNX Runtime and through converter + package + reference executor."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from runtime.manifest import BatchInfo, Manifest, Provenance, Thresholds
from runtime.processing.spec import InputSpec, OutputSpec

I64_MAX = np.iinfo(np.int64).max
RNG = np.random.default_rng(7)


def manifest_for(input_name: str, shape: tuple, output: str = "y") -> Manifest:
    """A raw-output (detector-style) manifest: the converter passes the op's output straight through."""
    return Manifest(
        name="optest", version="1.0", task="detect", labels=["a"],
        input=InputSpec(name=input_name, shape=list(shape), color_order="RGB", resize="stretch"),
        output=OutputSpec(names=[output], decoder="yolox"), batch=BatchInfo(dynamic=False), thresholds=Thresholds(),
        files={}, provenance=Provenance(source_model="t.onnx", source_model_sha256="0" * 64, shadowline_version="0",
                                        onnx_version="0", onnxruntime_version="0", python_version="3",
                                        created_at="2026-01-01T00:00:00+00:00"))


@dataclass
class Case:
    id: str
    nodes: list
    inits: dict[str, np.ndarray] = field(default_factory=dict)
    opset: int = 13
    hw: tuple[int, int] = (8, 8)

    def model(self) -> onnx.ModelProto:
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, *self.hw])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
        inits = [numpy_helper.from_array(v, k) for k, v in self.inits.items()]
        g = helper.make_graph(self.nodes, self.id, [x], [y], initializer=inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", self.opset)])
        m.ir_version = 7 if self.opset < 15 else 8 if self.opset < 19 else 9 if self.opset < 21 else 10
        return m


def n(op: str, inputs: list[str], outputs: list[str] | None = None, **attrs) -> onnx.NodeProto:
    out = outputs or ["y"]
    return helper.make_node(op, inputs, out, name=f"{op.lower()}_under_test" + ("" if out == ["y"] else f"_{out[0]}"),
                            **attrs)


def w(*shape: int) -> np.ndarray:
    return RNG.normal(0, 0.5, shape).astype(np.float32)


def i64(*v: int) -> np.ndarray:
    return np.asarray(v, np.int64)


def f32(*v: float) -> np.ndarray:
    return np.asarray(v, np.float32)


def scalar(v: float) -> np.ndarray:
    return np.asarray(v, np.float32).reshape(())


CASES = [
    Case("conv_pad1", [n("Conv", ["x", "w", "b"], pads=[1, 1, 1, 1])], {"w": w(4, 3, 3, 3), "b": w(4)}),
    Case("conv_stride2_asym_pads", [n("Conv", ["x", "w"], strides=[2, 2], pads=[0, 1, 2, 0])], {"w": w(5, 3, 3, 3)},
         hw=(9, 10)),
    Case("conv_dilated", [n("Conv", ["x", "w"], dilations=[2, 2], pads=[2, 2, 2, 2])], {"w": w(2, 3, 3, 3)}),
    Case("conv_depthwise", [n("Conv", ["x", "w"], group=3, pads=[1, 1, 1, 1], strides=[2, 2])], {"w": w(6, 1, 3, 3)}),
    Case("conv_same_upper", [n("Conv", ["x", "w"], auto_pad="SAME_UPPER", strides=[2, 2])], {"w": w(2, 3, 4, 4)},
         hw=(9, 9)),
    Case("conv_same_lower", [n("Conv", ["x", "w"], auto_pad="SAME_LOWER", strides=[2, 2])], {"w": w(2, 3, 4, 4)},
         hw=(9, 9)),
    Case("conv_valid", [n("Conv", ["x", "w"], auto_pad="VALID", kernel_shape=[3, 2])], {"w": w(2, 3, 3, 2)}),
    Case("convtranspose_stride2_pads", [n("ConvTranspose", ["x", "w", "b"], strides=[2, 2], pads=[1, 1, 1, 1])],
         {"w": w(3, 4, 3, 3), "b": w(4)}),
    Case("convtranspose_groups_outpad", [n("ConvTranspose", ["x", "w"], strides=[2, 2], group=3,
                                           output_padding=[1, 1])], {"w": w(3, 2, 3, 3)}),
    Case("relu", [n("Relu", ["x"])]),
    Case("leakyrelu", [n("LeakyRelu", ["x"], alpha=0.2)]),
    Case("sigmoid", [n("Sigmoid", ["x"])]),
    Case("hardsigmoid", [n("HardSigmoid", ["x"], alpha=0.3, beta=0.4)]),
    Case("hardswish", [n("HardSwish", ["x"])], opset=14),
    Case("tanh", [n("Tanh", ["x"])]),
    Case("clip_inputs", [n("Clip", ["x", "lo", "hi"])], {"lo": scalar(-0.5), "hi": scalar(0.7)}),
    Case("clip_relu6", [n("Clip", ["x", "lo", "hi"])], {"lo": scalar(0), "hi": scalar(6)}),
    Case("clip_min_only", [n("Clip", ["x", "lo"])], {"lo": scalar(0.1)}),
    Case("clip_opset7_attrs", [n("Clip", ["x"], min=-0.2, max=0.3)], opset=7),
    Case("add_broadcast", [n("Add", ["x", "c"])], {"c": w(1, 3, 1, 1)}),
    Case("sub_self", [n("Relu", ["x"], ["r"]), n("Sub", ["x", "r"])]),
    Case("mul_broadcast", [n("Mul", ["x", "c"])], {"c": w(8)}),
    Case("div_const", [n("Div", ["x", "c"])], {"c": f32(2.0, -4.0, 0.5).reshape(1, 3, 1, 1)}),
    Case("matmul", [n("Flatten", ["x"], ["f"]), n("MatMul", ["f", "m"])], {"m": w(192, 5)}),
    Case("gemm_transB_alpha_beta", [n("Flatten", ["x"], ["f"]), n("Gemm", ["f", "m", "c"], transB=1, alpha=0.5,
                                                                    beta=2.0)], {"m": w(4, 192), "c": w(4)}),
    Case("gemm_transA", [n("Flatten", ["x"], ["f"]), n("Transpose", ["f"], ["t"]), n("Gemm", ["t", "m"], transA=1)],
         {"m": w(192, 3)}),
    Case("batchnorm", [n("BatchNormalization", ["x", "s", "b", "m", "v"], epsilon=1e-3)],
         {"s": w(3), "b": w(3), "m": w(3), "v": np.abs(w(3)) + 0.1}),
    Case("maxpool_basic", [n("MaxPool", ["x"], kernel_shape=[2, 2], strides=[2, 2])]),
    Case("maxpool_ceil_odd", [n("MaxPool", ["x"], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)], hw=(10, 11)),
    Case("maxpool_ceil_pads", [n("MaxPool", ["x"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                                 ceil_mode=1)], hw=(10, 10)),
    Case("maxpool_ceil_k2s3", [n("MaxPool", ["x"], kernel_shape=[2, 2], strides=[3, 3], ceil_mode=1)], hw=(10, 10)),
    Case("maxpool_same_upper", [n("MaxPool", ["x"], kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER")],
         hw=(9, 9)),
    Case("avgpool_same_lower", [n("AveragePool", ["x"], kernel_shape=[2, 2], strides=[2, 2], auto_pad="SAME_LOWER")],
         hw=(9, 9)),
    Case("avgpool_exclude_pad", [n("AveragePool", ["x"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])]),
    Case("avgpool_include_pad", [n("AveragePool", ["x"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                                   count_include_pad=1)]),
    Case("avgpool_ceil", [n("AveragePool", ["x"], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)], hw=(10, 10)),
    Case("avgpool_ceil_pads_include", [n("AveragePool", ["x"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                                         ceil_mode=1, count_include_pad=1)], hw=(10, 10)),
    Case("globalaveragepool", [n("GlobalAveragePool", ["x"])]),
    Case("globalmaxpool", [n("GlobalMaxPool", ["x"])]),
    Case("concat", [n("Relu", ["x"], ["r"]), n("Concat", ["x", "r"], axis=1)]),
    Case("concat_negative_axis", [n("Sigmoid", ["x"], ["r"]), n("Concat", ["x", "r"], axis=-1)]),
    Case("flatten_axis2", [n("Flatten", ["x"], axis=2)]),
    Case("reshape_zero_minus1", [n("Reshape", ["x", "s"])], {"s": i64(0, 3, -1, 4)}),
    Case("transpose", [n("Transpose", ["x"], perm=[0, 2, 3, 1])]),
    Case("squeeze_unsqueeze_13", [n("GlobalAveragePool", ["x"], ["g"]), n("Squeeze", ["g", "a"], ["s"]),
                                  n("Unsqueeze", ["s", "b"])], {"a": i64(2, 3), "b": i64(-1)}),
    Case("squeeze_unsqueeze_11", [n("GlobalAveragePool", ["x"], ["g"]), n("Squeeze", ["g"], ["s"], axes=[3]),
                                  n("Unsqueeze", ["s"], axes=[1])], opset=11),
    Case("slice_steps", [n("Slice", ["x", "st", "en", "ax", "sp"])],
         {"st": i64(0, 1), "en": i64(I64_MAX, I64_MAX), "ax": i64(2, 3), "sp": i64(2, 2)}),
    Case("slice_negative", [n("Slice", ["x", "st", "en", "ax"])], {"st": i64(-5, 1), "en": i64(-1, 2), "ax": i64(3, 1)},
         hw=(8, 9)),
    Case("slice_reverse", [n("Slice", ["x", "st", "en", "ax", "sp"])],
         {"st": i64(-1), "en": i64(-I64_MAX), "ax": i64(2), "sp": i64(-1)}),
    Case("slice_hw_asymmetric", [n("Slice", ["x", "st", "en", "ax"])], {"st": i64(1, 0), "en": i64(4, 6),
                                                                          "ax": i64(2, 3)}, hw=(7, 9)),
    Case("slice_opset9_attrs", [n("Slice", ["x"], starts=[1], ends=[5], axes=[3])], opset=9),
    Case("split_equal", [n("Split", ["x"], ["a", "b"], axis=2), n("Sub", ["a", "b"])]),
    Case("split_sizes_13", [n("Split", ["x", "sz"], ["a", "b"], axis=1), n("Concat", ["b", "a"], axis=1)],
         {"sz": i64(1, 2)}),
    Case("resize_nearest_asym", [n("Resize", ["x", "", "sc"], mode="nearest", nearest_mode="floor",
                                   coordinate_transformation_mode="asymmetric")], {"sc": f32(1, 1, 2, 2)}),
    Case("resize_nearest_halfpixel", [n("Resize", ["x", "", "sc"], mode="nearest")], {"sc": f32(1, 1, 3, 2)}),
    Case("resize_linear_halfpixel", [n("Resize", ["x", "", "sc"], mode="linear")], {"sc": f32(1, 1, 2, 2)}),
    Case("resize_linear_align", [n("Resize", ["x", "", "", "sz"], mode="linear",
                                   coordinate_transformation_mode="align_corners")], {"sz": i64(1, 3, 13, 5)}),
    Case("resize_linear_asym", [n("Resize", ["x", "", "sc"], mode="linear",
                                  coordinate_transformation_mode="asymmetric")], {"sc": f32(1, 1, 2, 3)}),
    Case("resize_opset11_nearest", [n("Resize", ["x", "roi", "sc"], mode="nearest", nearest_mode="floor",
                                      coordinate_transformation_mode="asymmetric")],
         {"roi": f32(), "sc": f32(1, 1, 2, 2)}, opset=11),
    Case("upsample_opset9", [n("Upsample", ["x", "sc"], mode="nearest")], {"sc": f32(1, 1, 2, 2)}, opset=9),
    Case("pad_constant", [n("Pad", ["x", "p", "v"])], {"p": i64(0, 0, 1, 2, 0, 0, 3, 0), "v": f32(1.5)}, opset=13),
    Case("pad_reflect", [n("Pad", ["x", "p"], mode="reflect")], {"p": i64(0, 0, 2, 1, 0, 0, 1, 2)}),
    Case("pad_edge", [n("Pad", ["x", "p"], mode="edge")], {"p": i64(0, 0, 1, 0, 0, 0, 0, 3)}),
    Case("pad_opset2_attrs", [n("Pad", ["x"], pads=[0, 0, 1, 1, 0, 0, 1, 1], value=-1.0)], opset=7),
    Case("softmax_opset11_axis1", [n("Softmax", ["x"], axis=1)], opset=11),
    Case("softmax_opset11_default", [n("Softmax", ["x"])], opset=11),
    Case("softmax_opset13_axis1", [n("Softmax", ["x"], axis=1)]),
    Case("reducemean_keepdims0", [n("ReduceMean", ["x"], axes=[2, 3], keepdims=0)]),
    Case("reducemean_opset18", [n("ReduceMean", ["x", "ax"])], {"ax": i64(1)}, opset=18),
    # ops of current CNNs and small transformers (issue 14.6)
    Case("cast_int_and_back", [n("Mul", ["x", "k"], ["m"]), n("Cast", ["m"], ["i"], to=TensorProto.INT64),
                               n("Cast", ["i"], to=TensorProto.FLOAT)], {"k": scalar(3.0)}),
    Case("cast_float_to_float", [n("Cast", ["x"], ["c"], to=TensorProto.DOUBLE), n("Cast", ["c"], to=TensorProto.FLOAT)]),
    Case("erf", [n("Erf", ["x"])]),
    Case("gelu_exact_decomposed", [n("Div", ["x", "r2"], ["d"]), n("Erf", ["d"], ["e"]), n("Add", ["e", "one"], ["p"]),
                                   n("Mul", ["x", "p"], ["q"]), n("Mul", ["q", "half"])],
         {"r2": scalar(float(np.sqrt(2.0))), "one": scalar(1.0), "half": scalar(0.5)}),
    Case("gelu_opset20", [n("Gelu", ["x"])], opset=20),
    Case("gelu_opset20_tanh", [n("Gelu", ["x"], approximate="tanh")], opset=20),
    Case("layernorm_last_axis", [n("LayerNormalization", ["x", "s", "b"], epsilon=1e-3)], {"s": w(8), "b": w(8)},
         opset=17),
    Case("layernorm_axis1_no_bias", [n("LayerNormalization", ["x", "s"], axis=1)], {"s": w(3, 8, 8)}, opset=17),
    Case("layernorm_decomposed_opset13", [n("ReduceMean", ["x"], ["mu"], axes=[-1]), n("Sub", ["x", "mu"], ["c"]),
                                          n("Pow", ["c", "two"], ["c2"]), n("ReduceMean", ["c2"], ["var"], axes=[-1]),
                                          n("Add", ["var", "eps"], ["ve"]), n("Sqrt", ["ve"], ["sd"]),
                                          n("Div", ["c", "sd"])], {"two": scalar(2.0), "eps": scalar(1e-5)}),
    Case("where_greater", [n("Greater", ["x", "t"], ["m"]), n("Mul", ["x", "k"], ["s"]), n("Where", ["m", "x", "s"])],
         {"t": scalar(0.3), "k": scalar(0.1)}),
    Case("where_const_mask", [n("Where", ["m", "x", "f"])],
         {"m": (RNG.random((1, 1, 8, 8)) > 0.5), "f": scalar(-3.0)}),
    Case("where_not_equal_less", [n("Less", ["x", "t"], ["l"]), n("Not", ["l"], ["nl"]), n("Equal", ["x", "x"], ["e"]),
                                  n("And", ["nl", "e"], ["m"]), n("Where", ["m", "x", "z"])],
         {"t": scalar(-0.2), "z": scalar(0.0)}),
    Case("expand_tile", [n("ReduceMean", ["x"], ["r"], axes=[2, 3]), n("Expand", ["r", "sh"])], {"sh": i64(1, 3, 8, 8)}),
    Case("expand_new_axis", [n("Expand", ["x", "sh"])], {"sh": i64(2, 1, 3, 8, 8)}),
    Case("matmul_batch_const", [n("MatMul", ["x", "m"])], {"m": w(8, 5)}),
    Case("matmul_batch_broadcast", [n("MatMul", ["x", "m"])], {"m": w(3, 8, 4)}),
    Case("matmul_attention", [n("Transpose", ["x"], ["t"], perm=[0, 1, 3, 2]), n("MatMul", ["x", "t"], ["s"]),
                              n("Softmax", ["s"], ["p"], axis=-1), n("MatMul", ["p", "x"])]),
    Case("gather_indices_axis1", [n("Gather", ["x", "i"], axis=1)], {"i": i64(2, 0)}),
    Case("gather_scalar_negative", [n("Gather", ["x", "i"], axis=3)], {"i": np.asarray(-1, np.int64)}),
    Case("pow_sqrt_exp_abs", [n("Abs", ["x"], ["a"]), n("Sqrt", ["a"], ["s"]), n("Pow", ["s", "e"], ["p"]),
                              n("Exp", ["p"], ["x2"]), n("Neg", ["x2"], ["ng"]), n("Reciprocal", ["ng"])],
         {"e": scalar(1.5)}),
    Case("reducesum_max_min", [n("ReduceSum", ["x", "ax"], ["s"], keepdims=1), n("ReduceMax", ["x"], ["m"], axes=[1]),
                               n("ReduceMin", ["x"], ["mn"], axes=[1]), n("Add", ["s", "m"], ["t"]),
                               n("Sub", ["t", "mn"])], {"ax": i64(1)}),
    Case("constant_identity_dropout", [helper.make_node("Constant", [], ["c"], name="const",
                                                        value=numpy_helper.from_array(w(1, 3, 1, 1))),
                                       n("Identity", ["x"], ["i"]), n("Dropout", ["i"], ["d"]),
                                       n("Add", ["d", "c"])]),
]

def shape_classifier(batch: int | str = 1, classes: int = 3) -> onnx.ModelProto:
    """Conv -> Relu -> GlobalAveragePool, then the flatten PyTorch exports for `x.view(x.size(0), -1)` (Shape,
    Gather, Unsqueeze, Concat, Reshape), a channel count read with Shape/Slice/Cast/Mul into a second Reshape, and
    a Gemm to logits."""
    rng = np.random.default_rng(11)
    inits = {"w": rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32),
             "fc": rng.normal(0, 0.3, (classes, 8)).astype(np.float32),
             "zero": np.asarray(0, np.int64), "minus1": np.asarray([-1], np.int64),
             "one_i": np.asarray([1], np.int64), "two_i": np.asarray([2], np.int64), "axes0": np.asarray([0], np.int64)}
    nodes = [
        helper.make_node("Conv", ["data", "w"], ["c"], name="conv", strides=[4, 4], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
        helper.make_node("Shape", ["g"], ["g_shape"], name="shape_g"),
        helper.make_node("Gather", ["g_shape", "zero"], ["n"], name="batch_dim"),
        helper.make_node("Unsqueeze", ["n", "axes0"], ["n1"], name="unsqueeze_n"),
        helper.make_node("Concat", ["n1", "minus1"], ["flat_shape"], name="concat_shape", axis=0),
        helper.make_node("Reshape", ["g", "flat_shape"], ["f"], name="flatten"),
        # the channel count, read back from the flattened tensor and used as a shape: [N, C] again
        helper.make_node("Shape", ["f"], ["f_shape"], name="shape_f"),
        helper.make_node("Slice", ["f_shape", "one_i", "two_i"], ["ch"], name="channels"),
        helper.make_node("Cast", ["ch"], ["ch_f"], name="cast_ch", to=TensorProto.FLOAT),
        helper.make_node("Cast", ["ch_f"], ["ch_i"], name="cast_back", to=TensorProto.INT64),
        helper.make_node("Concat", ["minus1", "ch_i"], ["nc_shape"], name="concat_nc", axis=0),
        helper.make_node("Reshape", ["f", "nc_shape"], ["f2"], name="reshape_nc"),
        helper.make_node("Gemm", ["f2", "fc"], ["logits"], name="fc", transB=1),
    ]
    x = helper.make_tensor_value_info("data", TensorProto.FLOAT, [batch, 3, 64, 64])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes])
    m = helper.make_model(helper.make_graph(nodes, "shape_classifier", [x], [y],
                                            initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()]),
                          opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m


SUPPORTED = {"Conv", "ConvTranspose", "Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Clip",
             "Add", "Sub", "Mul", "Div", "MatMul", "Gemm", "BatchNormalization", "MaxPool", "AveragePool",
             "GlobalAveragePool", "GlobalMaxPool", "Concat", "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze",
             "Slice", "Split", "Resize", "Upsample", "Pad", "Softmax", "ReduceMean", "Constant", "Identity", "Dropout",
             "Cast", "Erf", "Gelu", "LayerNormalization", "Where", "Expand", "Gather", "Greater", "Less", "Equal", "Not",
             "And", "Pow", "Sqrt", "Exp", "Abs", "Neg", "Reciprocal", "ReduceSum", "ReduceMax", "ReduceMin"}


def run_onnxruntime(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(["y"], {"x": x})[0]


def run_coreml(model: onnx.ModelProto, x: np.ndarray, workdir: Path, precision: str = "fp32",
               bugs: frozenset[str] = frozenset()) -> np.ndarray:
    """Convert, save the package, load it back and evaluate it with the reference executor."""
    from export.coreml.converter import convert
    from export.coreml.executor import Executor, load_program
    from export.coreml.package import save_package

    path = workdir / "model.onnx"
    onnx.save(model, str(path))
    converted = convert(path, manifest_for("x", x.shape), precision, bugs=bugs)
    package = workdir / "op.mlpackage"
    save_package(converted.model, package)
    _, prog = load_program(package)
    return np.asarray(Executor(prog).run({"image": x})[converted.compared_var], np.float32)
