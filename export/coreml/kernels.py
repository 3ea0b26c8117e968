"""numpy kernels for the reference executor: the arithmetic of Core ML's conv, pooling and resize ops, written
from the ML Program operation definitions (coremltools' mil/ops/defs), not from ONNX."""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided, sliding_window_view


def same_pads(size: int, k: int, s: int, d: int, lower: bool) -> tuple[int, int]:
    eff = (k - 1) * d + 1
    out = -(-size // s)
    total = max((out - 1) * s + eff - size, 0)
    small, big = total // 2, total - total // 2
    return (big, small) if lower else (small, big)


def _windows(x: np.ndarray, kh: int, kw: int, sh: int, sw: int, oh: int, ow: int) -> np.ndarray:
    """[N, C, oh, ow, kh, kw]: the kh x kw windows of an NCHW array at stride (sh, sw), the first oh x ow of them."""
    win = sliding_window_view(x, (1, 1, kh, kw))[..., 0, 0, :, :]
    return win[:, :, ::sh, ::sw][:, :, :oh, :ow]


def explicit_pads(pad_type: str, pad: np.ndarray | None, hw: tuple[int, int], kernel, strides,
                  dilations) -> list[tuple[int, int]]:
    """[(top, bottom), (left, right)] for Core ML's pad_type."""
    if pad_type == "custom":
        if pad is None:
            raise ValueError("pad_type 'custom' needs pad")
        p = [int(v) for v in pad]
        return [(p[0], p[1]), (p[2], p[3])]
    if pad_type == "valid":
        return [(0, 0), (0, 0)]
    if pad_type in ("same", "same_lower"):
        return [same_pads(hw[i], int(kernel[i]), int(strides[i]), int(dilations[i]), pad_type == "same_lower")
                for i in range(2)]
    raise ValueError(f"unknown pad_type {pad_type!r}")


def conv2d(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, strides, dilations, groups: int,
           pads: list[tuple[int, int]]) -> np.ndarray:
    """im2col + one batched matmul per group: fast enough for YOLOX on a handful of photos."""
    x = np.pad(x, ((0, 0), (0, 0), pads[0], pads[1]))
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    sh, sw = (int(s) for s in strides)
    dh, dw = (int(d) for d in dilations)
    oh, ow = (h - (kh - 1) * dh - 1) // sh + 1, (wd - (kw - 1) * dw - 1) // sw + 1
    if kh == kw == 1 and sh == sw == 1:
        cols = x.reshape(n, groups, cg, oh * ow)
    else:
        s = x.strides
        cols = as_strided(x, (n, c, kh, kw, oh, ow), (s[0], s[1], s[2] * dh, s[3] * dw, s[2] * sh, s[3] * sw))
        cols = cols.reshape(n, groups, cg * kh * kw, oh * ow)
    out = np.matmul(w.reshape(groups, o // groups, cg * kh * kw)[None], cols).reshape(n, o, oh, ow)
    return out if b is None else out + b.reshape(1, -1, 1, 1)


def conv_transpose2d(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, strides, dilations, groups: int,
                     pads: list[tuple[int, int]], out_hw: tuple[int, int] | None) -> np.ndarray:
    n, cin, h, wd = x.shape
    _, og, kh, kw = w.shape
    sh, sw = (int(s) for s in strides)
    dh, dw = (int(d) for d in dilations)
    full_h, full_w = (h - 1) * sh + (kh - 1) * dh + 1, (wd - 1) * sw + (kw - 1) * dw + 1
    full = np.zeros((n, og * groups, full_h, full_w), np.float32)
    cg = cin // groups
    for gi in range(groups):
        xs = x[:, gi * cg:(gi + 1) * cg]
        ws = w[gi * cg:(gi + 1) * cg]  # (cg, og, kh, kw)
        contrib = np.einsum("nchw,cokl->noklhw", xs, ws)
        for i in range(kh):
            for j in range(kw):
                full[:, gi * og:(gi + 1) * og, i * dh:i * dh + (h - 1) * sh + 1:sh,
                     j * dw:j * dw + (wd - 1) * sw + 1:sw] += contrib[:, :, i, j]
    top, left = pads[0][0], pads[1][0]
    oh = out_hw[0] if out_hw else full_h - pads[0][0] - pads[0][1]
    ow = out_hw[1] if out_hw else full_w - pads[1][0] - pads[1][1]
    out = np.zeros((n, og * groups, oh, ow), np.float32)
    src = full[:, :, top:top + oh, left:left + ow]
    out[:, :, :src.shape[2], :src.shape[3]] = src
    return out if b is None else out + b.reshape(1, -1, 1, 1)


def pool_out(size: int, k: int, s: int, pb: int, pe: int, ceil_mode: bool) -> int:
    """Output size as coremltools' type inference defines it (ops/defs/_utils.spatial_dimensions_out_shape)."""
    if not ceil_mode:
        return (size + pb + pe - k) // s + 1
    out = (size + pb + pe - k + s - 1) // s + 1
    if (out - 1) * s >= size + pb and (pb > 0 or pe > 0):
        out -= 1
    return out


def pool2d(x: np.ndarray, kind: str, kernel, strides, pads: list[tuple[int, int]], ceil_mode: bool,
           exclude_padding: bool) -> np.ndarray:
    n, c, h, w = x.shape
    kh, kw = (int(k) for k in kernel)
    sh, sw = (int(s) for s in strides)
    oh = pool_out(h, kh, sh, *pads[0], ceil_mode)
    ow = pool_out(w, kw, sw, *pads[1], ceil_mode)
    # windows that run past the explicit padding (ceil mode) see only what is inside it
    extra_h = max((oh - 1) * sh + kh - (h + pads[0][0] + pads[0][1]), 0)
    extra_w = max((ow - 1) * sw + kw - (w + pads[1][0] + pads[1][1]), 0)
    widths = ((0, 0), (0, 0), (pads[0][0], pads[0][1] + extra_h), (pads[1][0], pads[1][1] + extra_w))
    if kind == "max":
        xp = np.pad(x, widths, constant_values=-np.inf)
        return _windows(xp, kh, kw, sh, sw, oh, ow).max(axis=(-2, -1))
    xp = np.pad(x, widths)
    ones = np.ones((1, 1, h, w), np.float32)
    if exclude_padding:
        mask = np.pad(ones, widths)
    else:
        mask = np.pad(np.pad(ones, ((0, 0), (0, 0), pads[0], pads[1]), constant_values=1.0),
                      ((0, 0), (0, 0), (0, extra_h), (0, extra_w)))
    total = _windows(xp, kh, kw, sh, sw, oh, ow).sum(axis=(-2, -1))
    count = _windows(mask, kh, kw, sh, sw, oh, ow).sum(axis=(-2, -1))
    return total / np.maximum(count, 1.0)


def bilinear_grid(size_in: int, size_out: int, mode: str) -> np.ndarray:
    """Sampling positions of resize_bilinear's sampling modes (the formulas of its documentation)."""
    i = np.arange(size_out, dtype=np.float64)
    if mode in ("STRICT_ALIGN_CORNERS", "ALIGN_CORNERS"):
        if size_out == 1:
            g = np.full(1, (size_in - 1) / 2.0 if mode == "ALIGN_CORNERS" else 0.0)
        else:
            g = i * (size_in - 1) / (size_out - 1)
    elif mode == "DEFAULT":
        g = i * (size_in / size_out)
    elif mode == "OFFSET_CORNERS":
        delta = max(1, size_in - 1) / size_out
        g = 0.5 * delta + i * delta
    elif mode == "UNALIGN_CORNERS":
        spacing = size_in / size_out
        g = i * spacing + 0.5 * spacing - 0.5
    else:
        raise ValueError(f"unknown sampling_mode {mode!r}")
    return np.clip(g, 0, size_in - 1)


def resize_bilinear(x: np.ndarray, out_h: int, out_w: int, mode: str) -> np.ndarray:
    h, w = x.shape[-2:]
    gy, gx = bilinear_grid(h, out_h, mode), bilinear_grid(w, out_w, mode)
    y0, x0 = np.floor(gy).astype(int), np.floor(gx).astype(int)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    fy, fx = (gy - y0).astype(np.float32)[:, None], (gx - x0).astype(np.float32)[None, :]
    top = x[..., y0, :][..., x0] * (1 - fx) + x[..., y0, :][..., x1] * fx
    bottom = x[..., y1, :][..., x0] * (1 - fx) + x[..., y1, :][..., x1] * fx
    return top * (1 - fy) + bottom * fy
