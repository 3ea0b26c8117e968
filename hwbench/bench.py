"""Measure one bundle in every planned configuration: load (and engine build) time, warm-up excluded, per-call
latency statistics, throughput and the resident-memory high-water mark.

The inputs are the bundle's own reference images (real photographs, preprocessed by the manifest's rules), cycled
to fill a batch, so a detector sees real content rather than zeros that some kernels short-circuit.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from hwbench.plan import Config, make_runner
from runtime.bundle import Bundle
from runtime.errors import BackendUnavailable, ShadowlineError
from runtime.runners.base import Runner
from runtime.stats import percentile
from runtime.tegrastats import TegrastatsSampler

CLEAR_REFS = Path("/proc/self/clear_refs")
STATUS = Path("/proc/self/status")


class BenchOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    warmup: int = Field(3, ge=0, description="calls run first and excluded from every figure")
    min_iterations: int = Field(20, ge=1, description="timed calls at least")
    max_iterations: int = Field(1000, ge=1, description="timed calls at most")
    min_seconds: float = Field(2.0, ge=0, description="keep timing until this much time has passed")
    threads: int | None = Field(None, ge=1, description="intra-op threads (ONNX Runtime); default: all cores")
    power: bool = Field(True, description="sample tegrastats during timed calls when it exists (Jetson)")


class Stats(BaseModel):
    avg: float
    p50: float
    p95: float
    p99: float
    max: float
    min: float


class ConfigResult(BaseModel):
    id: str
    backend: str
    device: str
    precision: str
    batch: int
    model_file: str
    status: str = Field(description="ok, skipped or failed")
    reason: str | None = None
    runner: dict = Field(default_factory=dict, description="what actually ran: providers, engine, threads")
    load_ms: float | None = Field(None, description="runner load, engine build included when it happened")
    build_ms: float | None = Field(None, description="engine build alone, when the backend builds one")
    iterations: int = 0
    warmup: int = 0
    latency_ms: Stats | None = Field(None, description="per call (one batch)")
    latency_per_image_ms: Stats | None = None
    throughput_ips: float | None = Field(None, description="images per second over the timed calls")
    peak_rss_mb: float | None = Field(None, description="resident-memory high-water mark during load and run")
    peak_rss_scope: str | None = Field(None, description="'config' (reset before load) or 'process'")
    power: dict | None = Field(None, description="tegrastats summary over the timed calls (Jetson)")
    samples_ms: list[float] = Field(default_factory=list, description="every timed call's latency")


def stats(samples: list[float]) -> Stats:
    a = np.asarray(samples, dtype=np.float64)
    p50, p95, p99 = (percentile(samples, q) for q in (50, 95, 99))
    return Stats(avg=round(float(a.mean()), 4), p50=round(float(p50), 4), p95=round(float(p95), 4),
                 p99=round(float(p99), 4), max=round(float(a.max()), 4), min=round(float(a.min()), 4))


def reset_peak_rss() -> bool:
    """Linux resets VmHWM on writing 5 to clear_refs (since 4.0); elsewhere the peak is the process's."""
    try:
        CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def make_feeds(bundle: Bundle, runner: Runner, batch: int) -> dict[str, np.ndarray]:
    """A batch of the bundle's preprocessed reference images, in the dtype the loaded model wants."""
    m = bundle.manifest
    ref = bundle.reference()
    images = ref["input"]
    idx = [i % len(images) for i in range(batch)]
    x = images[idx]
    meta = {t.name: t for t in runner.input_metadata()}
    dtype = meta[m.input.name].dtype if m.input.name in meta else "float32"
    return {m.input.name: np.ascontiguousarray(x.astype(dtype))}


def measure(bundle: Bundle, config: Config, options: BenchOptions,
            clock: Callable[[], float] = time.perf_counter,
            progress: Callable[[str], None] | None = None) -> ConfigResult:
    """Run one configuration; an unavailable backend or a failing model is a result with a reason, never a crash."""
    base = dict(id=config.id, backend=config.backend, device=config.device, precision=config.precision,
                batch=config.batch, model_file=config.model_file)
    if config.skip_reason:
        return ConfigResult(**base, status="skipped", reason=config.skip_reason)
    scoped = reset_peak_rss()
    runner: Runner | None = None
    sampler: TegrastatsSampler | None = None
    try:
        opts = dict(config.runner_options)
        if config.backend == "onnxruntime" and options.threads:
            opts["threads"] = options.threads
        if config.backend == "tensorrt" and progress is not None:
            # a cold engine build can take minutes on a Jetson (FIELD-NOTES): show its steps
            opts["progress"] = lambda msg, cid=config.id: progress(f"{cid}: {msg}")
        config = Config(config.backend, config.precision, config.batch, config.device, config.model_file,
                        None, opts)
        runner = make_runner(bundle, config)
        t0 = clock()
        runner.load()
        load_ms = (clock() - t0) * 1000
        # TensorRT reports its engine build (None on an engine-cache hit); ONNX Runtime builds no separate engine
        build_s = runner.describe().get("build_seconds")
        feeds = make_feeds(bundle, runner, config.batch)
        for _ in range(options.warmup):
            runner.infer(feeds)
        if options.power and TegrastatsSampler().available:
            sampler = TegrastatsSampler().start()
        samples: list[float] = []
        started = clock()
        while len(samples) < options.max_iterations:
            t = clock()
            runner.infer(feeds)
            samples.append((clock() - t) * 1000)
            if len(samples) >= options.min_iterations and clock() - started >= options.min_seconds:
                break
        power = sampler.stop() if sampler is not None else None
        sampler = None
        described = runner.describe()
    except ShadowlineError as err:
        status = "skipped" if isinstance(err, BackendUnavailable) else "failed"
        return ConfigResult(**base, status=status, reason=str(err))
    except Exception as err:  # a backend library's own error: report it, measure the other configurations
        return ConfigResult(**base, status="failed", reason=f"{type(err).__name__}: {err}")
    finally:
        if sampler is not None:  # a failure inside the timed loop must not leave tegrastats running
            sampler.stop()
        if runner is not None:
            runner.close()
    per_call = stats(samples)
    per_image = stats([s / config.batch for s in samples])
    total_s = sum(samples) / 1000
    return ConfigResult(
        **base, status="ok", runner=_jsonable(described), load_ms=round(load_ms, 3),
        build_ms=round(build_s * 1000, 3) if isinstance(build_s, (int, float)) else None,
        iterations=len(samples), warmup=options.warmup, latency_ms=per_call, latency_per_image_ms=per_image,
        throughput_ips=round(config.batch * len(samples) / total_s, 3), peak_rss_mb=round(peak_rss_mb(), 1),
        peak_rss_scope="config" if scoped else "process", power=power, samples_ms=[round(s, 4) for s in samples],
    )


def _jsonable(d: dict) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}


def run(bundle: Bundle, configs: list[Config], options: BenchOptions,
        progress: Callable[[str], None] | None = None) -> list[ConfigResult]:
    results = []
    told: set[str | None] = set()
    for c in configs:
        if progress and c.skip_reason and c.skip_reason not in told:
            told.add(c.skip_reason)
            progress(f"{c.backend} {c.precision}: skipped: {c.skip_reason}")
        elif progress and not c.skip_reason:
            progress(f"{c.id}: measuring")
        r = measure(bundle, c, options, progress=progress)
        if progress and r.status == "ok":
            assert r.latency_per_image_ms is not None
            progress(f"{c.id}: p50 {r.latency_ms.p50:.2f} ms/call, {r.throughput_ips:.1f} images/s"
                     if r.latency_ms else c.id)
        elif progress and r.status != "ok" and not c.skip_reason:
            progress(f"{c.id}: {r.status}: {r.reason}")
        results.append(r)
    return results
