"""MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool, ReduceMean, ReduceSum, ReduceMax, ReduceMin."""

from __future__ import annotations

from export.coreml.graph import Attrs, Graph, shape_of
from export.coreml.ops.conv import spatial_pads
from export.coreml.ops.registry import converts
from runtime.errors import ConversionError


def _mb():
    from coremltools.converters.mil import Builder as mb
    return mb


@converts("MaxPool", "AveragePool")
def pool(g: Graph, node, a: Attrs) -> None:
    mb = _mb()
    x = g.var(node, 0)
    if len(shape_of(x)) != 4:
        raise ConversionError(f"{node.op_type} node {node.name!r}: only 2-D pooling (NCHW) is supported")
    if g.used(node, 1):
        raise ConversionError(f"unsupported output: {node.op_type} node {node.name!r} output 'Indices'")
    kernel = [int(k) for k in a.get("kernel_shape")]
    strides = [int(s) for s in a.get("strides", [1, 1])]
    if any(int(d) != 1 for d in a.get("dilations", [1, 1])):
        raise a.unsupported("dilations", "Core ML pooling has no dilation")
    if int(a.get("storage_order", 0)) != 0:
        raise a.unsupported("storage_order", "only row-major indices are supported")
    pad_type, pad = spatial_pads(a, 2, shape_of(x)[2:], kernel, strides, [1, 1])
    ceil_mode = bool(a.get("ceil_mode", 0)) and "ignore_ceil_mode" not in g.bugs
    common = dict(x=x, kernel_sizes=kernel, strides=strides, pad_type=pad_type, pad=pad, ceil_mode=ceil_mode,
                  name=node.output[0])
    if node.op_type == "MaxPool":
        out = mb.max_pool(**common)
    else:
        out = mb.avg_pool(**common, exclude_padding_from_average=not bool(a.get("count_include_pad", 0)))
    g.set(node.output[0], out)


@converts("GlobalAveragePool", "GlobalMaxPool")
def global_pool(g: Graph, node, a: Attrs) -> None:
    mb = _mb()
    x = g.var(node, 0)
    axes = list(range(2, len(shape_of(x))))
    fn = mb.reduce_mean if node.op_type == "GlobalAveragePool" else mb.reduce_max
    g.set(node.output[0], fn(x=x, axes=axes, keep_dims=True, name=node.output[0]))


_REDUCE = {"ReduceMean": "reduce_mean", "ReduceSum": "reduce_sum", "ReduceMax": "reduce_max",
           "ReduceMin": "reduce_min"}


@converts(*_REDUCE)
def reduce(g: Graph, node, a: Attrs) -> None:
    """axes are an attribute before opset 18 (ReduceSum: before 13) and an input after."""
    mb = _mb()
    x = g.var(node, 0)
    rank = len(shape_of(x))
    fn = getattr(mb, _REDUCE[node.op_type])
    if g.opset >= 18 or (node.op_type == "ReduceSum" and g.opset >= 13):
        axes_c = g.const(node, 1, "axes")
        axes = None if axes_c is None else [int(v) for v in axes_c.reshape(-1)]
        if not axes and int(a.get("noop_with_empty_axes", 0)):
            g.set(node.output[0], mb.identity(x=x, name=node.output[0]))
            return
    else:
        axes = a.get("axes")
    axes = list(range(rank)) if not axes else [int(v) + rank if int(v) < 0 else int(v) for v in axes]
    g.set(node.output[0], fn(x=x, axes=axes, keep_dims=bool(a.get("keepdims", 1)), name=node.output[0]))
