"""Activations and Softmax."""

from __future__ import annotations

import numpy as np

from export.coreml.graph import Attrs, Graph, is_static, shape_of
from export.coreml.ops.registry import converts
from runtime.errors import ConversionError


def _mb():
    from coremltools.converters.mil import Builder as mb
    return mb


@converts("Relu", "Sigmoid", "Tanh")
def unary(g: Graph, node, a: Attrs) -> None:
    fn = {"Relu": _mb().relu, "Sigmoid": _mb().sigmoid, "Tanh": _mb().tanh}[node.op_type]
    g.set(node.output[0], fn(x=g.var(node, 0), name=node.output[0]))


@converts("LeakyRelu")
def leaky_relu(g: Graph, node, a: Attrs) -> None:
    g.set(node.output[0], _mb().leaky_relu(x=g.var(node, 0), alpha=float(a.get("alpha", 0.01)), name=node.output[0]))


@converts("HardSigmoid")
def hard_sigmoid(g: Graph, node, a: Attrs) -> None:
    g.set(node.output[0], _mb().sigmoid_hard(x=g.var(node, 0), alpha=float(a.get("alpha", 0.2)),
                                             beta=float(a.get("beta", 0.5)), name=node.output[0]))


@converts("HardSwish")
def hard_swish(g: Graph, node, a: Attrs) -> None:
    mb = _mb()
    x = g.var(node, 0)
    gate = mb.sigmoid_hard(x=x, alpha=1.0 / 6.0, beta=0.5)
    g.set(node.output[0], mb.mul(x=x, y=gate, name=node.output[0]))


@converts("Clip")
def clip(g: Graph, node, a: Attrs) -> None:
    mb = _mb()
    if g.opset < 11:
        lo, hi = a.get("min"), a.get("max")
    else:
        lo_c, hi_c = g.const(node, 1, "min"), g.const(node, 2, "max")
        lo = None if lo_c is None else float(lo_c)
        hi = None if hi_c is None else float(hi_c)
    x = g.var(node, 0)
    if lo == 0.0 and hi is None:
        out = mb.relu(x=x, name=node.output[0])
    elif lo == 0.0 and hi == 6.0:
        out = mb.relu6(x=x, name=node.output[0])
    else:
        # float32 max rather than inf: inf is not representable as a Core ML const parameter of clip
        fmax = float(np.finfo(np.float32).max)
        out = mb.clip(x=x, alpha=-fmax if lo is None else float(lo), beta=fmax if hi is None else float(hi),
                      name=node.output[0])
    g.set(node.output[0], out)


@converts("Softmax")
def softmax(g: Graph, node, a: Attrs) -> None:
    """Before opset 13 Softmax flattens the input to 2-D at `axis` (default 1) and normalises over everything from
    `axis` on; from opset 13 it normalises over the single `axis` (default -1)."""
    mb = _mb()
    x = g.var(node, 0)
    shape = shape_of(x)
    rank = len(shape)
    a.get("axis")
    if "drop_softmax" in g.bugs:
        g.set(node.output[0], mb.identity(x=x, name=node.output[0]))
        return
    legacy = g.opset < 13 and "softmax_axis_opset13" not in g.bugs
    axis = int(a.get("axis", 1 if legacy else -1))
    axis = axis + rank if axis < 0 else axis
    if not 0 <= axis < rank:
        raise a.unsupported("axis", f"outside the input's rank {rank}")
    if not legacy or axis == rank - 1:
        g.set(node.output[0], mb.softmax(x=x, axis=axis, name=node.output[0]))
        return
    tail = shape[axis:]
    if not all(is_static(d) for d in tail):
        raise ConversionError(f"Softmax node {node.name!r}: legacy axis semantics need static dims after axis")
    flat = mb.reshape(x=x, shape=[*(d if is_static(d) else -1 for d in shape[:axis]), int(np.prod(tail))])
    y = mb.softmax(x=flat, axis=axis)
    g.set(node.output[0], mb.reshape(x=y, shape=[d if is_static(d) else -1 for d in shape], name=node.output[0]))
