"""Backends: one module each, one interface (`edge.runners.base.Runner`). Heavy libraries load lazily."""

from __future__ import annotations

import importlib
from typing import Any

from edge.runners.base import Runner, RunnerError, TensorMeta
from shadowline.errors import BackendUnavailable

# backend -> (module, class, what to install when the module's library is missing)
BACKENDS: dict[str, tuple[str, str, str]] = {
    "onnxruntime": ("edge.runners.onnxrt", "OnnxRuntimeRunner", "pip install onnxruntime"),
    "tensorrt": ("edge.runners.tensorrt", "TensorRTRunner",
                 "on a Jetson: apt install python3-libnvinfer, and pip install 'shadowline[tensorrt]' (pycuda)"),
    "coreml": ("edge.runners.coreml", "CoreMLRunner", "macOS only: pip install 'shadowline[coreml]'"),
}


def create_runner(backend: str, *args: Any, **kwargs: Any) -> Runner:
    """Instantiate the runner for `backend`; a missing library raises BackendUnavailable with an install hint."""
    if backend not in BACKENDS:
        raise BackendUnavailable(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
    module, cls, hint = BACKENDS[backend]
    try:
        mod = importlib.import_module(module)
    except ImportError as err:
        raise BackendUnavailable(f"backend {backend!r} cannot load ({err}); {hint}") from err
    return getattr(mod, cls)(*args, **kwargs)


__all__ = ["BACKENDS", "Runner", "RunnerError", "TensorMeta", "create_runner"]
