"""Build a serialized TensorRT engine from an ONNX file: workspace limit, optimisation profile, persisted timing
cache, progress through `IProgressMonitor`, and parser/builder errors turned into messages that name the problem.

Written against the TensorRT 10.x/11.x Python API; `tensorrt` is imported only when a build starts.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from runtime.errors import BuildCancelled, ModelRejected
from runtime.fsio import atomic_write_bytes
from runtime.loaders.tensorrt.profile import Profile
from runtime.loaders.tensorrt.versions import BuildPlan, network_flags
from runtime.runners.tensorrt import import_tensorrt

Progress = Callable[[str], None]


class BuildSettings(BaseModel):
    """How to build; part of the CLI and of the daemon's runner options."""

    model_config = ConfigDict(extra="forbid")
    precision: str = Field("auto", description="fp32 | fp16 | int8 | auto (fp16 where this TensorRT can, else fp32)")
    workspace_mb: int = Field(1024, ge=16, description="builder workspace memory pool limit, MiB")
    max_batch: int | None = Field(None, ge=1, description="largest batch of the profile (default: the manifest's)")
    timing_cache: Path | None = Field(None, description="timing cache file (default: one per GPU in the cache dir)")
    optimization_level: int | None = Field(None, ge=0, le=5, description="builder optimisation level (default 3)")
    time_limit_s: float | None = Field(None, gt=0, description="cancel a build that takes longer than this")


class ProgressReporter:
    """Turns TensorRT's nested build phases into progress lines, throttled per phase; also the cancel switch
    (TensorRT stops the build when `step_complete` returns False)."""

    def __init__(self, report: Progress, every_s: float = 2.0, cancel: threading.Event | None = None,
                 deadline: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.report, self.every_s, self.cancel, self.deadline, self.clock = report, every_s, cancel, deadline, clock
        self.phases: dict[str, dict[str, Any]] = {}
        self.stopped_because: str | None = None

    def _depth(self, parent: str | None) -> int:
        depth = 0
        while parent is not None and parent in self.phases:
            depth += 1
            parent = self.phases[parent]["parent"]
        return depth

    def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
        self.phases[phase_name] = {"parent": parent_phase, "steps": int(num_steps), "last": self.clock(),
                                   "start": self.clock()}
        self.report(f"{'  ' * self._depth(parent_phase)}[tensorrt] {phase_name} (0/{num_steps})")

    def step_complete(self, phase_name: str, step: int) -> bool:
        now = self.clock()
        info = self.phases.get(phase_name)
        if info is not None and now - info["last"] >= self.every_s:
            info["last"] = now
            self.report(f"{'  ' * self._depth(info['parent'])}[tensorrt] {phase_name} ({step + 1}/{info['steps']})")
        if self.cancel is not None and self.cancel.is_set():
            self.stopped_because = "cancelled"
        elif self.deadline is not None and now > self.deadline:
            self.stopped_because = "time limit reached"
        return self.stopped_because is None

    def phase_finish(self, phase_name: str) -> None:
        info = self.phases.pop(phase_name, None)
        if info is not None:
            self.report(f"{'  ' * self._depth(info['parent'])}[tensorrt] {phase_name} done in "
                        f"{self.clock() - info['start']:.1f} s")


def progress_monitor(trt: Any, reporter: ProgressReporter) -> Any:
    """An `IProgressMonitor` (TensorRT 10.x+) forwarding to `reporter`; the class is made here because its base
    class exists only once tensorrt is imported."""

    class Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            reporter.phase_start(phase_name, parent_phase, num_steps)

        def step_complete(self, phase_name: str, step: int) -> bool:
            return reporter.step_complete(phase_name, step)

        def phase_finish(self, phase_name: str) -> None:
            reporter.phase_finish(phase_name)

    return Monitor()


def capture_logger(trt: Any, progress: Progress) -> Any:
    """A TensorRT logger that keeps errors for the exception message and forwards warnings as progress."""

    class Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            sev = trt.ILogger.Severity
            if severity in (sev.INTERNAL_ERROR, sev.ERROR):
                self.errors.append(msg)
                progress(f"[tensorrt] error: {msg}")
            elif severity == sev.WARNING:
                progress(f"[tensorrt] warning: {msg}")

    return Logger()


@dataclass
class BuildResult:
    engine: bytes
    seconds: float
    timing_cache: Path | None
    timing_cache_loaded: bool
    notes: list[str]


def parse_onnx(trt: Any, builder: Any, onnx_path: Path, plan: BuildPlan, logger: Any) -> tuple[Any, Any]:
    network = builder.create_network(network_flags(trt, plan))
    parser = trt.OnnxParser(network, logger)
    # parse_from_file (not parse(bytes)) so external weight files next to the model are found.
    if not parser.parse_from_file(str(onnx_path)):
        errors = []
        for i in range(parser.num_errors):
            e = parser.get_error(i)
            errors.append(f"node {e.node()} ({e.node_name() if hasattr(e, 'node_name') else ''}"
                          f"{' ' + e.node_operator() if hasattr(e, 'node_operator') else ''}): {e.desc()}")
        raise ModelRejected(f"TensorRT's ONNX parser rejected {onnx_path.name}: {'; '.join(errors) or 'no detail'}")
    return network, parser


def apply_profile(builder: Any, network: Any, config: Any, profile: Profile) -> None:
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    names = [t.name for t in inputs]
    if profile.input not in names:
        raise ModelRejected(f"the network has inputs {names}, the manifest names {profile.input!r}")
    tensor = inputs[names.index(profile.input)]
    shape = tuple(tensor.shape)
    if len(shape) != len(profile.max):
        raise ModelRejected(f"input {profile.input!r} has rank {len(shape)} in the network, the profile {profile.max}")
    for dim, lo, hi in zip(shape, profile.min, profile.max):
        if dim >= 0 and not lo == hi == dim:
            raise ModelRejected(f"input {profile.input!r} has fixed shape {shape}; profile {profile.key()} disagrees")
    if any(d < 0 for d in shape):
        p = builder.create_optimization_profile()
        p.set_shape(profile.input, profile.min, profile.opt, profile.max)
        config.add_optimization_profile(p)


def _load_timing_cache(config: Any, path: Path | None) -> tuple[Any, bytes, bool]:
    data = path.read_bytes() if path is not None and path.is_file() else b""
    cache = config.create_timing_cache(data)
    if config.set_timing_cache(cache, False):
        return cache, data, bool(data)
    # Written by another TensorRT or GPU (ignore_mismatch=False refuses it): start empty, overwrite on save.
    cache = config.create_timing_cache(b"")
    config.set_timing_cache(cache, False)
    return cache, data, False


def _save_timing_cache(config: Any, path: Path, loaded: bytes) -> None:
    cache = config.get_timing_cache()
    on_disk = path.read_bytes() if path.is_file() else b""
    if on_disk and on_disk != loaded:
        # Another build finished meanwhile: merge its timings instead of overwriting them. ignore_mismatch=False:
        # a cache from another device is never merged (it is what we refused at load, or foreign), only replaced.
        cache.combine(config.create_timing_cache(on_disk), False)
    atomic_write_bytes(path, bytes(cache.serialize()))


def build_engine(onnx_path: Path, plan: BuildPlan, profile: Profile, settings: BuildSettings,
                 timing_cache: Path | None = None, progress: Progress = lambda _m: None,
                 cancel: threading.Event | None = None, trt: Any = None) -> BuildResult:
    """Parse, configure and build; return the serialized engine. Raises ModelRejected when TensorRT cannot build
    it (the message carries TensorRT's own errors) and BuildCancelled when stopped."""
    trt = trt or import_tensorrt()
    start = time.monotonic()
    logger = capture_logger(trt, progress)
    builder = trt.Builder(logger)
    network, _parser = parse_onnx(trt, builder, Path(onnx_path), plan, logger)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_mb << 20)
    for name in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    for name in plan.clear_flags:
        flag = getattr(trt.BuilderFlag, name, None)
        if flag is not None:
            config.clear_flag(flag)
    if settings.optimization_level is not None:
        config.builder_optimization_level = settings.optimization_level
    apply_profile(builder, network, config, profile)
    loaded, cache_loaded = b"", False
    if timing_cache is not None:
        _, loaded, cache_loaded = _load_timing_cache(config, timing_cache)
        progress(f"[tensorrt] timing cache {timing_cache} ({'reused' if cache_loaded else 'new'})")
    deadline = start + settings.time_limit_s if settings.time_limit_s else None
    reporter = ProgressReporter(progress, cancel=cancel, deadline=deadline)
    if hasattr(trt, "IProgressMonitor"):
        config.progress_monitor = progress_monitor(trt, reporter)
    progress(f"[tensorrt] building {plan.precision} engine from {Path(onnx_path).name} with TensorRT {plan.version}, "
             f"profile {profile.key()}, workspace {settings.workspace_mb} MiB")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        if reporter.stopped_because:
            raise BuildCancelled(f"TensorRT build of {Path(onnx_path).name} stopped: {reporter.stopped_because}")
        raise ModelRejected(f"TensorRT could not build {Path(onnx_path).name} ({plan.precision}): "
                            f"{'; '.join(logger.errors[-5:]) or 'build_serialized_network returned None'}")
    if timing_cache is not None:
        _save_timing_cache(config, timing_cache, loaded)
    engine = bytes(serialized)
    return BuildResult(engine, time.monotonic() - start, timing_cache, cache_loaded, list(plan.notes))
