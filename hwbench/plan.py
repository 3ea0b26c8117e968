"""Which configurations to measure on this device: backend (and ONNX Runtime provider) x precision x batch size.

A configuration that cannot run here is not dropped silently: it is planned with the reason it is skipped, so a
report says "TensorRT: not installed" instead of pretending the device has only a CPU.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.bundle import Bundle
from runtime.errors import BackendUnavailable, ConfigError
from runtime.runners import BACKENDS, create_runner
from runtime.runners.base import Runner

FP16_ONNX = "model.fp16.onnx"
PRECISIONS = ("fp32", "fp16")
# ONNX Runtime execution providers worth measuring when this build offers them, with the options that make
# them comparable: an engine cache so TensorRT-EP builds once, FP16 only when asked for.
ORT_DEVICES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "trt": "TensorrtExecutionProvider"}


@dataclass
class Config:
    backend: str
    precision: str
    batch: int
    device: str = ""  # ONNX Runtime provider family (cpu, cuda, trt); empty for other backends
    model_file: str = "model.onnx"
    skip_reason: str | None = None
    runner_options: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        backend = f"{self.backend}[{self.device}]" if self.device else self.backend
        return f"{backend}/{self.precision}/b{self.batch}"


def batch_sizes(bundle: Bundle, requested: list[int] | None) -> list[int]:
    """Batch sizes inside the manifest's range: the requested ones, or min, opt and max."""
    b = bundle.manifest.batch
    lo, hi = (b.min, b.max) if b.dynamic else (1, 1)
    if requested:
        bad = [n for n in requested if not lo <= n <= hi]
        if bad:
            raise ConfigError(f"batch size(s) {bad} outside the bundle's range {lo}..{hi} "
                              f"({'dynamic' if b.dynamic else 'fixed'} batch in the manifest)")
        return sorted(set(requested))
    return sorted({lo, max(lo, min(b.opt, hi)), hi})


def _ort_providers() -> set[str]:
    try:
        import onnxruntime as ort  # noqa: PLC0415
    except ImportError:
        return set()
    return set(ort.get_available_providers())


def backend_status(backend: str) -> str | None:
    """None when `backend` can run here, else why not (with what to install)."""
    if backend not in BACKENDS:
        return f"unknown backend (known: {', '.join(BACKENDS)})"
    if backend == "onnxruntime":
        return None if importlib.util.find_spec("onnxruntime") else BACKENDS[backend][2]
    if backend == "tensorrt":
        missing = [m for m in ("tensorrt", "pycuda") if importlib.util.find_spec(m) is None]
        return f"{', '.join(missing)} not installed; {BACKENDS[backend][2]}" if missing else None
    if backend == "coreml":
        if sys.platform != "darwin":
            return "Core ML prediction needs macOS"
        return None if importlib.util.find_spec("coremltools") else BACKENDS[backend][2]
    return None


def _coreml_package(bundle: Bundle) -> tuple[str | None, str | None]:
    """(package path, precision it was converted at) from the manifest; a package holds one precision only."""
    info = bundle.manifest.extras.get("coreml") or {}
    if info.get("package"):
        return str(info["package"]), info.get("precision")
    names = sorted({f.split("/")[1] for f in bundle.manifest.files if f.startswith("coreml/") and f.count("/") >= 2})
    return (f"coreml/{names[0]}", None) if names else (None, None)


def plan(bundle: Bundle, backends: list[str] | None = None, precisions: list[str] | None = None,
         batches: list[int] | None = None, engine_cache: Path | None = None) -> list[Config]:
    """Every configuration to measure, skipped ones included with their reason."""
    precisions = precisions or list(PRECISIONS)
    for p in precisions:
        if p not in PRECISIONS:
            raise ConfigError(f"precision {p!r} is not one of {', '.join(PRECISIONS)}")
    unknown = [b for b in backends or [] if b not in BACKENDS]
    if unknown:
        raise ConfigError(f"unknown backend(s) {unknown}; known: {', '.join(BACKENDS)}")
    sizes = batch_sizes(bundle, batches)
    has_fp16_onnx = FP16_ONNX in bundle.manifest.files
    configs: list[Config] = []
    for backend in backends or list(BACKENDS):
        reason = backend_status(backend)
        if backend == "onnxruntime" and reason is None:
            providers = _ort_providers()
            devices = [d for d, prov in ORT_DEVICES.items() if prov in providers]
            for device in devices:
                for p in precisions:
                    model_file = FP16_ONNX if p == "fp16" and device != "trt" else "model.onnx"
                    why = None
                    if p == "fp16" and device != "trt" and not has_fp16_onnx:
                        why = f"the bundle has no {FP16_ONNX} (export with --fp16)"
                    opts: dict[str, Any] = {"providers": [ORT_DEVICES[device], "CPUExecutionProvider"]
                                            if device != "cpu" else ["CPUExecutionProvider"]}
                    if device == "trt":
                        trt_opts: dict[str, Any] = {"trt_fp16_enable": p == "fp16"}
                        if engine_cache is not None:
                            trt_opts.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(engine_cache),
                                            trt_timing_cache_enable=True)
                        opts["providers"] = [("TensorrtExecutionProvider", trt_opts), "CUDAExecutionProvider",
                                             "CPUExecutionProvider"]
                    for n in sizes:
                        configs.append(Config(backend, p, n, device, model_file, why, dict(opts)))
            continue
        for p in precisions:
            model_file, why = "model.onnx", reason
            opts = {}
            if backend == "tensorrt":
                opts = {"precision": p}
                if engine_cache is not None:
                    opts["cache_dir"] = engine_cache
            elif backend == "coreml":
                pkg, pkg_precision = _coreml_package(bundle)
                model_file = pkg or "coreml/"
                if why is not None:
                    pass  # the backend cannot run here at all: that is the reason to give
                elif pkg is None:
                    why = "the bundle has no Core ML package (export with --coreml)"
                elif pkg_precision is not None and pkg_precision != p:
                    why = f"the bundle's Core ML package is {pkg_precision} (export --coreml-precision {p} for {p})"
            for n in sizes:
                configs.append(Config(backend, p, n, "", model_file, why, dict(opts)))
    return configs


def make_runner(bundle: Bundle, config: Config) -> Runner:
    """The runner of one configuration; a backend whose constructor does not accept these options is reported as
    unavailable rather than crashing the whole benchmark."""
    try:
        return create_runner(config.backend, bundle.path(config.model_file), **config.runner_options)
    except TypeError as err:
        raise BackendUnavailable(f"{config.backend} runner does not accept {sorted(config.runner_options)}: {err}") \
            from err
