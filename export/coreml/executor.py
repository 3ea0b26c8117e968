"""Reference executor: evaluate a saved ML Program op by op with numpy, checking every op's output shape.

The package is loaded back with coremltools' own milproto loader, so what is checked is what was written to disk,
after all of coremltools' graph passes (fusions, FP16 casts, image preprocessing). FP16 ops are computed in float32
and rounded to float16 after every op, as FP16 storage with wider accumulation does on the device.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from export.coreml import kernels
from runtime.errors import ConversionError

WEIGHTS = "Data/com.apple.CoreML/weights"
OPS: dict[str, Callable[..., Any]] = {}


class ExecutorError(ConversionError):
    """The program contains an op the executor cannot evaluate, or an op's output disagrees with its declared
    shape: either way the package is not verified."""


def op(*names: str) -> Callable[[Callable], Callable]:
    def register(fn: Callable) -> Callable:
        for n in names:
            OPS[n] = fn
        return fn
    return register


def load_program(package: Path):
    """(spec, MIL program) of a saved .mlpackage, read back from disk."""
    import coremltools as ct
    from coremltools.converters.mil.frontend.milproto.load import load

    package = Path(package)
    spec = ct.models.MLModel(str(package), skip_model_load=True).get_spec()
    prog = load(spec, spec.specificationVersion, file_weights_dir=str(package / WEIGHTS))
    return spec, prog


def dtype_name(var) -> str:
    from coremltools.converters.mil.mil import types

    t = var.dtype
    if types.is_tensor(var.sym_type) or types.is_scalar(var.sym_type):
        return types.builtin_to_string(t)
    return "other"


_NP = {"fp16": np.float16, "fp32": np.float32, "fp64": np.float64, "int32": np.int32, "int64": np.int64,
       "bool": np.bool_, "int8": np.int8, "uint8": np.uint8, "int16": np.int16}


class Executor:
    """Runs the "main" function of a MIL program on numpy inputs."""

    def __init__(self, prog) -> None:
        self.fn = prog.functions["main"]
        for o in self.fn.operations:
            if o.op_type not in OPS:
                raise ExecutorError(f"the reference executor cannot evaluate op {o.op_type!r} ({o.name}); the "
                                    "package cannot be verified")

    @property
    def input_names(self) -> list[str]:
        return list(self.fn.inputs)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, Any]:
        """Every var's value by name (inputs, intermediates, outputs)."""
        values: dict[str, Any] = {}
        symbols: dict[Any, int] = {}
        for name, var in self.fn.inputs.items():
            if name not in feeds:
                raise ExecutorError(f"missing input {name!r}")
            values[name] = self._store(var, np.asarray(feeds[name]), symbols, "input")
        for o in self.fn.operations:
            args = {k: self._value(v, values) for k, v in o.inputs.items()}
            try:
                result = OPS[o.op_type](o, **args)
            except ExecutorError:
                raise
            except (ValueError, IndexError, TypeError) as err:
                raise ExecutorError(f"op {o.op_type} ({o.name}) failed in the executor: {err}") from err
            results = result if isinstance(result, tuple) else (result,)
            if len(results) != len(o.outputs):
                raise ExecutorError(f"op {o.op_type} ({o.name}): {len(results)} results for {len(o.outputs)} outputs")
            for var, val in zip(o.outputs, results):
                values[var.name] = self._store(var, val, symbols, f"{o.op_type} ({o.name})")
        return values

    def outputs(self, values: dict[str, Any]) -> dict[str, Any]:
        return {v.name: values[v.name] for v in self.fn.outputs}

    @staticmethod
    def _value(v, values: dict[str, Any]) -> Any:
        if isinstance(v, (list, tuple)):
            return [values[x.name] for x in v]
        return values[v.name]

    @staticmethod
    def _store(var, val: Any, symbols: dict[Any, int], where: str) -> Any:
        from coremltools.converters.mil.mil import types

        if not (types.is_tensor(var.sym_type) or types.is_scalar(var.sym_type)) or types.is_str(var.sym_type):
            return val  # classify's label and dictionary: checked by the description checks
        arr = np.asarray(val)
        want = tuple(var.shape)
        if len(want) != arr.ndim:
            raise ExecutorError(f"{where}: output {var.name!r} has shape {arr.shape}, the program declares {want}")
        for have, dim in zip(arr.shape, want):
            if isinstance(dim, (int, np.integer)):
                if int(dim) != have:
                    raise ExecutorError(f"{where}: output {var.name!r} has shape {arr.shape}, the program declares "
                                        f"{want}")
            elif symbols.setdefault(dim, have) != have:
                raise ExecutorError(f"{where}: output {var.name!r} dimension {dim} is {have}, bound to "
                                    f"{symbols[dim]} earlier")
        np_type = _NP.get(dtype_name(var))
        return arr.astype(np_type) if np_type is not None and arr.dtype != np_type else arr


def run_package(package: Path, feeds: dict[str, np.ndarray]) -> tuple[dict[str, Any], Any]:
    _, prog = load_program(package)
    ex = Executor(prog)
    return ex.run(feeds), prog


def f32(v: Any) -> np.ndarray:
    return np.asarray(v, dtype=np.float32)


def _int_list(v: Any) -> list[int]:
    return [int(x) for x in np.asarray(v).reshape(-1)]


# ---- the ops -------------------------------------------------------------------------------------------------

@op("const")
def _const(o, **_):
    val = o.outputs[0].val if o.outputs[0].val is not None else o.val.val
    return val.ls if hasattr(val, "ls") else val


@op("cast")
def _cast(o, x, dtype):
    return np.asarray(x).astype(_NP[str(dtype)])


_BINARY = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "real_div": np.divide,
           "maximum": np.maximum, "minimum": np.minimum}


@op(*_BINARY)
def _binary(o, x, y):
    return _BINARY[o.op_type](f32(x), f32(y))


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


@op("tanh")
def _tanh(o, x):
    return np.tanh(f32(x))


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


@op("conv")
def _conv(o, x, weight, bias=None, strides=(1, 1), pad_type="valid", pad=None, dilations=(1, 1), groups=1):
    x, w = f32(x), f32(weight)
    pads = kernels.explicit_pads(str(pad_type), pad, x.shape[2:], w.shape[2:], strides, dilations)
    return kernels.conv2d(x, w, None if bias is None else f32(bias), strides, dilations, int(groups), pads)


@op("conv_transpose")
def _conv_transpose(o, x, weight, bias=None, pad=None, output_shape=None, pad_type="valid", strides=(1, 1),
                    dilations=(1, 1), groups=1):
    if str(pad_type) not in ("custom", "valid"):
        raise ExecutorError(f"conv_transpose ({o.name}): pad_type {pad_type!r} is not evaluated")
    p = _int_list(pad) if pad is not None and str(pad_type) == "custom" else [0, 0, 0, 0]
    out_hw = tuple(_int_list(output_shape)[2:]) if output_shape is not None else None
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


@op("max_pool", "avg_pool")
def _pool(o, x, kernel_sizes, strides=None, pad_type="valid", pad=None, ceil_mode=False,
          exclude_padding_from_average=False):
    x = f32(x)
    kernel = _int_list(kernel_sizes)
    strides = _int_list(strides) if strides is not None else [1, 1]
    if x.ndim != 4:
        raise ExecutorError(f"{o.op_type} ({o.name}): only 2-D pooling is evaluated")
    pads = kernels.explicit_pads(str(pad_type), pad, x.shape[2:], kernel, strides, [1, 1])
    return kernels.pool2d(x, "max" if o.op_type == "max_pool" else "avg", kernel, strides, pads, bool(ceil_mode),
                          bool(exclude_padding_from_average))


@op("reduce_mean", "reduce_max", "reduce_sum")
def _reduce(o, x, axes=None, keep_dims=False):
    fn = {"reduce_mean": np.mean, "reduce_max": np.max, "reduce_sum": np.sum}[o.op_type]
    ax = None if axes is None else tuple(_int_list(axes))
    return fn(f32(x), axis=ax, keepdims=bool(keep_dims))


@op("concat")
def _concat(o, values, axis, interleave=False):
    if bool(interleave):
        raise ExecutorError(f"concat ({o.name}): interleave is not evaluated")
    return np.concatenate([np.asarray(v) for v in values], axis=int(axis))


@op("reshape")
def _reshape(o, x, shape):
    return np.reshape(np.asarray(x), _int_list(shape))


@op("transpose")
def _transpose(o, x, perm):
    return np.transpose(np.asarray(x), _int_list(perm))


@op("squeeze")
def _squeeze(o, x, axes=None):
    x = np.asarray(x)
    return np.squeeze(x) if axes is None else np.squeeze(x, axis=tuple(_int_list(axes)))


@op("expand_dims")
def _expand_dims(o, x, axes):
    return np.expand_dims(np.asarray(x), axis=tuple(_int_list(axes)))


@op("slice_by_index")
def _slice(o, x, begin, end, stride=None, begin_mask=None, end_mask=None, squeeze_mask=None):
    x = np.asarray(x)
    n = x.ndim
    begin, end = _int_list(begin), _int_list(end)
    stride = _int_list(stride) if stride is not None else [1] * n
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
        cuts = np.cumsum(_int_list(split_sizes))[:-1]
        return tuple(np.split(x, cuts, axis=int(axis)))
    return tuple(np.split(x, int(num_splits), axis=int(axis)))


@op("pad")
def _pad(o, x, pad, mode="constant", constant_val=0.0):
    x = np.asarray(x)
    p = _int_list(pad)
    k = len(p) // 2
    widths = [(0, 0)] * (x.ndim - k) + [(p[2 * i], p[2 * i + 1]) for i in range(k)]
    mode = str(mode)
    if mode == "constant":
        return np.pad(x, widths, constant_values=float(constant_val))
    return np.pad(x, widths, mode={"reflect": "reflect", "replicate": "edge"}[mode])


@op("upsample_nearest_neighbor")
def _upsample_nearest(o, x, scale_factor_height=1, scale_factor_width=1):
    fh, fw = float(scale_factor_height), float(scale_factor_width)
    if fh != int(fh) or fw != int(fw):
        raise ExecutorError(f"upsample_nearest_neighbor ({o.name}): fractional factors are not evaluated")
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
