"""The activation check: a freshly loaded model must reproduce its bundle's reference outputs, fit the latency
budget, and run on images this device recently saw."""

from __future__ import annotations

import importlib.util
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge.config import OnnxRuntimeRunnerConfig
from runtime.bundle import load_bundle
from runtime.errors import ImageError, ParityError
from runtime.manifest import ParityCheck
from runtime.parity import Reference, compare, tolerances_for
from runtime.predictor import BundleModel
from runtime.processing.image import read_image
from runtime.processing.shapes import check_manifest_output
from runtime.variants import variant_precision


def pick_backend(wanted: str) -> str:
    """`auto` means TensorRT where its Python bindings exist (a Jetson), ONNX Runtime elsewhere."""
    if wanted != "auto":
        return wanted
    return "tensorrt" if importlib.util.find_spec("tensorrt") is not None else "onnxruntime"


@dataclass
class CheckResult:
    bundle: str
    parity: ParityCheck
    median_ms: float
    smoke_images: int
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        return {"bundle": self.bundle, "parity": self.parity.passed, "median_ms": round(self.median_ms, 3),
                "smoke_images": self.smoke_images, "stats": self.parity.stats, "notes": self.notes}


# How the check runs an ONNX Runtime model: with the frame path's defaults (edge/config.py, OnnxRuntimeRunnerConfig:
# one intra-op thread, no spinning), taken from that model rather than written again, so the latency the check
# measures against `latency_budget_ms` is the one frames will see. ORT's own default (a spinning thread per core) cost
# 30-50 ms of CPU for the check's five runs of the PCB model against 23 ms with one thread, measured on 2 cores: the
# spinning threads take the cores from everything else the device (or a simulator's hundred devices) does meanwhile.
ONNX_CHECK_OPTIONS: dict[str, Any] = {k: v for k, v in OnnxRuntimeRunnerConfig().runner_options().items()
                                      if k in ("threads", "session_config")}


def prepare(bundle_dir: Path, backend: str, hashes: bool = True) -> BundleModel:
    """Load the bundle for this device's backend (on a Jetson the runner builds or reuses its TensorRT engine).
    Verified with the trust store in the verify step; `hashes=False` when that step hashed these same files."""
    bundle = load_bundle(bundle_dir, hashes=hashes)
    chosen = pick_backend(backend)
    options = ONNX_CHECK_OPTIONS if chosen == "onnxruntime" else {}
    model = BundleModel(bundle, backend=chosen, **options)
    try:
        return model.load()
    except BaseException:
        bundle.close()
        raise


def check(model: BundleModel, latency_budget_ms: float | None, images: list[Path]) -> CheckResult:
    """Raise ParityError when the outputs disagree with reference.npz or the latency budget is exceeded."""
    m = model.manifest
    ref = Reference.from_arrays(model.bundle.reference())
    out_name = m.output.names[0]
    outputs, times = [], []
    for i in range(len(ref.names)):
        t0 = time.perf_counter()
        outputs.append(model.runner.infer({m.input.name: ref.inputs[i : i + 1]})[out_name])
        times.append((time.perf_counter() - t0) * 1000)
    got = {out_name: np.concatenate(outputs, axis=0)}
    check_manifest_output(m, got[out_name].shape)  # what this device's model really outputs, decodable or refused
    kind = "tensorrt" if type(model.runner).__name__.lower().startswith("tensorrt") else "onnx"
    # FP32 is the ONNX the reference came from: only accumulation order may differ between CPUs, so it is judged
    # element-wise; a reduced-precision variant (FP16, INT8) at task level with the tolerances of its precision.
    precision = variant_precision(model.variant)
    elementwise, task = tolerances_for(precision)
    parity = compare(m, ref, got, artifact=m.bundle_id, kind=kind, precision=precision, elementwise=elementwise,
                     task=task)
    if not parity.passed:
        raise ParityError(f"{m.bundle_id}: device outputs disagree with reference.npz: {parity.detail}")
    median_ms = statistics.median(times) if times else 0.0
    if latency_budget_ms is not None and median_ms > latency_budget_ms:
        raise ParityError(f"{m.bundle_id}: median latency {median_ms:.1f} ms over the budget of "
                          f"{latency_budget_ms:g} ms")
    result = CheckResult(m.bundle_id, parity, median_ms, 0)
    for path in images:
        try:
            image = read_image(path)
        except (ImageError, OSError) as err:
            # an image the daemon has since deleted or that was bad is not the new model's fault
            result.notes.append(f"smoke: skipped {path.name}: {err}")
            continue
        out = model.predict([image])[0]
        values = list(out.scores.values()) if out.scores is not None else [d.score for d in out.detections]
        if not all(np.isfinite(values)):
            raise ParityError(f"{m.bundle_id}: smoke run on {path.name} produced non-finite scores")
        result.smoke_images += 1
    return result
