"""Resize and Upsample: nearest (integer factors) and linear (bilinear on the last two axes)."""

from __future__ import annotations

import numpy as np

from export.coreml.graph import Attrs, Graph, is_static, shape_of
from export.coreml.ops.registry import converts
from runtime.errors import ConversionError

# ONNX coordinate_transformation_mode -> Core ML resize_bilinear sampling_mode
_LINEAR_MODES = {"half_pixel": "UNALIGN_CORNERS", "pytorch_half_pixel": "UNALIGN_CORNERS",
                 "align_corners": "STRICT_ALIGN_CORNERS", "asymmetric": "DEFAULT"}
# Integer nearest upsampling repeats each pixel for these (mode, rounding) pairs; others shift pixels.
_NEAREST_OK = {("asymmetric", "floor"), ("half_pixel", "round_prefer_floor"), ("half_pixel", "round_prefer_ceil"),
               ("pytorch_half_pixel", "round_prefer_floor"), ("pytorch_half_pixel", "round_prefer_ceil")}


def _convert(g: Graph, node, a: Attrs, mode: str, scales: np.ndarray | None, sizes: np.ndarray | None,
             transform: str, nearest_mode: str) -> None:
    from coremltools.converters.mil import Builder as mb

    x = g.var(node, 0)
    shape = shape_of(x)
    if len(shape) != 4 or not all(is_static(d) for d in shape[2:]):
        raise ConversionError(f"{node.op_type} node {node.name!r}: only NCHW inputs with static H, W are supported")
    h, w = int(shape[2]), int(shape[3])
    if sizes is not None and sizes.size:
        sz = [int(v) for v in sizes.reshape(-1)]
        if sz[:2] != [d for d in shape[:2]] and is_static(shape[0]):
            raise ConversionError(f"{node.op_type} node {node.name!r}: resizing N or C is not supported")
        out_h, out_w = sz[2], sz[3]
        fh, fw = out_h / h, out_w / w
    elif scales is not None and scales.size:
        sc = [float(v) for v in scales.reshape(-1)]
        if sc[:2] != [1.0, 1.0]:
            raise ConversionError(f"{node.op_type} node {node.name!r}: scales {sc} resize N or C")
        fh, fw = sc[2], sc[3]
        out_h, out_w = int(np.floor(h * fh)), int(np.floor(w * fw))
    else:
        raise ConversionError(f"{node.op_type} node {node.name!r}: neither scales nor sizes are given")
    if mode == "nearest":
        if (transform, nearest_mode) not in _NEAREST_OK:
            raise a.unsupported("coordinate_transformation_mode",
                                f"nearest with {transform}/{nearest_mode} is not a pixel repeat")
        if fh != int(fh) or fw != int(fw) or fh < 1 or fw < 1:
            raise a.unsupported("mode", f"nearest needs integer upsampling factors, got {fh}, {fw}")
        out = mb.upsample_nearest_neighbor(x=x, scale_factor_height=int(fh), scale_factor_width=int(fw),
                                           name=node.output[0])
    elif mode in ("linear", "bilinear"):
        sampling = _LINEAR_MODES.get(transform)
        if sampling is None:
            raise a.unsupported("coordinate_transformation_mode", f"{transform} has no Core ML equivalent")
        out = mb.resize_bilinear(x=x, target_size_height=out_h, target_size_width=out_w, sampling_mode=sampling,
                                 name=node.output[0])
    else:
        raise a.unsupported("mode", "only nearest and linear are supported")
    g.set(node.output[0], out)


@converts("Resize")
def resize(g: Graph, node, a: Attrs) -> None:
    mode = a.get("mode", "nearest")
    transform = a.get("coordinate_transformation_mode", "half_pixel" if g.opset >= 11 else "asymmetric")
    nearest_mode = a.get("nearest_mode", "round_prefer_floor")
    a.get("cubic_coeff_a")  # only used by mode=cubic, which is refused below
    if int(a.get("exclude_outside", 0)):
        raise a.unsupported("exclude_outside", "only 0 is supported")
    if a.get("extrapolation_value", 0.0) != 0.0 and transform == "tf_crop_and_resize":
        raise a.unsupported("extrapolation_value", "tf_crop_and_resize is not supported")
    for name in ("antialias", "axes", "keep_aspect_ratio_policy"):
        if a.has(name):
            raise a.unsupported(name, "not supported")
    if g.opset < 11:
        scales, sizes = g.const(node, 1, "scales"), None
    else:
        scales, sizes = g.const(node, 2, "scales"), g.const(node, 3, "sizes")
    _convert(g, node, a, mode, scales, sizes, transform, nearest_mode)


@converts("Upsample")
def upsample(g: Graph, node, a: Attrs) -> None:
    mode = a.get("mode", "nearest")
    scales = np.asarray(a.get("scales")) if g.opset < 9 else g.const(node, 1, "scales")
    # Upsample's coordinates are asymmetric; nearest rounds down
    _convert(g, node, a, mode, scales, None, "asymmetric", "floor")
