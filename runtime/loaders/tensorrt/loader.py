"""The loader a TensorRT runner is handed for a bundle: a checked engine from the engine cache, built on this device
and checked against reference.npz on first use (`prepare_engine`). Calling it returns the engine's bytes.

This is the one place the device agent, hwbench, the daemon's runner and `shadowline export tensorrt` get engines
from, so every path builds, checks and caches the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runtime.bundle import load_bundle
from runtime.loaders.tensorrt.builder import BuildSettings, Progress
from runtime.loaders.tensorrt.cache import EngineCache, default_cache_dir
from runtime.loaders.tensorrt.prepare import PreparedEngine, prepare_engine
from runtime.signing import TrustStore


class EngineFromBundle:
    """Callable: the serialized engine for `bundle` (its directory, tar, or its model.onnx path) on this device."""

    def __init__(self, bundle: Path | str, *, precision: str = "auto", cache_dir: Path | str | None = None,
                 workspace_mb: int = 1024, max_batch: int | None = None, timing_cache: Path | str | None = None,
                 cache_max_mb: int | None = None, device: int = 0, trust_store: TrustStore | None = None,
                 rebuild: bool = False, progress: Progress | None = None) -> None:
        path = Path(bundle)
        self.bundle = path.parent if path.suffix == ".onnx" else path
        self.settings = BuildSettings(precision=precision, workspace_mb=workspace_mb, max_batch=max_batch,
                                      timing_cache=Path(timing_cache) if timing_cache else None)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.cache_max_bytes = cache_max_mb << 20 if cache_max_mb else None
        self.device, self.trust_store, self.rebuild = device, trust_store, rebuild
        self.progress: Progress = progress or (lambda _m: None)
        self.prepared: PreparedEngine | None = None

    def __call__(self) -> bytes:
        cache = EngineCache(self.cache_dir or default_cache_dir(), max_bytes=self.cache_max_bytes)
        with load_bundle(self.bundle, self.trust_store) as bundle:
            self.prepared = prepare_engine(bundle, cache, self.settings, self.device, self.progress,
                                           rebuild=self.rebuild)
        return self.prepared.path.read_bytes()

    def summary(self) -> dict[str, Any] | None:
        """What was prepared (cache hit or build, key, plan, profile, parity), once called."""
        if self.prepared is None:
            return None
        d = {k: v for k, v in self.prepared.summary().items() if k != "parity"}
        d["parity_passed"] = self.prepared.check.passed if self.prepared.check else "checked when cached"
        return d
