"""Tensor layout ops: Concat, Flatten, Reshape, Transpose, Squeeze, Unsqueeze, Slice, Split, Pad, Expand, Gather,
and the ops that vanish (Constant, Identity, Dropout)."""

from __future__ import annotations

from typing import Any

import numpy as np

from export.coreml.graph import Attrs, Graph, is_static, shape_of
from export.coreml.ops.registry import converts
from runtime.errors import ConversionError


def _mb():
    from coremltools.converters.mil import Builder as mb
    return mb


def _axis(axis: int, rank: int, a: Attrs, name: str = "axis") -> int:
    axis = int(axis) + rank if int(axis) < 0 else int(axis)
    if not 0 <= axis < rank:
        raise a.unsupported(name, f"outside the input's rank {rank}")
    return axis


@converts("Constant")
def constant(g: Graph, node, a: Attrs) -> None:
    import onnx

    if not a.has("value"):
        raise a.unsupported(next(iter(a.values), "value"), "only the 'value' form of Constant is supported")
    tensor = a.get("value")
    g.set(node.output[0], onnx.numpy_helper.to_array(tensor))


@converts("Identity", "Dropout")
def passthrough(g: Graph, node, a: Attrs) -> None:
    if node.op_type == "Dropout":
        a.get("ratio")
        a.get("seed")
        a.get("is_test")
        if g.used(node, 1):
            raise ConversionError(f"unsupported output: Dropout node {node.name!r} output 'mask' is used")
    g.set(node.output[0], g.get(node, 0))


@converts("Concat")
def concat(g: Graph, node, a: Attrs) -> None:
    values = [g.get(node, i) for i in range(len(node.input))]
    rank = len(shape_of(values[0]))
    axis = _axis(a.get("axis"), rank, a)
    if all(isinstance(v, np.ndarray) for v in values):
        g.set(node.output[0], np.concatenate(values, axis=axis))
        return
    g.set(node.output[0], _mb().concat(values=[g.var(node, i) for i in range(len(node.input))], axis=axis,
                                       name=node.output[0]))


def _reshape_target(shape: tuple, target: list[int]) -> list[int]:
    """ONNX 0 copies the input dim; a dynamic copied dim becomes -1 (Core ML allows one -1). [0, -1] on an input
    whose only dynamic dim is the one copied (a flatten keeping the batch) is [-1, static volume / known dims]."""
    out = [int(shape[i]) if t == 0 and is_static(shape[i]) else (-1 if t == 0 else int(t))
           for i, t in enumerate(target)]
    if out.count(-1) <= 1:
        return out
    dynamic = [i for i, d in enumerate(shape) if not is_static(d)]
    copied = [i for i, t in enumerate(target) if t == 0 and i < len(shape) and not is_static(shape[i])]
    if len(dynamic) == 1 and copied == dynamic and target.count(-1) == 1:
        volume = int(np.prod([int(d) for d in shape if is_static(d)]))
        known = int(np.prod([v for i, v in enumerate(out) if v != -1]))
        if known and volume % known == 0:
            return [-1 if i in copied else (volume // known if t == -1 else v)
                    for i, (t, v) in enumerate(zip(target, out))]
    raise ConversionError(f"reshape to {target} from {shape}: more than one unknown dimension")


@converts("Flatten")
def flatten(g: Graph, node, a: Attrs) -> None:
    x = g.var(node, 0)
    shape = shape_of(x)
    axis = int(a.get("axis", 1))
    axis = axis + len(shape) if axis < 0 else axis
    head, tail = shape[:axis], shape[axis:]
    size = lambda dims: int(np.prod(dims)) if all(is_static(d) for d in dims) else -1  # noqa: E731
    target = [size(head), size(tail)]
    if target.count(-1) > 1:
        raise ConversionError(f"Flatten node {node.name!r}: dynamic dimensions on both sides of axis {axis}")
    g.set(node.output[0], _mb().reshape(x=x, shape=target, name=node.output[0]))


@converts("Reshape")
def reshape(g: Graph, node, a: Attrs) -> None:
    if int(a.get("allowzero", 0)):
        raise a.unsupported("allowzero", "a literal 0 dimension is not supported")
    target = a.get("shape") if g.opset < 5 else g.const(node, 1, "shape")
    x = g.get(node, 0)
    target = [int(t) for t in np.asarray(target).reshape(-1)]
    if isinstance(x, np.ndarray):
        g.set(node.output[0], x.reshape([x.shape[i] if t == 0 else t for i, t in enumerate(target)]))
        return
    g.set(node.output[0], _mb().reshape(x=x, shape=_reshape_target(shape_of(x), target), name=node.output[0]))


@converts("Transpose")
def transpose(g: Graph, node, a: Attrs) -> None:
    x = g.var(node, 0)
    perm = a.get("perm") or list(reversed(range(len(shape_of(x)))))
    g.set(node.output[0], _mb().transpose(x=x, perm=[int(p) for p in perm], name=node.output[0]))


def _axes(g: Graph, node, a: Attrs, rank: int) -> list[int] | None:
    axes = g.const(node, 1, "axes") if g.opset >= 13 else a.get("axes")
    if axes is None:
        return None
    return [int(v) + rank if int(v) < 0 else int(v) for v in np.asarray(axes).reshape(-1)]


@converts("Squeeze")
def squeeze(g: Graph, node, a: Attrs) -> None:
    x = g.get(node, 0)
    shape = shape_of(x)
    axes = _axes(g, node, a, len(shape))
    if axes is None:
        axes = [i for i, d in enumerate(shape) if is_static(d) and d == 1]
    if isinstance(x, np.ndarray):
        g.set(node.output[0], np.squeeze(x, axis=tuple(axes)))
        return
    g.set(node.output[0], _mb().squeeze(x=x, axes=axes, name=node.output[0]))


@converts("Unsqueeze")
def unsqueeze(g: Graph, node, a: Attrs) -> None:
    x = g.get(node, 0)
    raw = g.const(node, 1, "axes") if g.opset >= 13 else a.get("axes")
    if raw is None:
        raise ConversionError(f"Unsqueeze node {node.name!r}: axes are required")
    raw = [int(v) for v in np.asarray(raw).reshape(-1)]
    out_rank = len(shape_of(x)) + len(raw)  # negative axes count in the output's rank
    axes = sorted(v + out_rank if v < 0 else v for v in raw)
    if isinstance(x, np.ndarray):
        g.set(node.output[0], np.expand_dims(x, axis=tuple(axes)))
        return
    g.set(node.output[0], _mb().expand_dims(x=x, axes=axes, name=node.output[0]))


@converts("Slice")
def slice_(g: Graph, node, a: Attrs) -> None:
    x = g.var(node, 0)
    shape = shape_of(x)
    rank = len(shape)
    raw: list[Any]
    if g.opset < 10:
        raw = [a.get("starts"), a.get("ends"), a.get("axes"), None]
    else:
        raw = [g.const(node, 1, "starts"), g.const(node, 2, "ends"), g.const(node, 3, "axes"),
               g.const(node, 4, "steps")]
    ints = lambda v: [int(x) for x in np.asarray(v).reshape(-1)]  # noqa: E731
    starts, ends = ints(raw[0]), ints(raw[1])
    axes = list(range(len(starts))) if raw[2] is None else [v + rank if v < 0 else v for v in ints(raw[2])]
    steps = [1] * len(starts) if raw[3] is None else ints(raw[3])
    if "slice_swap_hw" in g.bugs and rank == 4:
        axes = [{2: 3, 3: 2}.get(ax, ax) for ax in axes]
    begin, end, stride = [0] * rank, [0] * rank, [1] * rank
    begin_mask, end_mask = [True] * rank, [True] * rank
    for s, e, ax, st in zip(starts, ends, axes, steps):
        if st == 0:
            raise ConversionError(f"Slice node {node.name!r}: step 0 on axis {ax}")
        dim = shape[ax]
        if not is_static(dim):
            raise ConversionError(f"Slice node {node.name!r}: slicing the dynamic axis {ax} is not supported")
        dim = int(dim)
        # ONNX clamps: starts to [0, dim] (or [0, dim-1] for negative steps), ends to [-1, dim]
        s = s + dim if s < 0 else s
        e = e + dim if e < 0 else e
        if st > 0:
            s, e = min(max(s, 0), dim), min(max(e, 0), dim)
        else:
            s, e = min(max(s, 0), dim - 1), min(max(e, -1), dim - 1)
        begin[ax], stride[ax], begin_mask[ax] = s, st, False
        if e == -1:
            end[ax] = 0  # "up to and including index 0" has no index form: keep the end mask
        else:
            end[ax], end_mask[ax] = e, False
    g.set(node.output[0], _mb().slice_by_index(x=x, begin=begin, end=end, stride=stride, begin_mask=begin_mask,
                                               end_mask=end_mask, name=node.output[0]))


@converts("Split")
def split(g: Graph, node, a: Attrs) -> None:
    x = g.var(node, 0)
    shape = shape_of(x)
    axis = _axis(a.get("axis", 0), len(shape), a)
    sizes = g.const(node, 1, "split") if g.opset >= 13 else a.get("split")
    n = len(node.output)
    if g.opset >= 18:
        a.get("num_outputs")
    mb = _mb()
    if sizes is not None:
        outs = mb.split(x=x, split_sizes=[int(s) for s in np.asarray(sizes).reshape(-1)], axis=axis)
    else:
        if not is_static(shape[axis]) or int(shape[axis]) % n:
            raise ConversionError(f"Split node {node.name!r}: axis {axis} of size {shape[axis]} does not split "
                                  f"evenly into {n}")
        outs = mb.split(x=x, num_splits=n, axis=axis)
    outs = outs if isinstance(outs, (list, tuple)) else [outs]
    for name, out in zip(node.output, outs):
        g.set(name, out)


@converts("Pad")
def pad(g: Graph, node, a: Attrs) -> None:
    x = g.var(node, 0)
    rank = len(shape_of(x))
    mode = a.get("mode", "constant")
    if g.opset < 11:
        pads, value = a.get("pads") or a.get("paddings"), float(a.get("value", 0.0))
    else:
        pads = g.const(node, 1, "pads")
        v = g.const(node, 2, "constant_value")
        value = 0.0 if v is None else float(np.asarray(v).reshape(-1)[0])
        if g.opset >= 18 and g.get(node, 3) is not None:
            raise ConversionError(f"unsupported input: Pad node {node.name!r} input 3 (axes)")
    pads = [int(p) for p in np.asarray(pads).reshape(-1)]
    if any(p < 0 for p in pads):
        raise ConversionError(f"unsupported input: Pad node {node.name!r} negative pads {pads} (cropping)")
    mil_mode = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}.get(mode)
    if mil_mode is None:
        raise a.unsupported("mode", "expected constant, reflect or edge")
    pairs = [(pads[i], pads[i + rank]) for i in range(rank)]
    first = next((i for i, p in enumerate(pairs) if p != (0, 0)), rank)
    if mil_mode != "constant" and first < rank - 2:
        raise a.unsupported("mode", f"{mode} padding is only supported on the last two axes, pads={pads}")
    flat = [v for p in pairs[first:] for v in p] or [0, 0]
    g.set(node.output[0], _mb().pad(x=x, pad=flat, mode=mil_mode, constant_val=value, name=node.output[0]))


@converts("Expand")
def expand(g: Graph, node, a: Attrs) -> None:
    """Broadcast to a constant shape: leading axes added, then each size-1 axis tiled."""
    mb = _mb()
    x = g.var(node, 0)
    target = [int(v) for v in g.required(node, 1, "shape").reshape(-1)]
    shape = list(shape_of(x))
    rank = max(len(shape), len(target))
    shape = [1] * (rank - len(shape)) + shape
    target = [1] * (rank - len(target)) + target
    reps = []
    for i, (have, want) in enumerate(zip(shape, target)):
        if want == 1 or (is_static(have) and int(have) == want):
            reps.append(1)
        elif is_static(have) and int(have) == 1:
            reps.append(want)
        else:
            raise ConversionError(f"Expand node {node.name!r}: axis {i} of size {have} cannot broadcast to {want}")
    if rank > len(shape_of(x)):
        x = mb.expand_dims(x=x, axes=list(range(rank - len(shape_of(x)))))
    g.set(node.output[0], mb.tile(x=x, reps=reps, name=node.output[0]) if any(r != 1 for r in reps)
          else mb.identity(x=x, name=node.output[0]))


@converts("Gather")
def gather(g: Graph, node, a: Attrs) -> None:
    """Constant indices along one axis (a class token, a channel subset); a scalar index drops the axis."""
    mb = _mb()
    x = g.var(node, 0)
    shape = shape_of(x)
    axis = _axis(a.get("axis", 0), len(shape), a)
    indices = g.required(node, 1, "indices")
    dim = shape[axis]
    if not is_static(dim) and (indices < 0).any():
        raise ConversionError(f"Gather node {node.name!r}: negative indices on the dynamic axis {axis}")
    idx = np.where(indices < 0, indices + (int(dim) if is_static(dim) else 0), indices).astype(np.int32)
    if idx.ndim == 0:
        picked = mb.gather(x=x, indices=idx.reshape(1), axis=axis)
        g.set(node.output[0], mb.squeeze(x=picked, axes=[axis], name=node.output[0]))
        return
    g.set(node.output[0], mb.gather(x=x, indices=idx, axis=axis, name=node.output[0]))
