"""TensorRT backend: runs a serialized engine (given, or from a loader such as the engine cache's), pycuda device
memory allocated once for the profile's largest shapes, asynchronous copies and `execute_async_v3` on one stream,
dynamic batch through `set_input_shape` (larger batches are split to the profile maximum).

`tensorrt` and `pycuda` are imported in `load()`, never at module level: the module imports anywhere, the backend
runs only on an NVIDIA GPU.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import BackendUnavailable
from runtime.runners.base import Runner, RunnerError, TensorMeta

ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
INSTALL_HINT = ("TensorRT is not installed: on a Jetson (JetPack 6) `apt install python3-libnvinfer "
                "python3-libnvinfer-dev` for the system Python (or use the nvcr.io/nvidia/l4t-jetpack image), then "
                "`pip install 'shadowline[tensorrt]'` for pycuda; on an x86 GPU host install TensorRT 10/11 from "
                "NVIDIA's index (pip install tensorrt --extra-index-url https://pypi.nvidia.com)")

PYCUDA_HINT = ("pycuda is not installed: pip install 'shadowline[tensorrt]' (source build: set CUDA_ROOT and put "
               "/usr/local/cuda/bin on PATH)")


def import_tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError as err:
        raise BackendUnavailable(INSTALL_HINT) from err
    return trt


def import_pycuda() -> Any:
    try:
        import pycuda.driver as cuda
    except ImportError as err:
        raise BackendUnavailable(PYCUDA_HINT) from err
    return cuda


@dataclass
class _Tensor:
    name: str
    is_input: bool
    shape: tuple[int, ...]  # engine shape, -1 for dynamic
    dtype: np.dtype
    min_shape: tuple[int, ...] | None = None
    max_shape: tuple[int, ...] | None = None
    host: Any = None  # page-locked numpy buffer for the largest shape
    device: Any = None  # pycuda DeviceAllocation


class TensorRTRunner(Runner):
    """Run a serialized TensorRT engine. `engine` is the engine's bytes, the path of an `.engine`/`.plan`/`.trt`
    file, or a loader: a callable returning the bytes, called once in `load()` with this runner's CUDA context
    current (`runtime.loaders.tensorrt.EngineFromBundle` builds, checks and caches one for a bundle). The runner
    itself never builds an engine (Polygraphy's split between loaders and runners)."""

    backend = "tensorrt"

    def __init__(self, engine: bytes | Path | str | Callable[[], bytes], *, device: int = 0) -> None:
        super().__init__()
        if isinstance(engine, (str, Path)):
            path = Path(engine)
            if path.suffix not in ENGINE_SUFFIXES:
                raise RunnerError(f"tensorrt runner: {path} is not a serialized engine ({', '.join(ENGINE_SUFFIXES)});"
                                  " build one from a bundle with runtime.loaders.tensorrt.EngineFromBundle")
            engine = path
        elif not isinstance(engine, bytes) and not callable(engine):
            raise RunnerError(f"tensorrt runner: engine must be bytes, an engine file or a loader, not "
                              f"{type(engine).__name__}")
        self.engine = engine
        self.device = device
        self._trt: Any = None
        self._cuda: Any = None
        self._cuda_ctx: Any = None
        self._engine: Any = None
        self._context: Any = None
        self._stream: Any = None
        self._tensors: list[_Tensor] = []
        self._lock = threading.Lock()
        self.trt_version: str | None = None
        self.gpu_name: str | None = None

    @property
    def engine_path(self) -> Path | None:
        return self.engine if isinstance(self.engine, Path) else None

    def _engine_bytes(self) -> bytes:
        if isinstance(self.engine, bytes):
            return self.engine
        if isinstance(self.engine, Path):
            return self.engine.read_bytes()
        return self.engine()

    # -- loading -----------------------------------------------------------------------------------------------
    @contextmanager
    def _active(self) -> Iterator[None]:
        """Make this runner's CUDA context current on the calling thread (the daemon infers from a worker)."""
        self._cuda_ctx.push()
        try:
            yield
        finally:
            self._cuda.Context.pop()

    def _load(self) -> None:
        self._trt = trt = import_tensorrt()
        self._cuda = cuda = import_pycuda()
        self.trt_version = str(trt.__version__)
        try:
            cuda.init()
            dev = cuda.Device(self.device)
            self.gpu_name = dev.name()
            # The primary context is the one the CUDA runtime (and so TensorRT) uses: retaining it, rather than
            # pycuda.autoinit's private context, keeps TensorRT's and our allocations in one context.
            self._cuda_ctx = dev.retain_primary_context()
        except Exception as err:  # pycuda's LogicError/RuntimeError family
            raise BackendUnavailable(f"tensorrt runner: no usable CUDA device {self.device}: {err}") from err
        try:
            with self._active():
                self._deserialize(self._engine_bytes())
                self._allocate()
        except BaseException:
            self._release()
            raise

    def _deserialize(self, data: bytes) -> None:
        trt = self._trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        engine = self._runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise BackendUnavailable(
                "tensorrt runner: the engine does not deserialize here (built by another TensorRT version, GPU "
                "or JetPack?); rebuild it on this device (`shadowline export tensorrt BUNDLE --rebuild`)")
        self._engine = engine
        self._context = engine.create_execution_context()
        if self._context is None:
            raise BackendUnavailable("tensorrt runner: could not create an execution context (GPU memory?)")
        tensors = []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            shape = tuple(int(d) for d in engine.get_tensor_shape(name))
            t = _Tensor(name, is_input, shape, np.dtype(trt.nptype(engine.get_tensor_dtype(name))))
            if is_input:
                if any(d < 0 for d in shape):
                    lo, _opt, hi = engine.get_tensor_profile_shape(name, 0)
                    t.min_shape, t.max_shape = tuple(int(d) for d in lo), tuple(int(d) for d in hi)
                else:
                    t.min_shape = t.max_shape = shape
            tensors.append(t)
        self._tensors = tensors

    def _allocate(self) -> None:
        cuda, ctx = self._cuda, self._context
        for t in self.inputs:
            if not ctx.set_input_shape(t.name, t.max_shape):
                raise BackendUnavailable(f"tensorrt runner: the engine refuses its own maximum shape {t.max_shape}")
        for t in self.outputs:
            t.max_shape = tuple(int(d) for d in ctx.get_tensor_shape(t.name))
            if any(d < 0 for d in t.max_shape):
                # Data-dependent output shapes need an IOutputAllocator; the bundled models have none.
                raise BackendUnavailable(f"tensorrt runner: output {t.name!r} has a data-dependent shape "
                                         f"{t.max_shape}, which this runner does not support")
        for t in self._tensors:
            assert t.max_shape is not None
            n = max(1, math.prod(t.max_shape))
            t.host = cuda.pagelocked_empty(n, t.dtype)
            t.device = cuda.mem_alloc(max(1, n * t.dtype.itemsize))
            if not ctx.set_tensor_address(t.name, int(t.device)):
                raise BackendUnavailable(f"tensorrt runner: cannot bind tensor {t.name!r}")
        self._stream = cuda.Stream()

    @property
    def inputs(self) -> list[_Tensor]:
        return [t for t in self._tensors if t.is_input]

    @property
    def outputs(self) -> list[_Tensor]:
        return [t for t in self._tensors if not t.is_input]

    @property
    def max_batch(self) -> int:
        return min(t.max_shape[0] for t in self.inputs) if self.inputs else 1  # type: ignore[index]

    @property
    def min_batch(self) -> int:
        return max(t.min_shape[0] for t in self.inputs) if self.inputs else 1  # type: ignore[index]

    # -- inference ---------------------------------------------------------------------------------------------
    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batches = {arr.shape[0] if arr.ndim else 1 for arr in feeds.values()}
        if len(batches) != 1:
            raise RunnerError(f"tensorrt runner: inputs disagree on the batch size {sorted(batches)}")
        n = batches.pop()
        step = self.max_batch
        parts: dict[str, list[np.ndarray]] = {t.name: [] for t in self.outputs}
        with self._lock, self._active():
            for start in range(0, n, step):
                chunk = {k: v[start:start + step] for k, v in feeds.items()}
                for name, out in self._run_chunk(chunk).items():
                    parts[name].append(out)
        return {k: v[0] if len(v) == 1 else np.concatenate(v) for k, v in parts.items()}

    def _run_chunk(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cuda, ctx, stream = self._cuda, self._context, self._stream
        for t in self.inputs:
            arr = np.ascontiguousarray(feeds[t.name], dtype=t.dtype)
            assert t.min_shape is not None and t.max_shape is not None
            if len(arr.shape) != len(t.max_shape) or any(
                    not lo <= g <= hi for lo, g, hi in zip(t.min_shape, arr.shape, t.max_shape)):
                raise RunnerError(f"tensorrt runner: input {t.name!r} shape {arr.shape} is outside the engine's "
                                  f"profile {t.min_shape}..{t.max_shape}")
            if not ctx.set_input_shape(t.name, arr.shape):
                raise RunnerError(f"tensorrt runner: the engine refused input shape {arr.shape} for {t.name!r}")
            host = t.host[: arr.size]
            host[...] = arr.reshape(-1)
            cuda.memcpy_htod_async(t.device, host, stream)
        if not ctx.execute_async_v3(stream.handle):
            raise RunnerError("tensorrt runner: execute_async_v3 failed (see the TensorRT log)")
        shapes = {}
        for t in self.outputs:
            shape = tuple(int(d) for d in ctx.get_tensor_shape(t.name))
            shapes[t.name] = shape
            cuda.memcpy_dtoh_async(t.host[: math.prod(shape)], t.device, stream)
        stream.synchronize()
        return {t.name: t.host[: math.prod(shapes[t.name])].reshape(shapes[t.name]).copy() for t in self.outputs}

    # -- closing and metadata ----------------------------------------------------------------------------------
    def _release(self) -> None:
        if self._cuda_ctx is None:
            return
        try:
            self._cuda_ctx.push()
            for t in self._tensors:
                if t.device is not None:
                    t.device.free()
                t.device = t.host = None
            self._context = self._engine = self._stream = None
            self._cuda.Context.pop()
        finally:
            self._cuda_ctx.detach()
            self._cuda_ctx = None

    def _close(self) -> None:
        self._release()
        self._tensors = []

    def _meta(self, tensors: list[_Tensor]) -> list[TensorMeta]:
        return [TensorMeta(t.name, tuple("N" if d < 0 else d for d in t.shape), t.dtype.name) for t in tensors]

    def input_metadata(self) -> list[TensorMeta]:
        if not self._tensors:
            raise RunnerError("tensorrt runner: load() first")
        return self._meta(self.inputs)

    def output_metadata(self) -> list[TensorMeta]:
        if not self._tensors:
            raise RunnerError("tensorrt runner: load() first")
        return self._meta(self.outputs)

    def describe(self) -> dict:
        d: dict[str, Any] = {"backend": self.backend, "tensorrt": self.trt_version, "gpu": self.gpu_name,
                             "device": self.device}
        if self._tensors:
            d["batch"] = {"min": self.min_batch, "max": self.max_batch}
        summary = getattr(self.engine, "summary", None)  # a loader tells what it built or found in the cache
        if callable(summary) and summary() is not None:
            d.update(summary())
        elif self.engine_path is not None:
            d["engine"] = str(self.engine_path)
        return d
