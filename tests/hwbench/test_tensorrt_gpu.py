"""TensorRT through hwbench, on a machine with an NVIDIA GPU, TensorRT and pycuda (skipped elsewhere)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hwbench.bench import BenchOptions
from hwbench.run import benchmark
from hwbench.verdict import DEFAULT_TARGETS
from runtime.bundle import load_bundle

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("name", ["pcb-aoi", "yolox-nano"])
def test_tensorrt_configurations_are_measured(bundles, name: str, tmp_path: Path):
    with load_bundle(bundles[name]) as b:
        report = benchmark(b, BenchOptions(warmup=5, min_iterations=20, min_seconds=0.5), DEFAULT_TARGETS,
                           backends=["tensorrt", "onnxruntime"], batches=[1], engine_cache=tmp_path / "engines")
    by_id = {c.id: c for c in report.configs}
    trt = by_id["tensorrt/fp16/b1"]
    assert trt.status == "ok", trt.reason
    assert trt.load_ms is not None and trt.latency_ms is not None
    cpu = by_id["onnxruntime[cpu]/fp32/b1"]
    assert trt.latency_ms.p50 < cpu.latency_ms.p50  # a GPU engine that loses to the CPU is misbuilt
    assert report.environment.tensorrt_version is not None


def test_engine_cache_makes_the_second_load_faster(bundles, tmp_path: Path):
    opts = BenchOptions(warmup=1, min_iterations=3, min_seconds=0)
    with load_bundle(bundles["pcb-aoi"]) as b:
        first = benchmark(b, opts, DEFAULT_TARGETS, backends=["tensorrt"], precisions=["fp16"], batches=[1],
                          engine_cache=tmp_path)
        second = benchmark(b, opts, DEFAULT_TARGETS, backends=["tensorrt"], precisions=["fp16"], batches=[1],
                           engine_cache=tmp_path)
    (a,), (c,) = first.ok(), second.ok()
    assert c.load_ms < a.load_ms
