"""Add, Sub, Mul, Div, MatMul (batched, broadcasting), Gemm, BatchNormalization, LayerNormalization."""

from __future__ import annotations

import numpy as np

from export.coreml.graph import Attrs, Graph, is_static, shape_of
from export.coreml.ops.registry import converts
from runtime.errors import ConversionError

_NUMPY = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide}


def _mb():
    from coremltools.converters.mil import Builder as mb
    return mb


@converts("Add", "Sub", "Mul", "Div")
def binary(g: Graph, node, a: Attrs) -> None:
    if g.opset < 7 and a.has("broadcast"):
        raise a.unsupported("broadcast", "legacy (opset < 7) broadcasting is not supported")
    x, y = g.get(node, 0), g.get(node, 1)
    if isinstance(x, np.ndarray) and isinstance(y, np.ndarray):
        g.set(node.output[0], _NUMPY[node.op_type](x, y).astype(np.result_type(x, y)))
        return
    mb = _mb()
    fn = {"Add": mb.add, "Sub": mb.sub, "Mul": mb.mul, "Div": mb.real_div}[node.op_type]
    as_float = (lambda v: v.astype(np.float32) if isinstance(v, np.ndarray) else v)  # noqa: E731
    g.set(node.output[0], fn(x=as_float(x), y=as_float(y), name=node.output[0]))


@converts("MatMul")
def matmul(g: Graph, node, a: Attrs) -> None:
    mb = _mb()
    g.set(node.output[0], mb.matmul(x=g.var(node, 0), y=g.var(node, 1), name=node.output[0]))


@converts("Gemm")
def gemm(g: Graph, node, a: Attrs) -> None:
    """y = alpha * A' B' + beta * C; a constant B with transA=0 becomes one `linear` op."""
    mb = _mb()
    alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
    trans_a, trans_b = bool(a.get("transA", 0)), bool(a.get("transB", 0))
    if g.opset < 7 and a.has("broadcast"):
        a.get("broadcast")
    x = g.var(node, 0)
    if len(shape_of(x)) != 2:
        raise ConversionError(f"Gemm node {node.name!r}: input A must be 2-D, got shape {shape_of(x)}")
    b = g.get(node, 1)
    c = g.get(node, 2)
    if isinstance(b, np.ndarray) and not trans_a and (c is None or isinstance(c, np.ndarray)):
        weight = (b if trans_b else b.T).astype(np.float32) * alpha
        bias = np.zeros(weight.shape[0], np.float32) if c is None else \
            np.broadcast_to(np.asarray(c, np.float32) * beta, (weight.shape[0],)).copy()
        g.set(node.output[0], mb.linear(x=x, weight=weight, bias=bias, name=node.output[0]))
        return
    y = mb.matmul(x=x, y=g.var(node, 1), transpose_x=trans_a, transpose_y=trans_b)
    if alpha != 1.0:
        y = mb.mul(x=y, y=np.float32(alpha))
    if c is not None:
        cv = c.astype(np.float32) * beta if isinstance(c, np.ndarray) else mb.mul(x=c, y=np.float32(beta))
        y = mb.add(x=y, y=cv)
    g.set(node.output[0], mb.identity(x=y, name=node.output[0]))


@converts("BatchNormalization")
def batch_norm(g: Graph, node, a: Attrs) -> None:
    mb = _mb()
    if int(a.get("training_mode", 0)) or any(g.used(node, i) for i in (1, 2, 3, 4)):
        raise a.unsupported("training_mode", "only inference-mode BatchNormalization is supported")
    if g.opset < 7:
        a.get("is_test")
        a.get("consumed_inputs")
    a.get("momentum")  # only used in training
    a.get("spatial")
    if a.values.get("spatial", 1) != 1:
        raise a.unsupported("spatial", "only spatial=1 is supported")
    params = [g.required(node, i, n) for i, n in ((1, "scale"), (2, "B"), (3, "mean"), (4, "var"))]
    scale, bias, mean, var = (p.astype(np.float32) for p in params)
    g.set(node.output[0], mb.batch_norm(x=g.var(node, 0), mean=mean, variance=var, gamma=scale, beta=bias,
                                        epsilon=float(a.get("epsilon", 1e-5)), name=node.output[0]))


@converts("LayerNormalization")
def layer_norm(g: Graph, node, a: Attrs) -> None:
    """Normalise over the axes from `axis` to the last; Scale and B broadcast to those axes (Core ML wants them in
    exactly that shape)."""
    mb = _mb()
    x = g.var(node, 0)
    shape = shape_of(x)
    rank = len(shape)
    axis = int(a.get("axis", -1))
    axis = axis + rank if axis < 0 else axis
    if not 0 <= axis < rank:
        raise a.unsupported("axis", f"outside the input's rank {rank}")
    a.get("stash_type")  # Core ML computes the statistics in the op's own precision
    if any(g.used(node, i) for i in (1, 2)):
        raise ConversionError(f"unsupported output: LayerNormalization node {node.name!r} Mean/InvStdDev are used")
    normalized = shape[axis:]
    if not all(is_static(d) for d in normalized):
        raise ConversionError(f"LayerNormalization node {node.name!r}: the normalised axes {normalized} must be "
                              "static")
    target = tuple(int(d) for d in normalized)
    scale = g.required(node, 1, "scale")
    bias = g.const(node, 2, "B")
    kw = dict(x=x, axes=list(range(axis, rank)), gamma=np.broadcast_to(scale.astype(np.float32), target).copy(),
              epsilon=float(a.get("epsilon", 1e-5)), name=node.output[0])
    if bias is not None:
        kw["beta"] = np.broadcast_to(bias.astype(np.float32), target).copy()
    g.set(node.output[0], mb.layer_norm(**kw))
