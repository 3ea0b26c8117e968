"""The gate into the engine cache: run a freshly built engine on reference.npz and judge it with the same rules
as every other artifact (`runtime.parity.compare`, kind "tensorrt")."""

from __future__ import annotations

import time
from pathlib import Path

from runtime.bundle import Bundle
from runtime.loaders.tensorrt.profile import Profile
from runtime.manifest import ParityCheck
from runtime.parity import Reference, compare, tolerances_for
from runtime.runners.base import run_batched
from runtime.runners.tensorrt import TensorRTRunner

# An engine is judged like every other artifact of its precision (runtime.parity.tolerances_for): FP32 (TF32 off)
# element-wise, FP16 and INT8 at task level.
__all__ = ["check_engine", "tolerances_for"]


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
