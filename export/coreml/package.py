"""Build the Core ML package inside a staging bundle and prove it on the bundle's reference inputs."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from export.coreml.converter import convert
from export.coreml.describe import check_description
from export.coreml.executor import Executor, load_program
from runtime.manifest import Manifest, ParityCheck
from runtime.parity import Reference, compare, elementwise_stats, task_output
from runtime.processing.spec import InputSpec

HERE = Path(__file__).parent
# Tolerances of issue 3: FP32 element-wise (classifiers absolute, detectors relative to the largest value) + task;
# FP16 task level only (same top-1; detections matched by class with IoU > 0.9, score within 0.05).
FP32_ELEMENTWISE = {"classify": {"max_abs": 1e-4}, "detect": {"max_rel_to_peak": 1e-3}}
# FP16 classifiers: besides the same top-1, every class score within 0.05 (the FP16 score tolerance for
# detections). Top-1 alone misses a MaxPool that ignores ceil_mode (scores off by 0.1, top-1 unchanged).
FP16_SCORE = 0.05


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
        import coremltools
    except ImportError as err:
        raise BackendUnavailable("Core ML export needs coremltools: pip install 'shadowline[coreml]' "
                                 "(coremltools 9.0 with numpy<2.4)") from err
    problem = version_problem(coremltools.__version__, np.__version__)
    if problem:
        raise BackendUnavailable(f"Core ML export: {problem}")


def reference_pixels(reference: Reference, spec: InputSpec) -> np.ndarray:
    """Invert x = (pixel*scale - mean)/std: the image the device's camera path would hand to Core ML."""
    std = np.asarray(spec.std, np.float64).reshape(1, 3, 1, 1)
    mean = np.asarray(spec.mean, np.float64).reshape(1, 3, 1, 1)
    return ((reference.inputs.astype(np.float64) * std + mean) / spec.scale).astype(np.float32)


def line_counts() -> dict[str, int]:
    count = lambda paths: sum(len(p.read_text().splitlines()) for p in paths)  # noqa: E731
    return {"converter": count([HERE / "converter.py", HERE / "graph.py", *sorted((HERE / "ops").glob("*.py"))]),
            "executor": count([HERE / "executor.py", HERE / "kernels.py"])}


def _features(features) -> list[dict[str, Any]]:
    out = []
    for f in features:
        kind = f.type.WhichOneof("Type")
        d: dict[str, Any] = {"name": f.name, "type": kind, "description": f.shortDescription}
        if kind == "imageType":
            img = f.type.imageType
            d.update(width=img.width, height=img.height,
                     color={10: "GRAYSCALE", 20: "RGB", 30: "BGR"}.get(img.colorSpace, img.colorSpace))
        elif kind == "multiArrayType":
            arr = f.type.multiArrayType
            d.update(shape=list(arr.shape), dtype={65568: "FLOAT32", 65552: "FLOAT16", 65600: "DOUBLE",
                                                   131104: "INT32"}.get(arr.dataType, arr.dataType))
        out.append(d)
    return out


def save_package(mlmodel, destination: Path) -> None:
    """Save under a temporary name and rename, so a failed save never leaves a half package."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    tmp = destination.with_name(f".tmp-{destination.name}")  # coremltools insists on .mlpackage
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        mlmodel.save(str(tmp))
        if destination.exists():
            shutil.rmtree(destination)
        tmp.rename(destination)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def run_reference(executor: Executor, pixels: np.ndarray, batch: int, var: str) -> tuple[np.ndarray, list[str]]:
    """The compared var's values and classify's predicted labels for every reference sample."""
    outs, labels = [], []
    for i in range(0, len(pixels), batch):
        values = executor.run({"image": pixels[i:i + batch]})
        outs.append(np.asarray(values[var], np.float32))
        if "classLabel" in values:
            labels.extend(values["classLabel"])
    return np.concatenate(outs), labels


def build_and_check(staging: Path, manifest: Manifest, reference: Reference, precision: str,
                    progress: Callable[[str], None] = _quiet, bugs: frozenset[str] = frozenset(),
                    ) -> tuple[ParityCheck, dict[str, Any], Path]:
    """Convert staging/model.onnx, save staging/coreml/NAME.mlpackage, read it back, check its description and
    run it with the reference executor on the reference inputs. `bugs` plants converter bugs (tests only)."""
    staging = Path(staging)
    require_coremltools()
    start = time.perf_counter()
    converted = convert(staging / "model.onnx", manifest, precision, max_batch=manifest.batch.max, bugs=bugs)
    package = staging / "coreml" / f"{manifest.name}.mlpackage"
    save_package(converted.model, package)
    convert_s = time.perf_counter() - start
    progress(f"[coreml] {precision} package written in {convert_s:.2f} s; checking")

    start = time.perf_counter()
    spec, prog = load_program(package)
    findings = check_description(spec, prog, manifest, precision, converted.raw_output)
    executor = Executor(prog)
    batch = min(manifest.batch.max, len(reference.names)) if converted.batch[1] > 1 else 1
    got, labels = run_reference(executor, reference_pixels(reference, manifest.input), batch,
                                converted.compared_var)
    check_s = time.perf_counter() - start
    elementwise = FP32_ELEMENTWISE[manifest.task] if precision == "fp32" else None
    check = compare(manifest, reference, {manifest.output.names[0]: got},
                    artifact=package.relative_to(staging).as_posix(), kind="coreml", precision=precision,
                    elementwise=elementwise, seconds=check_s)
    problems = [f"description {f['check']}: {f['detail']}" for f in findings if not f["passed"]]
    stats = dict(check.stats, description=f"{sum(f['passed'] for f in findings)}/{len(findings)} passed")
    if elementwise is None:  # measured for the record; FP16 is judged at task level
        name = manifest.output.names[0]
        stats.update({k: v for k, v in elementwise_stats(reference.outputs[name], got).items() if k != "peak"})
    if manifest.task == "classify":
        ref_scores = task_output(manifest, reference.outputs[manifest.output.names[0]], reference.transforms).scores
        assert ref_scores is not None
        want = [manifest.labels[int(i)] for i in ref_scores.argmax(1)]
        agree = sum(a == b for a, b in zip(labels, want))
        stats["class_label_agree"] = agree
        if precision == "fp16" and stats["max_abs_score"] > FP16_SCORE:
            problems.append(f"max_abs_score {stats['max_abs_score']:.3g} > {FP16_SCORE:g}")
        problems += [f"{n}: classify op says {a!r}, reference {b!r}"
                     for n, a, b in zip(reference.names, labels, want) if a != b]
        if len(labels) != len(want):
            problems.append(f"classify op gave {len(labels)} labels for {len(want)} samples")
    if problems:
        detail = "; ".join(([check.detail] if check.detail else []) + problems[:10])
        check = check.model_copy(update={"passed": False, "detail": detail, "stats": stats})
    else:
        check = check.model_copy(update={"stats": stats})
    extras = {
        "package": package.relative_to(staging).as_posix(), "precision": precision,
        "inputs": _features(spec.description.input), "outputs": _features(spec.description.output),
        "batch": {"flexible": converted.batch[1] > 1, "min": converted.batch[0], "max": converted.batch[1]},
        "description_checks": findings, "seconds": {"convert": round(convert_s, 3), "check": round(check_s, 3)},
        "program_ops": converted.op_counts, "lines": line_counts(), "minimum_deployment_target": "iOS15",
    }
    return check, extras, package


def add_coreml(staging_dir: Path, draft_manifest: Manifest, reference: Reference, precision: str,
               progress: Callable[[str], None] = _quiet) -> tuple[list[ParityCheck], dict[str, Any]]:
    """The exporter's hook: one package in the requested precision, one parity check."""
    check, extras, _ = build_and_check(Path(staging_dir), draft_manifest, reference, precision, progress)
    progress(f"[coreml] parity {'passed' if check.passed else 'FAILED'}: {check.stats}")
    return [check], extras
