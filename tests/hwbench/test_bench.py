"""hwbench on the three shipped bundles with the ONNX Runtime CPU runner, checked against an independent timing
loop written here with onnxruntime alone; warm-up exclusion, the peak-memory reset, and the plan's batch range."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from hwbench import bench as benchmod
from hwbench.bench import BenchOptions, measure, peak_rss_mb
from hwbench.plan import Config, batch_sizes, plan
from hwbench.run import benchmark
from hwbench.verdict import DEFAULT_TARGETS
from runtime.bundle import load_bundle
from runtime.errors import ConfigError
from runtime.runners.onnxrt import OnnxRuntimeRunner

OPTIONS = BenchOptions(warmup=3, min_iterations=15, max_iterations=400, min_seconds=0.4)


def independent_times_ms(model: Path, x: np.ndarray, runs: int = 15) -> list[float]:
    """The same model and input, timed with nothing but onnxruntime (ORT's default threading, as hwbench's)."""
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: x}
    for _ in range(3):
        sess.run(None, feed)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, feed)
        times.append((time.perf_counter() - t) * 1000)
    return times


@pytest.fixture(scope="module")
def measured(bundles: dict[str, Path], keys) -> dict[str, tuple]:
    """name -> (hwbench result, independent timings before it, independent timings after it). Timing on both
    sides of the hwbench run brackets the load that other processes put on this shared machine meanwhile."""
    from runtime.signing import TrustStore

    out = {}
    for name, path in bundles.items():
        with load_bundle(path, TrustStore.load(keys["trust"])) as b:
            x = b.reference()["input"][:1]
            before = independent_times_ms(b.model_path, x)
            report = benchmark(b, OPTIONS, DEFAULT_TARGETS, backends=["onnxruntime"], precisions=["fp32"],
                               batches=[1])
            after = independent_times_ms(b.model_path, x)
            (c,) = report.ok()
            out[name] = (c, before, after)
    return out


@pytest.mark.exclusive  # compares timings taken minutes apart: no other test's load in between (pytest-xdist)
@pytest.mark.parametrize("name", ["pcb-aoi", "squeezenet", "yolox-nano"])
def test_report_agrees_with_independent_timing(measured, name: str):
    c, before, after = measured[name]
    assert c.status == "ok" and c.runner["active_providers"] == ["CPUExecutionProvider"]
    medians = (statistics.median(before), statistics.median(after))
    # the same work: inside 2.5x of the independent medians taken around it (other processes share these two
    # cores); a unit slip (s vs ms), timing preprocessing or another batch size would land far outside
    assert min(medians) / 2.5 < c.latency_ms.p50 < max(medians) * 2.5, (c.latency_ms, medians)
    s = c.latency_ms
    assert s.min <= s.p50 <= s.p95 <= s.p99 <= s.max
    assert s.min <= s.avg <= s.max
    assert c.iterations >= OPTIONS.min_iterations and len(c.samples_ms) == c.iterations
    assert c.throughput_ips == pytest.approx(1000 / s.avg, rel=0.01)
    assert c.load_ms is not None and c.load_ms > 0 and c.build_ms is None  # ORT builds no separate engine
    assert c.peak_rss_scope == "config" and c.peak_rss_mb > 20


class SlowStart(OnnxRuntimeRunner):
    """A real ORT runner whose first three calls are slow, like a cold GPU or a lazy allocator."""

    calls = 0

    def _infer(self, feeds):
        SlowStart.calls += 1
        if SlowStart.calls <= 3:
            time.sleep(0.3)
        return super()._infer(feeds)


def test_warmup_is_excluded(bundles, monkeypatch):
    SlowStart.calls = 0
    with load_bundle(bundles["squeezenet"]) as b:
        monkeypatch.setattr(benchmod, "make_runner", lambda bundle, config: SlowStart(bundle.model_path))
        r = measure(b, Config("onnxruntime", "fp32", 1, "cpu"), BenchOptions(warmup=3, min_iterations=5,
                                                                            min_seconds=0))
        assert r.status == "ok" and r.latency_ms.max < 300
        SlowStart.calls = 0
        r = measure(b, Config("onnxruntime", "fp32", 1, "cpu"), BenchOptions(warmup=1, min_iterations=5,
                                                                            min_seconds=0))
        assert r.latency_ms.max >= 300  # two slow calls left inside the timed loop show up


def _rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_peak_memory_is_per_configuration(bundles):
    # Relative to what this process already holds (in a full test run, other areas' models): 400 MB more are made
    # resident, then freed, leaving an earlier peak the measurement must not report.
    base = _rss_mb()
    big = np.ones(400 * 1024 * 1024 // 8)
    assert peak_rss_mb() > base + 390
    del big
    with load_bundle(bundles["squeezenet"]) as b:
        r = measure(b, Config("onnxruntime", "fp32", 1, "cpu"), BenchOptions(min_iterations=5, min_seconds=0))
    assert r.peak_rss_scope == "config"
    assert r.peak_rss_mb < base + 300, "the high-water mark still includes the memory freed before the run"


def test_batch_plan_follows_the_manifest(bundles):
    with load_bundle(bundles["pcb-aoi"]) as b:  # dynamic batch 1..8, opt 4
        assert batch_sizes(b, None) == [1, 4, 8]
        assert batch_sizes(b, [2, 2, 8]) == [2, 8]
        with pytest.raises(ConfigError, match=r"\[16\] outside the bundle's range 1..8"):
            batch_sizes(b, [1, 16])
        configs = plan(b, precisions=["fp32", "fp16"])
    ids = {c.id: c for c in configs}
    assert ids["onnxruntime[cpu]/fp16/b8"].model_file == "model.fp16.onnx"
    assert ids["tensorrt/fp32/b1"].skip_reason and "pycuda" in ids["tensorrt/fp32/b1"].skip_reason
    assert "macOS" in (ids["coreml/fp16/b4"].skip_reason or "")
    with load_bundle(bundles["squeezenet"]) as b:  # fixed batch 1
        assert batch_sizes(b, None) == [1]
        with pytest.raises(ConfigError, match="fixed batch"):
            batch_sizes(b, [4])


def test_fp16_and_batches_measured(bundles):
    with load_bundle(bundles["pcb-aoi"]) as b:
        report = benchmark(b, BenchOptions(warmup=1, min_iterations=5, min_seconds=0), DEFAULT_TARGETS,
                           backends=["onnxruntime"], batches=[1, 8])
    ok = {c.id: c for c in report.ok()}
    assert set(ok) == {"onnxruntime[cpu]/fp32/b1", "onnxruntime[cpu]/fp32/b8", "onnxruntime[cpu]/fp16/b1",
                       "onnxruntime[cpu]/fp16/b8"}
    b1, b8 = ok["onnxruntime[cpu]/fp32/b1"], ok["onnxruntime[cpu]/fp32/b8"]
    # eight images per call cost more than one but less than 8x + slack per image
    assert b8.latency_ms.p50 > 2 * b1.latency_ms.p50
    assert b8.latency_per_image_ms.p50 == pytest.approx(b8.latency_ms.p50 / 8, rel=1e-3)
    assert ok["onnxruntime[cpu]/fp16/b1"].runner["model"].endswith("model.fp16.onnx")


def test_a_broken_configuration_does_not_stop_the_others(bundles):
    with load_bundle(bundles["squeezenet"]) as b:
        bad = Config("onnxruntime", "fp32", 1, "cpu", runner_options={"no_such_option": 1})
        good = Config("onnxruntime", "fp32", 1, "cpu")
        results = benchmod.run(b, [bad, good], BenchOptions(min_iterations=3, min_seconds=0))
    assert results[0].status == "skipped" and "no_such_option" in (results[0].reason or "")
    assert results[1].status == "ok"


def test_tensorrt_configuration_reaches_the_real_runner(bundles, tmp_path: Path):
    """The plan's options fit the TensorRT runner's constructor; without TensorRT here, load() is what refuses."""
    from hwbench.plan import make_runner
    from runtime.loaders.tensorrt.loader import EngineFromBundle
    from runtime.runners.tensorrt import TensorRTRunner

    with load_bundle(bundles["pcb-aoi"]) as b:
        cfg = Config("tensorrt", "fp16", 1, runner_options={"precision": "fp16", "cache_dir": tmp_path})
        runner = make_runner(b, cfg)
        assert isinstance(runner, TensorRTRunner)
        loader = runner.engine  # the runner is handed the engine cache's loader, which builds on the device
        assert isinstance(loader, EngineFromBundle)
        assert loader.settings.precision == "fp16" and loader.cache_dir == tmp_path
        r = measure(b, cfg, BenchOptions(min_iterations=1, min_seconds=0))
    assert r.status == "skipped" and ("tensorrt" in (r.reason or "").lower() or "pycuda" in (r.reason or ""))


def test_processing_on_real_images_enters_the_verdict(bundles, tmp_path: Path):
    import shutil

    from hwbench.processing import list_images
    from tests.conftest import IMAGES

    for p in sorted((IMAGES / "photos").iterdir())[:3]:
        shutil.copy(p, tmp_path / p.name)
    (tmp_path / "truncated.jpg").write_bytes((IMAGES / "photos" / "rocket.jpg").read_bytes()[:300])
    images = list_images(tmp_path)
    with load_bundle(bundles["yolox-nano"]) as b:
        report = benchmark(b, BenchOptions(warmup=1, min_iterations=5, min_seconds=0), DEFAULT_TARGETS,
                           backends=["onnxruntime"], precisions=["fp32"], images=images, image_repeats=2)
    p = report.processing
    assert p is not None and p.images == 3 and list(p.skipped) == ["truncated.jpg"]
    assert p.preprocess_ms.p50 > 0 and p.decode_ms.p50 > 0 and p.read_ms.p50 > 0
    (c,) = report.ok()
    v = {x.target: x for x in report.verdicts}
    assert v["realtime-line"].value == pytest.approx(c.latency_ms.p95 + p.overhead_ms, abs=1e-3)
    assert "pre/post-processing" in v["realtime-line"].requirement
    assert v["jetson-throughput"].value < c.throughput_ips  # whole frames take longer than inference alone
    with pytest.raises(ConfigError, match="no images"):
        list_images(tmp_path / "empty" if (tmp_path / "empty").mkdir() is None else tmp_path)


def test_plan_on_a_gpu_build_of_onnxruntime(bundles, tmp_path: Path, monkeypatch):
    """Where onnxruntime-gpu offers CUDA and TensorRT providers (a Jetson wheel), each is planned with the options
    that make it comparable; the provider list is what such a build reports, the planning logic is real."""
    from hwbench import plan as planmod

    monkeypatch.setattr(planmod, "_ort_providers", lambda: {"TensorrtExecutionProvider", "CUDAExecutionProvider",
                                                            "CPUExecutionProvider"})
    with load_bundle(bundles["squeezenet"]) as b:
        configs = {c.id: c for c in plan(b, backends=["onnxruntime"], engine_cache=tmp_path)}
    assert set(configs) == {f"onnxruntime[{d}]/{p}/b1" for d in ("cpu", "cuda", "trt") for p in ("fp32", "fp16")}
    cuda16 = configs["onnxruntime[cuda]/fp16/b1"]
    assert cuda16.model_file == "model.fp16.onnx"
    assert cuda16.runner_options["providers"] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    trt16 = configs["onnxruntime[trt]/fp16/b1"]
    assert trt16.model_file == "model.onnx"  # TensorRT makes FP16 itself from the FP32 graph
    name, opts = trt16.runner_options["providers"][0]
    assert name == "TensorrtExecutionProvider" and opts["trt_fp16_enable"] is True
    assert opts["trt_engine_cache_enable"] and opts["trt_engine_cache_path"] == str(tmp_path)
    assert configs["onnxruntime[trt]/fp32/b1"].runner_options["providers"][0][1]["trt_fp16_enable"] is False


def test_coreml_is_planned_at_its_package_precision(keys, tmp_path: Path, monkeypatch):
    """A Core ML package holds one precision: the other is skipped with why; on Linux both are skipped anyway,
    so the reasons are checked with the macOS check taken out of the way."""
    from hwbench import plan as planmod
    from tests.conftest import export_preset

    path = export_preset("pcb-aoi", tmp_path, keys["private"], coreml=True, coreml_precision="fp16")
    with load_bundle(path) as b:
        original = planmod.backend_status
        monkeypatch.setattr(planmod, "backend_status",
                            lambda backend: None if backend == "coreml" else original(backend))
        configs = {c.id: c for c in plan(b, backends=["coreml"], batches=[1])}
        pkg = b.manifest.extras["coreml"]["package"]
    assert configs["coreml/fp16/b1"].skip_reason is None and configs["coreml/fp16/b1"].model_file == pkg
    assert "is fp16" in (configs["coreml/fp32/b1"].skip_reason or "")
