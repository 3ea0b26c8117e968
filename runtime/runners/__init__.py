"""Backends: one module each, one interface (`runtime.runners.base.Runner`). Heavy libraries load lazily."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from runtime.errors import BackendUnavailable
from runtime.runners.base import Runner, RunnerError, TensorMeta

# backend -> (module, class, what to install when the module's library is missing)
BACKENDS: dict[str, tuple[str, str, str]] = {
    "onnxruntime": ("runtime.runners.onnxrt", "OnnxRuntimeRunner", "pip install onnxruntime"),
    "tensorrt": ("runtime.runners.tensorrt", "TensorRTRunner",
                 "on a Jetson: apt install python3-libnvinfer, and pip install 'shadowline[tensorrt]' (pycuda)"),
    "coreml": ("runtime.runners.coreml", "CoreMLRunner", "macOS only: pip install 'shadowline[coreml]'"),
}


def create_runner(backend: str, model: Path | str, **options: Any) -> Runner:
    """The runner for `backend` on `model` (a model file, a bundle directory, or an engine file for TensorRT).

    TensorRT runs engines, not ONNX: for a bundle or its model.onnx the runner is handed the engine cache's loader
    (`EngineFromBundle`, given `options`), which builds and checks the engine on this device at `load()`.
    A missing library raises BackendUnavailable with an install hint."""
    if backend not in BACKENDS:
        raise BackendUnavailable(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
    module, cls, hint = BACKENDS[backend]
    try:
        mod = importlib.import_module(module)
    except ImportError as err:
        raise BackendUnavailable(f"backend {backend!r} cannot load ({err}); {hint}") from err
    if backend == "tensorrt":
        device = options.get("device", 0)
        if Path(model).suffix in mod.ENGINE_SUFFIXES:
            return getattr(mod, cls)(Path(model), device=device)
        from runtime.loaders.tensorrt.loader import EngineFromBundle

        return getattr(mod, cls)(EngineFromBundle(model, **options), device=device)
    return getattr(mod, cls)(model, **options)


__all__ = ["BACKENDS", "Runner", "RunnerError", "TensorMeta", "create_runner"]
