"""Conv and ConvTranspose (2-D)."""

from __future__ import annotations

import numpy as np

from export.coreml.graph import Attrs, Graph, is_static, shape_of
from export.coreml.ops.registry import converts
from runtime.errors import ConversionError


def same_pads(size: int, k: int, s: int, d: int, lower: bool) -> tuple[int, int]:
    """ONNX SAME_UPPER/SAME_LOWER: output ceil(size/stride); the odd pixel of padding goes after (upper) or
    before (lower)."""
    total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
    small, big = total // 2, total - total // 2
    return (big, small) if lower else (small, big)


def spatial_pads(a: Attrs, n: int, in_hw=None, kernel=None, strides=None, dilations=None) -> tuple[str, list[int]]:
    """ONNX (auto_pad, pads=[b0, b1, e0, e1]) -> MIL (pad_type, pad=[b0, e0, b1, e1]). SAME_* become explicit pads
    (iOS15's conv has no same_lower), which needs the static input size."""
    auto = a.get("auto_pad", "NOTSET")
    pads = [int(p) for p in a.get("pads", [0] * 2 * n)]
    if auto == "NOTSET":
        return "custom", [v for i in range(n) for v in (pads[i], pads[i + n])]
    if auto == "VALID":
        return "valid", [0] * 2 * n
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        if in_hw is None or not all(is_static(v) for v in in_hw):
            raise a.unsupported("auto_pad", "SAME padding needs a static spatial input size")
        return "custom", [v for i in range(n) for v in same_pads(int(in_hw[i]), int(kernel[i]), int(strides[i]),
                                                                 int(dilations[i]), auto == "SAME_LOWER")]
    raise a.unsupported("auto_pad", "expected NOTSET, VALID, SAME_UPPER or SAME_LOWER")


def _weights(g: Graph, node) -> tuple[np.ndarray, np.ndarray | None]:
    w = g.const(node, 1, "weight")
    if w is None:
        raise ConversionError(f"{node.op_type} node {node.name!r}: weight input is missing")
    b = g.const(node, 2, "bias")
    return w.astype(np.float32), None if b is None else b.astype(np.float32)


@converts("Conv")
def conv(g: Graph, node, a: Attrs) -> None:
    from coremltools.converters.mil import Builder as mb

    x = g.var(node, 0)
    w, b = _weights(g, node)
    if w.ndim != 4:
        raise ConversionError(f"Conv node {node.name!r}: only 2-D convolution is supported (weight rank {w.ndim})")
    ks = a.get("kernel_shape")
    if ks is not None and list(ks) != list(w.shape[2:]):
        raise a.unsupported("kernel_shape", f"does not match the weight shape {list(w.shape[2:])}")
    strides = [int(s) for s in a.get("strides", [1, 1])]
    dilations = [int(d) for d in a.get("dilations", [1, 1])]
    pad_type, pad = spatial_pads(a, 2, shape_of(x)[2:], w.shape[2:], strides, dilations)
    kw = dict(x=x, weight=w, strides=strides, pad_type=pad_type, pad=pad, dilations=dilations,
              groups=int(a.get("group", 1)), name=node.output[0])
    if b is not None:
        kw["bias"] = b
    g.set(node.output[0], mb.conv(**kw))


@converts("ConvTranspose")
def conv_transpose(g: Graph, node, a: Attrs) -> None:
    from coremltools.converters.mil import Builder as mb

    x = g.var(node, 0)
    w, b = _weights(g, node)
    if w.ndim != 4:
        raise ConversionError(f"ConvTranspose node {node.name!r}: only 2-D is supported (weight rank {w.ndim})")
    a.get("kernel_shape")
    groups = int(a.get("group", 1))
    strides = [int(s) for s in a.get("strides", [1, 1])]
    dil = [int(d) for d in a.get("dilations", [1, 1])]
    if a.get("auto_pad", "NOTSET") != "NOTSET":
        raise a.unsupported("auto_pad", "only explicit pads are supported for ConvTranspose")
    pads = [int(p) for p in a.get("pads", [0, 0, 0, 0])]
    out_pad = [int(p) for p in a.get("output_padding", [0, 0])]
    if a.get("output_shape") is not None:
        raise a.unsupported("output_shape", "give pads and output_padding instead")
    shape = shape_of(x)
    if not all(is_static(d) for d in shape[2:]):
        raise ConversionError(f"ConvTranspose node {node.name!r}: the spatial input size must be static")
    k = w.shape[2:]
    # ONNX: out = stride*(in-1) + output_padding + ((k-1)*dilation+1) - pad_begin - pad_end
    out_hw = [strides[i] * (shape[2 + i] - 1) + out_pad[i] + (k[i] - 1) * dil[i] + 1 - pads[i] - pads[i + 2]
              for i in range(2)]
    kw = dict(x=x, weight=w, strides=strides, dilations=dil, groups=groups, pad_type="custom",
              pad=[pads[0], pads[2], pads[1], pads[3]], name=node.output[0])
    if any(out_pad):
        batch = shape[0] if is_static(shape[0]) else 1
        if not is_static(shape[0]):
            raise a.unsupported("output_padding", "needs a static batch (Core ML takes a full output_shape)")
        kw["output_shape"] = [int(batch), int(w.shape[1] * groups), *out_hw]
    if b is not None:
        kw["bias"] = b
    g.set(node.output[0], mb.conv_transpose(**kw))
