"""numpy implementations of the ML Program (MIL) operations the reference executor evaluates, one function per op
type, written from the operation definitions in coremltools (`mil/ops/defs/iOS15`), not from ONNX: an op the
converter maps wrongly then disagrees with ONNX Runtime instead of agreeing with the converter's own mistake.

Each function gets the op and its inputs by name; an input absent from the saved program takes the default of the
op's definition (the function's keyword default).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from export.coreml import kernels

OPS: dict[str, Callable[..., Any]] = {}
NUMPY_TYPES = {"fp16": np.float16, "fp32": np.float32, "fp64": np.float64, "int32": np.int32, "int64": np.int64,
               "bool": np.bool_, "int8": np.int8, "uint8": np.uint8, "int16": np.int16}


def op(*names: str) -> Callable[[Callable], Callable]:
    def register(fn: Callable) -> Callable:
        for n in names:
            OPS[n] = fn
        return fn
    return register


def f32(v: Any) -> np.ndarray:
    return np.asarray(v, dtype=np.float32)


def int_list(v: Any) -> list[int]:
    return [int(x) for x in np.asarray(v).reshape(-1)]


def _axes(axes: Any, rank: int) -> tuple[int, ...]:
    return tuple(a + rank if a < 0 else a for a in int_list(axes))


# ---- constants, casts, element-wise ------------------------------------------------------------------------

@op("const")
def _const(o, **_):
    val = o.outputs[0].val if o.outputs[0].val is not None else o.val.val
    return val.ls if hasattr(val, "ls") else val


@op("cast")
def _cast(o, x, dtype):
    return np.asarray(x).astype(NUMPY_TYPES[str(dtype)])  # to an integer type: the fraction is dropped


_BINARY = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "real_div": np.divide,
           "maximum": np.maximum, "minimum": np.minimum, "pow": np.power}


@op(*_BINARY)
def _binary(o, x, y):
    x, y = np.asarray(x), np.asarray(y)
    if x.dtype.kind in "iu" and y.dtype.kind in "iu" and o.op_type != "real_div":
        return _BINARY[o.op_type](x, y).astype(np.int32)
    return _BINARY[o.op_type](f32(x), f32(y))


@op("floor_div")
def _floor_div(o, x, y):
    return np.floor_divide(np.asarray(x), np.asarray(y))


_COMPARE = {"equal": np.equal, "not_equal": np.not_equal, "greater": np.greater, "greater_equal": np.greater_equal,
            "less": np.less, "less_equal": np.less_equal}


@op(*_COMPARE)
def _compare(o, x, y):
    return _COMPARE[o.op_type](np.asarray(x), np.asarray(y))


_LOGICAL = {"logical_and": np.logical_and, "logical_or": np.logical_or, "logical_xor": np.logical_xor}


@op(*_LOGICAL)
def _logical(o, x, y):
    return _LOGICAL[o.op_type](np.asarray(x, bool), np.asarray(y, bool))


@op("logical_not")
def _logical_not(o, x):
    return np.logical_not(np.asarray(x, bool))


@op("select")
def _select(o, cond, a, b):
    return np.where(np.asarray(cond, bool), np.asarray(a), np.asarray(b))


_UNARY: dict[str, Callable[[np.ndarray], np.ndarray]] = {"exp": np.exp, "sqrt": np.sqrt, "abs": np.abs, "floor": np.floor, "ceil": np.ceil, "sign": np.sign,
          "tanh": np.tanh, "sin": np.sin, "cos": np.cos, "round": np.round, "square": np.square}


@op(*_UNARY)
def _unary(o, x):
    x = np.asarray(x)
    if o.op_type in ("abs", "sign", "square") and x.dtype.kind in "iu":
        return _UNARY[o.op_type](x)
    with np.errstate(over="ignore"):  # exp overflow is inf, as in Core ML
        return _UNARY[o.op_type](f32(x))


@op("log")
def _log(o, x, epsilon=1e-45):
    return np.log(f32(x) + np.float32(epsilon))


@op("rsqrt")
def _rsqrt(o, x, epsilon=1e-12):
    return 1.0 / np.sqrt(f32(x) + np.float32(epsilon))


@op("inverse")
def _inverse(o, x, epsilon=1e-4):
    return 1.0 / (f32(x) + np.float32(epsilon))


_ERF = np.frompyfunc(math.erf, 1, 1)


def erf(x: np.ndarray) -> np.ndarray:
    """math.erf element by element, in float64 (numpy has no erf)."""
    return np.asarray(_ERF(np.asarray(x, np.float64)), np.float64)


@op("erf")
def _erf_op(o, x):
    return erf(x).astype(np.float32)


@op("relu")
def _relu(o, x):
    return np.maximum(f32(x), 0)


@op("relu6")
def _relu6(o, x):
    return np.clip(f32(x), 0, 6)


@op("sigmoid")
def _sigmoid(o, x):
    with np.errstate(over="ignore"):  # exp overflow is inf, and 1/inf the right 0
        return 1.0 / (1.0 + np.exp(-f32(x)))


@op("silu")
def _silu(o, x):
    x = f32(x)
    with np.errstate(over="ignore"):
        return x / (1.0 + np.exp(-x))


@op("gelu")
def _gelu(o, x, mode="EXACT"):
    """The three modes of MIL's gelu, as its definition writes them."""
    x64 = np.asarray(x, np.float64)
    mode = str(mode)
    if mode == "EXACT":
        y = 0.5 * x64 * (1.0 + erf(x64 / math.sqrt(2.0)))
    elif mode == "TANH_APPROXIMATION":
        y = 0.5 * x64 * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x64 + 0.044715 * x64 ** 3)))
    elif mode == "SIGMOID_APPROXIMATION":
        y = x64 / (1.0 + np.exp(-1.702 * x64))
    else:
        raise ValueError(f"unknown gelu mode {mode!r}")
    return y.astype(np.float32)


@op("leaky_relu")
def _leaky(o, x, alpha=0.01):
    x = f32(x)
    return np.where(x >= 0, x, x * float(alpha))


@op("sigmoid_hard")
def _hard_sigmoid(o, x, alpha=0.2, beta=0.5):
    return np.clip(f32(x) * float(alpha) + float(beta), 0, 1)


@op("clip")
def _clip(o, x, alpha, beta):
    return np.clip(f32(x), float(alpha), float(beta))


@op("identity")
def _identity(o, x):
    return np.asarray(x)


@op("softmax")
def _softmax(o, x, axis=-1):
    x = f32(x)
    e = np.exp(x - x.max(axis=int(axis), keepdims=True))
    return e / e.sum(axis=int(axis), keepdims=True)


# ---- linear algebra, convolution, normalisation ---------------------------------------------------------------

@op("conv")
def _conv(o, x, weight, bias=None, strides=(1, 1), pad_type="valid", pad=None, dilations=(1, 1), groups=1):
    x, w = f32(x), f32(weight)
    pads = kernels.explicit_pads(str(pad_type), pad, x.shape[2:], w.shape[2:], strides, dilations)
    return kernels.conv2d(x, w, None if bias is None else f32(bias), strides, dilations, int(groups), pads)


@op("conv_transpose")
def _conv_transpose(o, x, weight, bias=None, pad=None, output_shape=None, pad_type="valid", strides=(1, 1),
                    dilations=(1, 1), groups=1):
    if str(pad_type) not in ("custom", "valid"):
        raise ValueError(f"pad_type {pad_type!r} is not evaluated")
    p = int_list(pad) if pad is not None and str(pad_type) == "custom" else [0, 0, 0, 0]
    out_hw = (int_list(output_shape)[2], int_list(output_shape)[3]) if output_shape is not None else None
    return kernels.conv_transpose2d(f32(x), f32(weight), None if bias is None else f32(bias), strides, dilations,
                                    int(groups), [(p[0], p[1]), (p[2], p[3])], out_hw)


@op("matmul")
def _matmul(o, x, y, transpose_x=False, transpose_y=False):
    x, y = f32(x), f32(y)
    if bool(transpose_x):
        x = np.swapaxes(x, -1, -2)
    if bool(transpose_y):
        y = np.swapaxes(y, -1, -2)
    return np.matmul(x, y)


@op("linear")
def _linear(o, x, weight, bias=None):
    y = np.matmul(f32(x), f32(weight).T)
    return y if bias is None else y + f32(bias)


@op("batch_norm")
def _batch_norm(o, x, mean, variance, gamma=None, beta=None, epsilon=1e-5):
    x = f32(x)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    y = (x - f32(mean).reshape(shape)) / np.sqrt(f32(variance).reshape(shape) + float(epsilon))
    if gamma is not None:
        y = y * f32(gamma).reshape(shape)
    return y if beta is None else y + f32(beta).reshape(shape)


@op("layer_norm")
def _layer_norm(o, x, axes=None, gamma=None, beta=None, epsilon=1e-5):
    """out = gamma * (x - E[x]) / sqrt(Var[x] + epsilon) + beta over `axes` (all axes by default)."""
    x64 = np.asarray(x, np.float64)
    ax = tuple(range(x64.ndim)) if axes is None else _axes(axes, x64.ndim)
    mean = x64.mean(axis=ax, keepdims=True)
    var = ((x64 - mean) ** 2).mean(axis=ax, keepdims=True)
    y = (x64 - mean) / np.sqrt(var + float(epsilon))
    shape = [x64.shape[i] if i in ax else 1 for i in range(x64.ndim)]
    if gamma is not None:
        y = y * np.asarray(gamma, np.float64).reshape(shape)
    if beta is not None:
        y = y + np.asarray(beta, np.float64).reshape(shape)
    return y.astype(np.float32)


@op("max_pool", "avg_pool")
def _pool(o, x, kernel_sizes, strides=None, pad_type="valid", pad=None, ceil_mode=False,
          exclude_padding_from_average=False):
    x = f32(x)
    kernel = int_list(kernel_sizes)
    strides = int_list(strides) if strides is not None else [1, 1]
    if x.ndim != 4:
        raise ValueError("only 2-D pooling is evaluated")
    pads = kernels.explicit_pads(str(pad_type), pad, x.shape[2:], kernel, strides, [1, 1])
    return kernels.pool2d(x, "max" if o.op_type == "max_pool" else "avg", kernel, strides, pads, bool(ceil_mode),
                          bool(exclude_padding_from_average))


_REDUCE: dict[str, Callable[..., np.ndarray]] = {"reduce_mean": np.mean, "reduce_max": np.max, "reduce_min": np.min, "reduce_sum": np.sum,
           "reduce_prod": np.prod}


@op(*_REDUCE)
def _reduce(o, x, axes=None, keep_dims=False):
    x = np.asarray(x)
    ax = None if axes is None else _axes(axes, x.ndim)
    y = _REDUCE[o.op_type](x if x.dtype.kind in "iu" else f32(x), axis=ax, keepdims=bool(keep_dims))
    return y


@op("reduce_argmax", "reduce_argmin")
def _reduce_arg(o, x, axis=-1, keep_dims=False):
    fn = np.argmax if o.op_type == "reduce_argmax" else np.argmin
    y = fn(np.asarray(x), axis=int(axis)).astype(np.int32)
    return np.expand_dims(y, int(axis)) if bool(keep_dims) else y


@op("one_hot")
def _one_hot(o, indices, one_hot_vector_size, axis=-1, on_value=1, off_value=0):
    idx = np.asarray(indices, np.int64)
    size = int(np.asarray(one_hot_vector_size).reshape(-1)[0])
    on, off = np.asarray(on_value), np.asarray(off_value)
    hot = np.arange(size) == idx[..., None]  # the new axis last, then moved to `axis`
    out = np.where(hot, on, off).astype(np.result_type(on, off))
    return np.moveaxis(out, -1, int(axis)) if int(axis) not in (-1, out.ndim - 1) else out


# ---- layout --------------------------------------------------------------------------------------------------

@op("concat")
def _concat(o, values, axis, interleave=False):
    if bool(interleave):
        raise ValueError("interleave is not evaluated")
    return np.concatenate([np.asarray(v) for v in values], axis=int(axis))


@op("reshape")
def _reshape(o, x, shape):
    return np.reshape(np.asarray(x), int_list(shape))


@op("transpose")
def _transpose(o, x, perm):
    return np.transpose(np.asarray(x), int_list(perm))


@op("squeeze")
def _squeeze(o, x, axes=None):
    x = np.asarray(x)
    return np.squeeze(x) if axes is None else np.squeeze(x, axis=_axes(axes, x.ndim))


@op("expand_dims")
def _expand_dims(o, x, axes):
    return np.expand_dims(np.asarray(x), axis=tuple(int_list(axes)))


@op("tile")
def _tile(o, x, reps):
    return np.tile(np.asarray(x), int_list(reps))


@op("gather")
def _gather(o, x, indices, axis=0):
    x = np.asarray(x)
    ax = int(axis) + x.ndim if int(axis) < 0 else int(axis)
    idx = np.asarray(indices, np.int64)
    idx = np.where(idx < 0, idx + x.shape[ax], idx)  # MIL gather allows negative indices
    return np.take(x, idx, axis=ax)


@op("slice_by_index")
def _slice(o, x, begin, end, stride=None, begin_mask=None, end_mask=None, squeeze_mask=None):
    x = np.asarray(x)
    n = x.ndim
    begin, end = int_list(begin), int_list(end)
    stride = int_list(stride) if stride is not None else [1] * n
    bm = [bool(v) for v in np.asarray(begin_mask).reshape(-1)] if begin_mask is not None else [False] * n
    em = [bool(v) for v in np.asarray(end_mask).reshape(-1)] if end_mask is not None else [False] * n
    sm = [bool(v) for v in np.asarray(squeeze_mask).reshape(-1)] if squeeze_mask is not None else [False] * n
    index = tuple(slice(None if bm[i] else begin[i], None if em[i] else end[i], stride[i]) for i in range(n))
    y = x[index]
    axes = tuple(i for i in range(n) if sm[i])
    return np.squeeze(y, axis=axes) if axes else y


@op("split")
def _split(o, x, axis, num_splits=None, split_sizes=None):
    x = np.asarray(x)
    if split_sizes is not None:
        cuts = np.cumsum(int_list(split_sizes))[:-1]
        return tuple(np.split(x, cuts, axis=int(axis)))
    return tuple(np.split(x, int(num_splits), axis=int(axis)))


@op("pad")
def _pad(o, x, pad, mode="constant", constant_val=0.0):
    x = np.asarray(x)
    p = int_list(pad)
    k = len(p) // 2
    widths = [(0, 0)] * (x.ndim - k) + [(p[2 * i], p[2 * i + 1]) for i in range(k)]
    mode = str(mode)
    if mode == "constant":
        return np.pad(x, widths, constant_values=float(constant_val))
    if mode == "reflect":
        return np.pad(x, widths, mode="reflect")
    if mode == "replicate":
        return np.pad(x, widths, mode="edge")
    raise ValueError(f"pad mode {mode!r} is not evaluated")


@op("upsample_nearest_neighbor")
def _upsample_nearest(o, x, scale_factor_height=1, scale_factor_width=1):
    fh, fw = float(scale_factor_height), float(scale_factor_width)
    if fh != int(fh) or fw != int(fw):
        raise ValueError("fractional upsampling factors are not evaluated")
    return np.repeat(np.repeat(np.asarray(x), int(fh), axis=-2), int(fw), axis=-1)


@op("resize_bilinear")
def _resize_bilinear(o, x, target_size_height=1, target_size_width=1, sampling_mode="DEFAULT"):
    return kernels.resize_bilinear(f32(x), int(target_size_height), int(target_size_width), str(sampling_mode))


@op("classify")
def _classify(o, probabilities, classes):
    """(label per row, {label: probability} per row): Core ML returns one label and one dictionary per sample."""
    p = f32(probabilities).reshape(-1, len(classes))
    labels = [classes[int(i)] for i in p.argmax(axis=1)]
    dicts = [dict(zip(classes, row.tolist())) for row in p]
    return labels, dicts
