"""The model variants of a bundle and the choice of one on the device.

A bundle holds the FP32 model and, where the export made and checked them, an FP16 model, a Q/DQ INT8 model for
TensorRT (signed INT8, zero points 0, per-channel weights) and an INT8 model for ONNX Runtime's CPU kernels
(unsigned activations). A variant is usable only when its export parity check passed. With `precision: auto` the
device times every usable variant on its own hardware, checks each against reference.npz there, and runs the
fastest that passes; every prediction records which variant ran.

TensorRT is different: its engine is built on the device from one of these ONNX files, and the engine loader chooses
the file for the requested precision (runtime/loaders/tensorrt/versions.py), so here it only passes the precision on.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from runtime.bundle import Bundle
from runtime.errors import ConfigError
from runtime.manifest import Manifest, ParityCheck
from runtime.parity import Reference, compare, tolerances_for
from runtime.runners.base import Runner, run_batched

PRECISIONS = ("auto", "fp32", "fp16", "int8")


@dataclass(frozen=True)
class Variant:
    name: str  # recorded in every prediction
    file: str  # in the bundle
    precision: str  # fp32 | fp16 | int8
    backends: tuple[str, ...]  # where this file is meant to run (ONNX Runtime can run them all on the CPU)


# In order of preference when an explicit precision matches several (INT8: the CPU kernels before the Q/DQ model,
# which ONNX Runtime's CPU provider mostly runs as FP32 between Q/DQ pairs).
VARIANTS: tuple[Variant, ...] = (
    Variant("fp32", "model.onnx", "fp32", ("onnxruntime", "tensorrt")),
    Variant("fp16", "model.fp16.onnx", "fp16", ("onnxruntime", "tensorrt")),
    Variant("int8-cpu", "model.int8.cpu.onnx", "int8", ("onnxruntime",)),
    Variant("int8", "model.int8.onnx", "int8", ("tensorrt", "onnxruntime")),
)
BY_NAME = {v.name: v for v in VARIANTS}


def export_check(manifest: Manifest, variant: Variant) -> ParityCheck | None:
    """The export's parity record of this variant's file (None for FP32: it is the reference itself)."""
    checks = [c for c in manifest.parity if c.artifact == variant.file]
    return checks[-1] if checks else None


def usable(manifest: Manifest) -> tuple[list[Variant], dict[str, str]]:
    """(variants present whose export parity passed, {variant: why not} for the others present or missing)."""
    ok, why = [], {}
    for v in VARIANTS:
        if v.file not in manifest.files:
            why[v.name] = f"the bundle has no {v.file}"
            continue
        check = export_check(manifest, v)
        if v.precision != "fp32" and (check is None or not check.passed):
            why[v.name] = f"{v.file} has no passing parity check in the manifest"
            continue
        ok.append(v)
    return ok, why


def candidates(manifest: Manifest, precision: str) -> list[Variant]:
    """The variants that may serve `precision` on ONNX Runtime; refuses a precision the bundle cannot serve."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    ok, why = usable(manifest)
    if precision == "auto":
        return ok
    found = [v for v in ok if v.precision == precision]
    if not found:
        reasons = "; ".join(f"{k}: {v}" for k, v in why.items() if BY_NAME[k].precision == precision)
        raise ConfigError(f"{manifest.bundle_id}: no {precision} variant to run ({reasons}); export it with "
                          f"--{precision} or ask for precision auto")
    return found[:1]


@dataclass
class Choice:
    """The variant a device runs, with its loaded runner and the evidence for the choice."""

    variant: Variant
    runner: Runner
    median_ms: dict[str, float] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict[str, object]:
        return {"variant": self.variant.name, "file": self.variant.file, "median_ms": self.median_ms,
                "rejected": self.rejected}


def _device_check(manifest: Manifest, reference: Reference, runner: Runner, variant: Variant) -> ParityCheck:
    max_batch = manifest.batch.max if manifest.batch.dynamic else 1
    outputs = run_batched(runner, manifest.input.name, reference.inputs, max_batch)
    elementwise, task = tolerances_for(variant.precision)
    return compare(manifest, reference, outputs, artifact=variant.file, kind="onnx", precision=variant.precision,
                   elementwise=elementwise, task=task)


def median_latency_ms(runners: Mapping[str, Runner], feed_name: str, x: np.ndarray, budget_s: float,
                      rounds: int) -> dict[str, float]:
    """Median latency per runner, measured in interleaved rounds (one run of each per round) so a burst of load on
    a shared CPU hits every variant alike; stops early when the time budget is spent (at least 3 rounds)."""
    for r in runners.values():  # warm-up: first runs allocate and pick kernels
        r.infer({feed_name: x})
    times: dict[str, list[float]] = {k: [] for k in runners}
    deadline = time.monotonic() + budget_s
    for i in range(rounds):
        for k, r in runners.items():
            t0 = time.perf_counter()
            r.infer({feed_name: x})
            times[k].append((time.perf_counter() - t0) * 1000)
        if i >= 2 and time.monotonic() > deadline:
            break
    return {k: statistics.median(v) for k, v in times.items()}


def choose_variant(bundle: Bundle, precision: str, make_runner: Callable[[Path], Runner],
                   timings: Mapping[str, float] | None = None, budget_s: float = 3.0, rounds: int = 15) -> Choice:
    """Load the variant to run for `precision` ("fp32", "fp16", "int8" or "auto") with `make_runner(model_file)`.

    An explicit precision loads its variant (refused when the bundle has none that passed parity). `auto` checks
    every usable variant against reference.npz on this device with the tolerances of its precision, then runs the
    fastest that passed: by `timings` (median ms per variant name, e.g. from hwbench) when given, else measured here.
    FP32 is always a candidate, so `auto` never does worse than the model as exported."""
    manifest = bundle.manifest
    chosen = candidates(manifest, precision)
    if precision != "auto" or len(chosen) == 1:
        variant = chosen[0] if chosen else BY_NAME["fp32"]
        return Choice(variant, make_runner(bundle.path(variant.file)).load())
    reference = Reference.from_arrays(bundle.reference())
    loaded: dict[str, Runner] = {}
    rejected: dict[str, str] = {}
    try:
        for v in chosen:
            if v.precision == "fp32":  # the model as exported: its failures are the bundle's, not a variant's
                loaded[v.name] = make_runner(bundle.path(v.file)).load()
                continue
            runner = make_runner(bundle.path(v.file))
            try:
                check = _device_check(manifest, reference, runner.load(), v)
            except Exception as err:  # a runtime's own error types (ORT's Fail, NotImplemented) included
                runner.close()
                rejected[v.name] = f"cannot run here: {type(err).__name__}: {err}"
                continue
            if not check.passed:
                runner.close()
                rejected[v.name] = f"disagrees with the reference on this device: {check.detail}"
                continue
            loaded[v.name] = runner
        if timings is not None and all(k in timings for k in loaded):
            median = {k: float(timings[k]) for k in loaded}
        else:
            median = median_latency_ms(loaded, manifest.input.name, reference.inputs[:1], budget_s, rounds)
        best = min(loaded, key=lambda k: (median[k], k != "fp32"))
    except BaseException:
        for r in loaded.values():
            r.close()
        raise
    for k, r in loaded.items():
        if k != best:
            r.close()
    return Choice(BY_NAME[best], loaded[best], median, rejected)


def variant_precision(name: str) -> str:
    """The precision of a running variant by its recorded name ("int8-cpu" -> int8, "tensorrt-fp16" -> fp16)."""
    if name in BY_NAME:
        return BY_NAME[name].precision
    tail = name.rsplit("-", 1)[-1]
    return tail if tail in ("fp32", "fp16", "int8") else "fp32"
