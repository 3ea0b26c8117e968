"""The gate into the engine cache: run a freshly built engine on reference.npz and judge it with the same rules
as every other artifact (`runtime.parity.compare`, kind "tensorrt")."""

from __future__ import annotations

import time
from pathlib import Path

from runtime.bundle import Bundle
from runtime.loaders.tensorrt.profile import Profile
from runtime.manifest import ParityCheck
from runtime.parity import Reference, compare
from runtime.runners.base import run_batched
from runtime.runners.tensorrt import TensorRTRunner

# FP32 (TF32 off) differs from ONNX Runtime only by kernel order: a relative error above 1e-3 of the output's peak
# is a wrong engine, not rounding. Reduced precisions are judged at task level, like the FP16 ONNX at export, with
# INT8 allowed a wider score band because Q/DQ rounding moves scores more than FP16 does.
ELEMENTWISE = {"fp32": {"max_rel_to_peak": 1e-3}, "fp16": None, "int8": None}
TASK = {"fp32": {"score": 0.02}, "fp16": {"score": 0.05}, "int8": {"score": 0.1}}


def tolerances_for(precision: str) -> tuple[dict[str, float] | None, dict[str, float]]:
    """(element-wise limits or None, task-level tolerances) for an engine of `precision`."""
    if precision not in TASK:
        raise ValueError(f"unknown precision {precision!r}")
    return ELEMENTWISE[precision], dict(TASK[precision])


def check_engine(engine: bytes | Path, bundle: Bundle, precision: str, profile: Profile, device: int = 0,
                 artifact: str = "tensorrt-engine") -> ParityCheck:
    """Run `engine` on every reference input (in batches the profile accepts) and compare with the reference."""
    manifest = bundle.manifest
    reference = Reference.from_arrays(bundle.reference())
    elementwise, task = tolerances_for(precision)
    runner = TensorRTRunner(engine if isinstance(engine, bytes) else Path(engine), device=device)
    start = time.perf_counter()
    with runner:
        outputs = run_batched(runner, manifest.input.name, reference.inputs, profile.batch[2])
    return compare(manifest, reference, outputs, artifact=artifact, kind="tensorrt", precision=precision,
                   elementwise=elementwise, task=task, seconds=time.perf_counter() - start)
