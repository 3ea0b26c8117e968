"""hwbench end to end for one loaded bundle: environment, plan, measurements, verdict -> Report."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from hwbench import env as envmod
from hwbench.bench import BenchOptions, run
from hwbench.plan import plan
from hwbench.processing import measure_processing
from hwbench.report import BundleInfo, Report
from hwbench.verdict import TargetSet, judge
from runtime.bundle import Bundle


def benchmark(bundle: Bundle, options: BenchOptions, targets: TargetSet, backends: list[str] | None = None,
              precisions: list[str] | None = None, batches: list[int] | None = None,
              engine_cache: Path | None = None, progress: Callable[[str], None] | None = None,
              images: list[Path] | None = None, image_repeats: int = 3) -> Report:
    m = bundle.manifest
    environment = envmod.collect()
    configs = plan(bundle, backends, precisions, batches, engine_cache)
    results = run(bundle, configs, options, progress)
    processing = None
    if images:
        if progress:
            progress(f"pre/post-processing: {len(images)} image(s) x {image_repeats}")
        processing = measure_processing(bundle, images, image_repeats)
    judged = [{"id": r.id, "batch": r.batch, "throughput_ips": r.throughput_ips,
               "latency_ms": r.latency_ms.model_dump()}
              for r in results if r.status == "ok" and r.latency_ms is not None]
    lo, hi = (m.batch.min, m.batch.max) if m.batch.dynamic else (1, 1)
    info = BundleInfo(id=m.bundle_id, task=m.task, input_shape=list(m.input.shape),
                      model_sha256=m.files["model.onnx"].sha256, batch_range=[lo, hi])
    return Report(bundle=info, environment=environment, options=options, configs=results,
                  processing=processing,
                  verdicts=judge(targets, judged, processing.overhead_ms if processing else 0.0))
