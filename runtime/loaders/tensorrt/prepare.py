"""A checked engine for a bundle on this device: from the cache when one exists, else built, checked against
reference.npz, and only then accepted into the cache. This is the `prepare` step of activation."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.bundle import Bundle
from runtime.errors import ParityError
from runtime.loaders.tensorrt.builder import BuildSettings, Progress, build_engine, import_tensorrt
from runtime.loaders.tensorrt.cache import CacheKey, EngineCache
from runtime.loaders.tensorrt.check import check_engine
from runtime.loaders.tensorrt.device import DeviceInfo, detect
from runtime.loaders.tensorrt.profile import Profile, profile_for
from runtime.loaders.tensorrt.versions import BuildPlan, TrtVersion, installed_version, plan_build, resolve_precision
from runtime.manifest import ParityCheck


@dataclass
class PreparedEngine:
    path: Path
    key: CacheKey
    plan: BuildPlan
    profile: Profile
    device: DeviceInfo
    cache_hit: bool
    build_seconds: float | None = None
    check: ParityCheck | None = None
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {"engine": str(self.path), "cache_hit": self.cache_hit, "key": self.key.model_dump(),
                "digest": self.key.digest, "onnx": self.plan.onnx_file, "precision": self.plan.precision,
                "strongly_typed": self.plan.strongly_typed, "builder_flags": list(self.plan.builder_flags),
                "profile": {"input": self.profile.input, "min": self.profile.min, "opt": self.profile.opt,
                            "max": self.profile.max},
                "device": self.device.model_dump(), "jetpack": self.device.jetpack,
                "build_seconds": self.build_seconds,
                "parity": self.check.model_dump() if self.check else None, "notes": self.notes}


def engine_key(bundle: Bundle, plan: BuildPlan, profile: Profile, device: DeviceInfo) -> CacheKey:
    return CacheKey(onnx_sha256=bundle.manifest.files[plan.onnx_file].sha256, trt_version=str(plan.version),
                    compute_capability=device.compute_capability, platform=device.platform,
                    precision=plan.precision, profile=profile.key())


def plan_for(bundle: Bundle, settings: BuildSettings, version: TrtVersion) -> tuple[BuildPlan, Profile]:
    files = set(bundle.manifest.files)
    precision = resolve_precision(version, settings.precision, files)
    return plan_build(version, precision, files, bundle.root), profile_for(bundle.manifest, settings.max_batch)


def prepare_engine(bundle: Bundle, cache: EngineCache, settings: BuildSettings | None = None, device: int = 0,
                   progress: Progress = lambda _m: None, cancel: threading.Event | None = None,
                   rebuild: bool = False, trt: Any = None, device_info: DeviceInfo | None = None) -> PreparedEngine:
    """Return a checked engine for `bundle`. A build whose engine disagrees with the reference raises ParityError
    and leaves the cache unchanged."""
    settings = settings or BuildSettings()
    trt = trt or import_tensorrt()
    version = installed_version(trt)
    info = device_info or detect(device)
    plan, profile = plan_for(bundle, settings, version)
    key = engine_key(bundle, plan, profile, info)
    if rebuild:
        cache.remove(key)
    hit = cache.get(key)
    if hit is not None:
        progress(f"[tensorrt] engine cache hit {key.digest} ({plan.precision}, {profile.key()})")
        return PreparedEngine(hit, key, plan, profile, info, cache_hit=True, notes=list(plan.notes))
    timing = settings.timing_cache or cache.timing_cache_path(key)
    result = build_engine(bundle.root / plan.onnx_file, plan, profile, settings, timing, progress, cancel, trt=trt)
    progress(f"[tensorrt] built in {result.seconds:.1f} s; checking against reference.npz")
    check = check_engine(result.engine, bundle, plan.precision, profile, device,
                         artifact=f"engine:{key.digest}")
    progress(f"[tensorrt] parity {'passed' if check.passed else 'FAILED'}: {check.stats}")
    if not check.passed:
        raise ParityError(f"the TensorRT {plan.precision} engine for {bundle.manifest.bundle_id} disagrees with "
                          f"reference.npz, not cached: {check.detail}")
    started = time.time()
    path = cache.put(key, result.engine, build_seconds=result.seconds,
                     meta={"bundle": bundle.manifest.bundle_id, "onnx": plan.onnx_file, "notes": plan.notes,
                           "parity": {"passed": check.passed, "stats": check.stats}, "checked_at": started,
                           "gpu": info.gpu_name})
    return PreparedEngine(path, key, plan, profile, info, cache_hit=False, build_seconds=result.seconds,
                          check=check, notes=list(plan.notes))
