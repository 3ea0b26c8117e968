"""`shadowline export MODEL.onnx`: check, describe, reference, variants, sign, and move into place."""

from __future__ import annotations

import platform
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from export.bundle import finish_bundle, npz_bytes
from export.labels import check_labels, read_labels
from export.model_check import check_model
from export.options import ExportOptions
from export.reference import build_reference
from export.specs import check_output, class_count, input_spec, output_spec
from export.staging import staging_dir
from runtime import __version__
from runtime.errors import ConfigError, LabelError, ParityError
from runtime.fsio import sha256_file
from runtime.manifest import BatchInfo, Manifest, ParityCheck, Provenance, Thresholds
from runtime.parity import Reference, compare
from runtime.runners.base import run_batched
from runtime.runners.onnxrt import OnnxRuntimeRunner

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


class Steps:
    """Times each step of an export and reports its start and end through `progress`."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.timings: dict[str, float] = {}

    def start(self, label: str) -> Callable[[], None]:
        begin = time.perf_counter()
        self.progress(f"[{label}] ...")

        def done() -> None:
            self.timings[label] = time.perf_counter() - begin
            self.progress(f"[{label}] done in {self.timings[label]:.2f} s")
        return done


def check_variant(draft: Manifest, reference: Reference, model: Path, *, kind: str, precision: str,
                  max_batch: int, elementwise: dict[str, float] | None = None, task: dict[str, float] | None = None,
                  artifact: str | None = None) -> ParityCheck:
    """Run the ONNX `model` on the reference inputs with ONNX Runtime and judge it against the reference outputs."""
    start = time.perf_counter()
    with OnnxRuntimeRunner(model) as runner:
        outs = run_batched(runner, draft.input.name, reference.inputs, max_batch)
    return compare(draft, reference, outs, artifact=artifact or model.name, kind=kind, precision=precision,
                   elementwise=elementwise, task=task, seconds=time.perf_counter() - start)


@contextmanager
def third_parties_through(progress: Progress) -> Iterator[None]:
    """What onnx, ONNX Runtime and its quantizer would print on their own goes through `progress` instead, one
    line each, so an export shows one display (or, quiet, nothing): Python warnings become `[warning] ...` lines;
    ONNX Runtime's native log (sessions the quantizer opens itself) is kept to errors."""
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            seen: set[str] = set()
            for w in caught:
                text = " ".join(f"{w.category.__name__}: {w.message}".split())
                if text not in seen:
                    seen.add(text)
                    progress(f"[warning] {text[:300]}")


def export_model(model_path: Path, opts: ExportOptions, out_dir: Path, signing_key: Any = None, as_tar: bool = False,
                 force: bool = False, progress: Progress = _quiet) -> tuple[Path, Manifest, dict[str, float]]:
    """Export and return (bundle path, manifest, seconds per step). Nothing is left on disk if a step fails or a
    signal (SIGINT, SIGTERM, SIGHUP) stops it."""
    with third_parties_through(progress):
        return _export(Path(model_path), opts, Path(out_dir), signing_key, as_tar, force, progress)


def _export(model_path: Path, opts: ExportOptions, out_dir: Path, signing_key: Any, as_tar: bool, force: bool,
            progress: Progress) -> tuple[Path, Manifest, dict[str, float]]:
    steps = Steps(progress)
    if not opts.name or not opts.task or not opts.decoder:
        raise ConfigError("name, task and decoder are required (give them as options or in a --preset)")
    task, decoder = opts.task, opts.decoder
    done = steps.start("validate")
    info = check_model(model_path)
    spec = input_spec(info, opts)
    output = output_spec(info, opts)
    if opts.labels is None:
        if "labels" not in info.metadata and "names" not in info.metadata:
            raise LabelError("no labels given and the model carries none in its metadata")
        opts = opts.model_copy(update={"labels": "model-metadata"})
    assert opts.labels is not None
    out_shape = info.outputs[0][1]
    given = read_labels(opts.labels, info.metadata)
    # The shape rule on the declared shape (dynamic dimensions pass), so a model no decoder reads fails before any
    # work; it runs again on the actual output of the reference run below.
    check_output(out_shape, spec, output, task, len(given), str(model_path))
    labels, renames = check_labels(given, class_count(out_shape, output.decoder), opts.dedupe_labels)
    for idx, new in renames.items():
        progress(f"[labels] duplicate label at index {idx} renamed to {new!r}")
    try:
        thresholds = Thresholds(default=opts.threshold, per_class=opts.thresholds, ignore=opts.ignore_classes)
    except ValueError as err:
        raise ConfigError(f"thresholds: {err}") from err
    unknown = (set(opts.thresholds) | set(opts.ignore_classes)) - set(labels)
    if unknown:
        raise ConfigError(f"thresholds name classes that are not labels: {sorted(unknown)}")
    if not opts.calibration:
        raise ConfigError("calibration: a folder of real images is required for reference.npz")
    done()

    out_dir.mkdir(parents=True, exist_ok=True)
    bundle_id = f"{opts.name}-v{opts.version}"
    destination = out_dir / (bundle_id + (".tar" if as_tar else ""))
    if destination.exists() and not force:
        raise ConfigError(f"{destination} exists already (use --force to replace it)")
    with staging_dir(out_dir, bundle_id) as staging:
        shutil.copyfile(model_path, staging / "model.onnx")
        max_batch = opts.max_batch if spec.dynamic_batch else 1
        runner = OnnxRuntimeRunner(staging / "model.onnx").load()
        parity: list[ParityCheck] = []
        done = steps.start("reference")
        reference, skipped = build_reference(Path(opts.calibration), spec, runner, opts.max_calibration, max_batch,
                                             opts.max_pixels)
        for s in skipped:
            progress(f"[reference] skipped {s}")
        actual = list(reference.outputs[output.names[0]].shape)
        check_output(actual, spec, output, task, len(labels), str(model_path))
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
            done = steps.start("fp16")
            from export.fp16 import convert_fp16
            convert_fp16(staging / "model.onnx", staging / "model.fp16.onnx")
            check = check_variant(draft, reference, staging / "model.fp16.onnx", kind="onnx-fp16", precision="fp16",
                                  max_batch=max_batch)
            parity.append(check)
            progress(f"[fp16] parity {'passed' if check.passed else 'FAILED'}: {check.stats}")
            if not check.passed:
                raise ParityError(f"model.fp16.onnx disagrees with the FP32 reference: {check.detail}")
            done()
        if opts.int8:
            done = steps.start("int8")
            from export.int8 import add_int8
            result = add_int8(staging, draft, reference, max_batch, opts.int8_cpu, progress)
            parity.extend(result.checks)
            draft.extras["int8"] = result.extras
            failed = [c for c in result.checks if not c.passed]
            if failed:
                raise ParityError(f"{failed[0].artifact} disagrees with the FP32 reference on the held-out images: "
                                  f"{failed[0].detail}")
            done()
        if opts.coreml:
            done = steps.start("coreml")
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
            done = steps.start("validation")
            from export.accuracy import classifier_metrics
            validation = classifier_metrics(Path(opts.validation), opts.validation_labels, labels, spec,
                                            decoder, runner, thresholds, max_batch, opts.max_pixels)
            done()
        runner.close()
        manifest = draft.model_copy(update={"parity": parity, "validation": validation})
        done = steps.start("sign")
        path, manifest = finish_bundle(staging, manifest, destination, signing_key, as_tar=as_tar,
                                       overwrite=force)
        done()
    return path, manifest, steps.timings


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
