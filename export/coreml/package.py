"""Build the Core ML package inside a staging bundle and prove it on the bundle's reference inputs."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from export.coreml.checks import (
    FP16_DETECTIONS,
    FP16_SCORE,
    FP32_DETECTIONS,
    FP32_PROBABILITY,
    FP32_RAW,
    check_detections,
    check_probabilities,
    tolerance,
)
from export.coreml.converter import LABEL, Converted, convert, describe_model
from export.coreml.describe import check_description
from export.coreml.detector import CONFIDENCE, COORDINATES, RAW_CONFIDENCE, RAW_COORDINATES, detector_pipeline
from export.coreml.executor import PackageExecutor, load_package
from runtime.manifest import Manifest, ParityCheck
from runtime.parity import Reference, compare, elementwise_stats
from runtime.processing.spec import InputSpec
from runtime.runners.coreml import coremltools_quiet

HERE = Path(__file__).parent


def _quiet(_: str) -> None:
    return None


def version_problem(coremltools_version: str, numpy_version: str) -> str | None:
    """Why this coremltools/numpy pair cannot convert, or None. coremltools 9.0 fails some conversions under
    numpy 2.4 ("only 0-dimensional arrays can be converted to Python scalars")."""
    major = lambda v: tuple(int(p) for p in v.split(".")[:2] if p.isdigit())  # noqa: E731
    if major(coremltools_version) < (8, 0):
        return f"coremltools {coremltools_version} is too old (the converter targets 9.0)"
    if major(coremltools_version) == (9, 0) and major(numpy_version) >= (2, 4):
        return f"coremltools 9.0 does not work with numpy {numpy_version}; install numpy<2.4"
    return None


def require_coremltools() -> None:
    from runtime.errors import BackendUnavailable

    try:
        from runtime.runners.coreml import import_coremltools

        coremltools = import_coremltools()
    except BackendUnavailable as err:
        raise BackendUnavailable("Core ML export needs coremltools: pip install 'shadowline[coreml]' "
                                 "(coremltools 9.0 with numpy<2.4)") from err
    problem = version_problem(coremltools.__version__, np.__version__)
    if problem:
        raise BackendUnavailable(f"Core ML export: {problem}")


def reference_pixels(reference: Reference, spec: InputSpec) -> np.ndarray:
    """Invert x = (pixel*scale - mean)/std: the image the device's camera path would hand to Core ML, as
    [N, 3, H, W] whatever the model's layout (an NHWC model's reference inputs are transposed back)."""
    std = np.asarray(spec.std, np.float64).reshape(1, 3, 1, 1)
    mean = np.asarray(spec.mean, np.float64).reshape(1, 3, 1, 1)
    x = reference.inputs.astype(np.float64)
    if spec.layout == "NHWC":
        x = x.transpose(0, 3, 1, 2)
    return ((x * std + mean) / spec.scale).astype(np.float32)


def line_counts() -> dict[str, int]:
    count = lambda paths: sum(len(p.read_text().splitlines()) for p in paths)  # noqa: E731
    return {"converter": count([HERE / "converter.py", HERE / "graph.py", HERE / "fold.py", HERE / "detector.py",
                                *sorted((HERE / "ops").glob("*.py"))]),
            "executor": count([HERE / "executor.py", HERE / "mil_ops.py", HERE / "kernels.py", HERE / "nms.py"])}


def _features(features) -> list[dict[str, Any]]:
    out = []
    for f in features:
        kind = f.type.WhichOneof("Type")
        d: dict[str, Any] = {"name": f.name, "type": kind, "description": f.shortDescription}
        if kind == "imageType":
            img = f.type.imageType
            d.update(width=img.width, height=img.height,
                     color={10: "GRAYSCALE", 20: "RGB", 30: "BGR"}.get(img.colorSpace, img.colorSpace))
        elif kind == "doubleType":
            d.update(optional=f.type.isOptional)
        elif kind == "multiArrayType":
            arr = f.type.multiArrayType
            ranges = [r.lowerBound if r.lowerBound == r.upperBound else f"{r.lowerBound}.."
                      + (str(r.upperBound) if r.upperBound >= 0 else "") for r in arr.shapeRange.sizeRanges]
            d.update(shape=ranges or list(arr.shape), dtype={65568: "FLOAT32", 65552: "FLOAT16", 65600: "DOUBLE",
                                                   131104: "INT32"}.get(arr.dataType, arr.dataType))
        out.append(d)
    return out


def save_package(mlmodel, destination: Path) -> None:
    """Save under a temporary name and rename, so a failed save never leaves a half package."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    tmp = destination.with_name(f".tmp-{destination.name}")  # coremltools insists on .mlpackage
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with coremltools_quiet():
            mlmodel.save(str(tmp))
        if destination.exists():
            shutil.rmtree(destination)
        tmp.rename(destination)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@dataclass
class Evaluated:
    """What the reference executor computed for every reference sample."""

    raw: np.ndarray  # the compared var (the ONNX output as the package computes it)
    labels: list[str] = field(default_factory=list)  # classify op: predicted label per sample
    probabilities: list[dict[str, float]] = field(default_factory=list)  # classify op: classLabel_probs
    vision: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # pipeline: (confidence, coordinates)
    # pipeline: the decoding stage's (raw_confidence, raw_coordinates), every box before the NMS stage
    before_nms: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)


def run_reference(executor: PackageExecutor, pixels: np.ndarray, batch: int, var: str) -> Evaluated:
    """Every stage of the package on every reference sample (detector pipelines take one image at a time)."""
    outs: list[np.ndarray] = []
    result = Evaluated(raw=np.zeros(0))
    step = 1 if executor.package.is_pipeline else batch
    for i in range(0, len(pixels), step):
        stages = executor.run({"image": pixels[i:i + step]})
        outs.append(np.asarray(stages[0][var], np.float32))
        if LABEL in stages[0]:
            result.labels.extend(stages[0][LABEL])
            result.probabilities.extend(stages[0][LABEL + "_probs"])
        if executor.package.is_pipeline:
            last, decoded = stages[-1], stages[-2]
            result.vision.append((np.asarray(last[CONFIDENCE]), np.asarray(last[COORDINATES])))
            result.before_nms.append((np.asarray(decoded[RAW_CONFIDENCE]), np.asarray(decoded[RAW_COORDINATES])))
    result.raw = np.concatenate(outs)
    return result


def build_package(staging: Path, manifest: Manifest, precision: str, bugs: frozenset[str] = frozenset(),
                  ) -> tuple[Converted, Path]:
    """Convert staging/model.onnx (a detector: into the Vision pipeline), set its metadata, save it under
    staging/coreml/NAME.mlpackage."""
    converted = convert(staging / "model.onnx", manifest, precision, max_batch=manifest.batch.max, bugs=bugs)
    model = converted.model
    if manifest.task == "detect":
        model = detector_pipeline(model, manifest, converted.raw_output, bugs)
        converted.outputs = [CONFIDENCE, COORDINATES]
    describe_model(model, manifest, precision, converted.raw_output)
    package = staging / "coreml" / f"{manifest.name}.mlpackage"
    save_package(model, package)
    return converted, package


def judge(manifest: Manifest, reference: Reference, evaluated: Evaluated, precision: str, artifact: str,
          seconds: float, findings: list[dict]) -> ParityCheck:
    """One parity check: the raw output, what the app receives, and the description, at the tolerance both
    sides' precision allows."""
    name = manifest.output.names[0]
    tol = tolerance(precision, reference.outputs[name])
    elementwise = FP32_RAW[manifest.task] if tol.fp32 else None
    check = compare(manifest, reference, {name: evaluated.raw}, artifact=artifact, kind="coreml",
                    precision=precision, elementwise=elementwise, seconds=seconds)
    problems = [f"description {f['check']}: {f['detail']}" for f in findings if not f["passed"]]
    stats = dict(check.stats, description=f"{sum(f['passed'] for f in findings)}/{len(findings)} passed",
                 tolerance=tol.describe())
    if elementwise is None:  # measured for the record; judged at task level
        stats.update({k: v for k, v in elementwise_stats(reference.outputs[name], evaluated.raw).items()
                      if k != "peak"})
    if manifest.task == "classify":
        found, wrong = check_probabilities(manifest, reference, evaluated.probabilities, evaluated.labels, tol)
    else:
        found, wrong = check_detections(manifest, reference, evaluated.vision, tol, evaluated.before_nms)
    stats.update(found)
    problems += wrong
    tolerances = dict(check.tolerances)
    if manifest.task == "classify":
        tolerances["probabilities_max_abs"] = FP32_PROBABILITY if tol.fp32 else FP16_SCORE
    else:
        tolerances.update({f"vision_{k}": v for k, v in (FP32_DETECTIONS if tol.fp32 else FP16_DETECTIONS).items()})
    if problems or not check.passed:
        detail = f"at {tol.describe()}: " + "; ".join(([check.detail] if check.detail else []) + problems[:10])
        return check.model_copy(update={"passed": False, "detail": detail, "stats": stats, "tolerances": tolerances})
    return check.model_copy(update={"stats": stats, "tolerances": tolerances})


def build_and_check(staging: Path, manifest: Manifest, reference: Reference, precision: str,
                    progress: Callable[[str], None] = _quiet, bugs: frozenset[str] = frozenset(),
                    ) -> tuple[ParityCheck, dict[str, Any], Path]:
    """Convert staging/model.onnx, save staging/coreml/NAME.mlpackage, read it back, check its description and
    run it with the reference executor on the reference inputs. `bugs` plants converter bugs (tests only)."""
    staging = Path(staging)
    require_coremltools()
    start = time.perf_counter()
    converted, package = build_package(staging, manifest, precision, bugs)
    convert_s = time.perf_counter() - start
    progress(f"[coreml] {precision} package written in {convert_s:.2f} s; checking")

    start = time.perf_counter()
    loaded = load_package(package)
    findings = check_description(loaded, manifest, precision, converted.raw_output)
    executor = PackageExecutor(loaded)
    batch = min(manifest.batch.max, len(reference.names)) if converted.batch[1] > 1 else 1
    evaluated = run_reference(executor, reference_pixels(reference, manifest.input), batch, converted.compared_var)
    check_s = time.perf_counter() - start
    check = judge(manifest, reference, evaluated, precision, package.relative_to(staging).as_posix(), check_s,
                  findings)
    spec = loaded.spec
    extras = {
        "package": package.relative_to(staging).as_posix(), "precision": precision,
        "inputs": _features(spec.description.input), "outputs": _features(spec.description.output),
        "batch": {"flexible": converted.batch[1] > 1, "min": converted.batch[0], "max": converted.batch[1]},
        "stages": loaded.stage_names,
        "description_checks": findings, "seconds": {"convert": round(convert_s, 3), "check": round(check_s, 3)},
        "program_ops": converted.op_counts, "folded": converted.fold, "lines": line_counts(),
        "minimum_deployment_target": "iOS15",
    }
    return check, extras, package


def add_coreml(staging_dir: Path, draft_manifest: Manifest, reference: Reference, precision: str,
               progress: Callable[[str], None] = _quiet) -> tuple[list[ParityCheck], dict[str, Any]]:
    """The exporter's hook: one package in the requested precision, one parity check."""
    check, extras, _ = build_and_check(Path(staging_dir), draft_manifest, reference, precision, progress)
    progress(f"[coreml] parity {'passed' if check.passed else 'FAILED'}: {check.stats}")
    return [check], extras
