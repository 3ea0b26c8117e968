"""Element-wise math, comparisons and selection: the ops of small transformers and current CNN heads (Cast, Erf,
Gelu, Where, Pow, Sqrt, ...)."""

from __future__ import annotations

import numpy as np

from export.coreml.graph import Attrs, Graph
from export.coreml.ops.registry import converts
from runtime.errors import ConversionError

# ONNX TensorProto data types -> MIL cast dtypes. Core ML (iOS 15) computes in fp16/fp32/int32/bool only, so wider
# and narrower integers become int32 and DOUBLE becomes fp32.
CAST_TO = {1: "fp32", 11: "fp32", 10: "fp16", 6: "int32", 7: "int32", 5: "int32", 3: "int32", 2: "int32",
           4: "int32", 12: "int32", 9: "bool"}
NUMPY_CAST = {1: np.float32, 11: np.float64, 10: np.float16, 6: np.int32, 7: np.int64, 5: np.int16, 3: np.int8,
              2: np.uint8, 4: np.uint16, 12: np.uint32, 9: np.bool_}


def _mb():
    from coremltools.converters.mil import Builder as mb
    return mb


@converts("Cast")
def cast(g: Graph, node, a: Attrs) -> None:
    to = int(a.get("to"))
    a.get("saturate")  # only affects float8 targets, which are refused below
    if to not in CAST_TO:
        raise a.unsupported("to", "Core ML casts to float16, float32, int32 and bool")
    x = g.get(node, 0)
    if isinstance(x, np.ndarray):
        g.set(node.output[0], x.astype(NUMPY_CAST[to]))
        return
    g.set(node.output[0], _mb().cast(x=x, dtype=CAST_TO[to], name=node.output[0]))


_UNARY = {"Erf": "erf", "Sqrt": "sqrt", "Exp": "exp", "Abs": "abs", "Floor": "floor", "Ceil": "ceil",
          "Sign": "sign"}


@converts(*_UNARY)
def unary(g: Graph, node, a: Attrs) -> None:
    mb = _mb()
    g.set(node.output[0], getattr(mb, _UNARY[node.op_type])(x=g.var(node, 0), name=node.output[0]))


@converts("Log")
def log(g: Graph, node, a: Attrs) -> None:
    # MIL's log adds epsilon (default 1e-45) before the logarithm; 0 keeps ONNX's log(0) = -inf
    g.set(node.output[0], _mb().log(x=g.var(node, 0), epsilon=np.float32(0.0), name=node.output[0]))


@converts("Neg")
def neg(g: Graph, node, a: Attrs) -> None:
    g.set(node.output[0], _mb().mul(x=g.var(node, 0), y=np.float32(-1.0), name=node.output[0]))


@converts("Reciprocal")
def reciprocal(g: Graph, node, a: Attrs) -> None:
    # real_div rather than MIL's inverse, which adds an epsilon (1e-4 by default) to the divisor
    g.set(node.output[0], _mb().real_div(x=np.float32(1.0), y=g.var(node, 0), name=node.output[0]))


@converts("Pow")
def pow_(g: Graph, node, a: Attrs) -> None:
    mb = _mb()
    exponent = g.get(node, 1)
    if isinstance(exponent, np.ndarray) and exponent.size == 1 and float(exponent.reshape(-1)[0]) == 2.0:
        x = g.var(node, 0)  # x*x: exact, and defined for negative x where pow's float path is not
        g.set(node.output[0], mb.mul(x=x, y=x, name=node.output[0]))
        return
    y = exponent.astype(np.float32) if isinstance(exponent, np.ndarray) else exponent
    g.set(node.output[0], mb.pow(x=g.var(node, 0), y=y, name=node.output[0]))


@converts("Gelu")
def gelu(g: Graph, node, a: Attrs) -> None:
    approximate = a.get("approximate", "none")
    mode = {"none": "EXACT", "tanh": "TANH_APPROXIMATION"}.get(approximate)
    if mode is None:
        raise a.unsupported("approximate", "expected none or tanh")
    g.set(node.output[0], _mb().gelu(x=g.var(node, 0), mode=mode, name=node.output[0]))


_COMPARE = {"Equal": "equal", "Greater": "greater", "Less": "less", "GreaterOrEqual": "greater_equal",
            "LessOrEqual": "less_equal"}
_LOGICAL = {"And": "logical_and", "Or": "logical_or", "Xor": "logical_xor"}
_NUMPY = {"Equal": np.equal, "Greater": np.greater, "Less": np.less, "GreaterOrEqual": np.greater_equal,
          "LessOrEqual": np.less_equal, "And": np.logical_and, "Or": np.logical_or, "Xor": np.logical_xor}


@converts(*_COMPARE, *_LOGICAL)
def compare(g: Graph, node, a: Attrs) -> None:
    x, y = g.get(node, 0), g.get(node, 1)
    if isinstance(x, np.ndarray) and isinstance(y, np.ndarray):
        g.set(node.output[0], _NUMPY[node.op_type](x, y))
        return
    mb = _mb()
    fn = getattr(mb, {**_COMPARE, **_LOGICAL}[node.op_type])
    as_float = (lambda v: v.astype(np.float32) if isinstance(v, np.ndarray) and v.dtype.kind == "f" else v)  # noqa: E731
    g.set(node.output[0], fn(x=as_float(x), y=as_float(y), name=node.output[0]))


@converts("Not")
def not_(g: Graph, node, a: Attrs) -> None:
    x = g.get(node, 0)
    if isinstance(x, np.ndarray):
        g.set(node.output[0], np.logical_not(x))
        return
    g.set(node.output[0], _mb().logical_not(x=x, name=node.output[0]))


@converts("Where")
def where(g: Graph, node, a: Attrs) -> None:
    cond, x, y = g.get(node, 0), g.get(node, 1), g.get(node, 2)
    if all(isinstance(v, np.ndarray) for v in (cond, x, y)):
        g.set(node.output[0], np.where(cond, x, y))
        return
    if isinstance(cond, np.ndarray) and cond.dtype != np.bool_:
        raise ConversionError(f"Where node {node.name!r}: condition must be bool, got {cond.dtype}")
    g.set(node.output[0], _mb().select(cond=g.var(node, 0), a=g.var(node, 1), b=g.var(node, 2),
                                       name=node.output[0]))
