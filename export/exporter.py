"""`shadowline export MODEL.onnx`: validate, describe, reference, variants, sign, and move into place."""

from __future__ import annotations

import math
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from export.bundle import finish_bundle, npz_bytes
from export.labels import check_labels, read_labels
from export.options import ExportOptions
from export.reference import build_reference
from export.validate import ModelInfo, validate_model
from runtime import __version__
from runtime.errors import ConfigError, LabelError, ModelRejected, ParityError
from runtime.fsio import sha256_file
from runtime.manifest import BatchInfo, Manifest, ParityCheck, Provenance, Thresholds
from runtime.parity import compare
from runtime.processing.spec import InputSpec, LetterboxSpec, OutputSpec
from runtime.runners.base import run_batched
from runtime.runners.onnxrt import OnnxRuntimeRunner

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


def input_spec(info: ModelInfo, opts: ExportOptions) -> InputSpec:
    if len(info.inputs) != 1:
        raise ModelRejected(f"{info.path}: expected one image input, found {[i[0] for i in info.inputs]}")
    name, shape, dtype = info.inputs[0]
    if len(shape) != 4:
        raise ModelRejected(f"{info.path}: input {name!r} has shape {shape}; an NCHW image tensor is expected")
    h, w = shape[2], shape[3]
    if opts.input_size:
        if len(opts.input_size) != 2:
            raise ConfigError("input_size must be [height, width]")
        if isinstance(h, int) and isinstance(w, int) and [h, w] != opts.input_size:
            raise ConfigError(f"input_size {opts.input_size} does not match the model's fixed input {[h, w]}")
        h, w = opts.input_size
    if not isinstance(h, int) or not isinstance(w, int):
        raise ConfigError(f"the model's input size is dynamic ({shape}); give --input-size HEIGHT WIDTH")
    for key in ("color_order", "resize"):
        if getattr(opts, key) is None:
            raise ConfigError(f"{key} is required (the model file does not say how its pixels are prepared)")
    batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else "N"
    return InputSpec(
        name=name, shape=[batch, shape[1], h, w], dtype="float32" if dtype == "float32" else "float16",
        layout="NCHW", color_order=opts.color_order, resize=opts.resize,
        letterbox=LetterboxSpec(alignment=opts.letterbox_alignment, pad_value=opts.pad_value)
        if opts.resize == "letterbox" else None,
        resize_short=opts.resize_short, interpolation=opts.interpolation, scale=opts.scale, mean=opts.mean,
        std=opts.std)


def class_count(info: ModelInfo, task: str, decoder: str) -> int | None:
    dims = info.outputs[0][1]
    if task == "detect":
        if decoder != "yolox":
            raise ConfigError(f"decoder {decoder!r} cannot decode detections; use yolox")
        return int(dims[-1]) - 5 if isinstance(dims[-1], int) else None
    if decoder == "yolox":
        raise ConfigError("decoder yolox is for task detect")
    rest = dims[1:]
    return math.prod(rest) if all(isinstance(d, int) for d in rest) else None


def export_model(model_path: Path, opts: ExportOptions, out_dir: Path, signing_key=None, as_tar: bool = False,
                 force: bool = False, progress: Progress = _quiet) -> tuple[Path, Manifest, dict[str, float]]:
    """Export and return (bundle path, manifest, seconds per step). Nothing is left on disk if a step fails."""
    timings: dict[str, float] = {}

    def step(label: str) -> Callable[[], None]:
        start = time.perf_counter()
        progress(f"[{label}] ...")

        def done() -> None:
            timings[label] = time.perf_counter() - start
            progress(f"[{label}] done in {timings[label]:.2f} s")
        return done

    model_path = Path(model_path)
    if not opts.name or not opts.task or not opts.decoder:
        raise ConfigError("name, task and decoder are required (give them as options or in a --preset)")
    done = step("validate")
    info = validate_model(model_path)
    spec = input_spec(info, opts)
    output = OutputSpec(names=[o[0] for o in info.outputs], decoder=opts.decoder, nms_iou=opts.nms_iou,
                        class_agnostic_nms=opts.class_agnostic_nms,
                        strides=opts.strides, min_score=opts.min_score)
    if opts.labels is None:
        if "labels" not in info.metadata:
            raise LabelError("no labels given and the model carries none in its metadata")
        opts = opts.model_copy(update={"labels": "model-metadata"})
    labels, renames = check_labels(read_labels(opts.labels, info.metadata),
                                   class_count(info, opts.task, opts.decoder), opts.dedupe_labels)
    for idx, new in renames.items():
        progress(f"[labels] duplicate label at index {idx} renamed to {new!r}")
    try:
        thresholds = Thresholds(default=opts.threshold, per_class=opts.thresholds, ignore=opts.ignore_classes)
    except ValueError as err:
        raise ConfigError(f"thresholds: {err}") from err
    unknown = (set(opts.thresholds) | set(opts.ignore_classes)) - set(labels)
    if unknown:
        raise ConfigError(f"thresholds name classes that are not labels: {sorted(unknown)}")
    done()

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    bundle_id = f"{opts.name}-v{opts.version}"
    destination = out_dir / (bundle_id + (".tar" if as_tar else ""))
    if destination.exists() and not force:
        raise ConfigError(f"{destination} exists already (use --force to replace it)")
    staging = Path(tempfile.mkdtemp(prefix=f".{bundle_id}.staging-", dir=out_dir))
    try:
        shutil.copyfile(model_path, staging / "model.onnx")
        max_batch = opts.max_batch if spec.dynamic_batch else 1
        runner = OnnxRuntimeRunner(staging / "model.onnx").load()
        parity: list[ParityCheck] = []
        if not opts.calibration:
            raise ConfigError("calibration: a folder of real images is required for reference.npz")
        done = step("reference")
        reference, skipped = build_reference(Path(opts.calibration), spec, runner, opts.max_calibration, max_batch,
                                             opts.max_pixels)
        for s in skipped:
            progress(f"[reference] skipped {s}")
        (staging / "reference.npz").write_bytes(npz_bytes(reference.to_arrays()))
        done()
        draft = Manifest(
            name=opts.name, version=opts.version, task=opts.task, description=opts.description, author=opts.author,
            license=opts.license, labels=labels, label_renames=renames, input=spec, output=output,
            batch=BatchInfo(dynamic=spec.dynamic_batch, min=1, opt=max(1, max_batch // 2) if spec.dynamic_batch
                            else 1, max=max_batch),
            thresholds=thresholds, files={},
            provenance=_provenance(model_path), extras={"calibration_skipped": skipped,
                                                        "calibration_images": reference.names})
        if opts.fp16:
            done = step("fp16")
            from export.fp16 import convert_fp16
            convert_fp16(staging / "model.onnx", staging / "model.fp16.onnx")
            start = time.perf_counter()
            with OnnxRuntimeRunner(staging / "model.fp16.onnx") as r16:
                outs = run_batched(r16, spec.name, reference.inputs, max_batch)
            check = compare(draft, reference, outs, artifact="model.fp16.onnx", kind="onnx-fp16", precision="fp16",
                            seconds=time.perf_counter() - start)
            parity.append(check)
            progress(f"[fp16] parity {'passed' if check.passed else 'FAILED'}: {check.stats}")
            if not check.passed:
                raise ParityError(f"model.fp16.onnx disagrees with the FP32 reference: {check.detail}")
            done()
        if opts.coreml:
            done = step("coreml")
            from export.coreml import add_coreml  # optional extra, imported only when asked for
            checks, extras = add_coreml(staging, draft, reference, opts.coreml_precision, progress)
            parity.extend(checks)
            draft.extras["coreml"] = extras
            failed = [c for c in checks if not c.passed]
            if failed:
                raise ParityError(f"Core ML package disagrees with the reference: {failed[0].detail}")
            done()
        validation = None
        if opts.validation:
            if opts.task != "classify":
                raise ConfigError("validation metrics are computed for classifiers (detector validation: "
                                  "use `shadowline fleet tune` with labelled boxes)")
            done = step("validation")
            from export.validation import validate_classifier
            validation = validate_classifier(Path(opts.validation), opts.validation_labels, labels, spec,
                                             opts.decoder, runner, thresholds, max_batch, opts.max_pixels)
            done()
        runner.close()
        manifest = draft.model_copy(update={"parity": parity, "validation": validation})
        done = step("sign")
        path, manifest = finish_bundle(staging, manifest, destination, signing_key, as_tar=as_tar,
                                       overwrite=force)
        done()
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return path, manifest, timings


def _provenance(model_path: Path) -> Provenance:
    import onnx
    import onnxruntime

    try:
        import importlib.metadata as md
        ct_version = md.version("coremltools")
    except Exception:
        ct_version = None
    return Provenance(source_model=model_path.name, source_model_sha256=sha256_file(model_path),
                      shadowline_version=__version__, onnx_version=onnx.__version__,
                      onnxruntime_version=onnxruntime.__version__, coremltools_version=ct_version,
                      python_version=platform.python_version(),
                      created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
