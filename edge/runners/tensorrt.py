"""TensorRT backend: a checked engine from the engine cache (built on this device on first use), pycuda device
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

from edge.runners.base import Runner, RunnerError, TensorMeta
from shadowline.errors import BackendUnavailable

ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
PYCUDA_HINT = ("pycuda is not installed: pip install 'shadowline[tensorrt]' (source build: set CUDA_ROOT and put "
               "/usr/local/cuda/bin on PATH)")


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
    """Run a TensorRT engine. Give a bundle (its directory, tar, or its model.onnx path as `create_runner` does):
    the engine comes from the cache or is built and checked first. Or give `engine_path`/`engine_bytes` to run a
    serialized engine as is (the parity check itself does that)."""

    backend = "tensorrt"

    def __init__(self, model_path: Path | str | None = None, *, engine_path: Path | str | None = None,
                 engine_bytes: bytes | None = None, precision: str = "auto", cache_dir: Path | str | None = None,
                 workspace_mb: int = 1024, max_batch: int | None = None, timing_cache: Path | str | None = None,
                 cache_max_mb: int | None = None, device: int = 0, trust_store: Any = None,
                 rebuild: bool = False, progress: Callable[[str], None] | None = None) -> None:
        super().__init__()
        if model_path is not None and Path(model_path).suffix in ENGINE_SUFFIXES:
            engine_path, model_path = model_path, None
        if sum(x is not None for x in (model_path, engine_path, engine_bytes)) != 1:
            raise RunnerError("tensorrt runner: give exactly one of a bundle/model path, engine_path, engine_bytes")
        self.model_path = Path(model_path) if model_path is not None else None
        self.engine_path = Path(engine_path) if engine_path is not None else None
        self._engine_bytes = engine_bytes
        self.device = device
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.cache_max_bytes = cache_max_mb << 20 if cache_max_mb else None
        self.trust_store, self.rebuild = trust_store, rebuild
        self.progress = progress or (lambda _m: None)
        from export.tensorrt.builder import BuildSettings

        self.settings = BuildSettings(precision=precision, workspace_mb=workspace_mb, max_batch=max_batch,
                                      timing_cache=Path(timing_cache) if timing_cache else None)
        self.prepared: Any = None  # export.tensorrt.prepare.PreparedEngine when built from a bundle
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

    # -- loading -----------------------------------------------------------------------------------------------
    def _bundle_dir(self) -> Path:
        assert self.model_path is not None
        p = self.model_path
        return p.parent if p.is_file() and p.suffix == ".onnx" else p

    def _engine_from_bundle(self) -> bytes:
        from export.bundle import load_bundle
        from export.tensorrt.cache import EngineCache, default_cache_dir
        from export.tensorrt.prepare import prepare_engine

        cache = EngineCache(self.cache_dir or default_cache_dir(), max_bytes=self.cache_max_bytes)
        with load_bundle(self._bundle_dir(), self.trust_store) as bundle:
            self.prepared = prepare_engine(bundle, cache, self.settings, self.device, self.progress,
                                           rebuild=self.rebuild, trt=self._trt)
        return self.prepared.path.read_bytes()

    @contextmanager
    def _active(self) -> Iterator[None]:
        """Make this runner's CUDA context current on the calling thread (the daemon infers from a worker)."""
        self._cuda_ctx.push()
        try:
            yield
        finally:
            self._cuda.Context.pop()

    def _load(self) -> None:
        from export.tensorrt.builder import import_tensorrt

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
                data = self._engine_bytes
                if data is None:
                    data = (self.engine_path.read_bytes() if self.engine_path is not None
                            else self._engine_from_bundle())
                self._deserialize(data)
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
        if self.prepared is not None:
            d.update({k: v for k, v in self.prepared.summary().items() if k != "parity"})
            d["parity_passed"] = self.prepared.check.passed if self.prepared.check else "checked when cached"
        elif self.engine_path is not None:
            d["engine"] = str(self.engine_path)
        return d
