"""Assertions on a saved package's model description and program: what Xcode and Vision will see.

The colour order and the image size live only in the description (not in the program), and an ML Program
classifier's labels live only in its `classify` op, so both are read back from the saved package and compared
with the bundle manifest.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from export.coreml.converter import LABEL, flexible_batch
from export.coreml.detector import (
    CONFIDENCE,
    CONFIDENCE_INPUT,
    COORDINATES,
    IOU_INPUT,
    RAW_CONFIDENCE,
    RAW_COORDINATES,
)
from export.coreml.executor import Package
from runtime.manifest import Manifest

FLOAT32 = 65568  # ArrayFeatureType.FLOAT32


@dataclass
class Finding:
    check: str
    passed: bool
    detail: str


def _feature(spec, name: str):
    return next((f for f in spec.description.output if f.name == name), None)


def class_labels(prog) -> list[str] | None:
    """The labels of the program's classify op, in output order (None when there is no classify op)."""
    for o in prog.functions["main"].operations:
        if o.op_type == "classify":
            classes = o.inputs["classes"].op
            val = classes.outputs[0].val if classes.outputs[0].val is not None else classes.val.val
            return [str(c) for c in getattr(val, "ls", val)]
    return None


def check_input(spec, prog, manifest: Manifest) -> list[Finding]:
    found = []
    inputs = list(spec.description.input)
    # a detector pipeline also takes the two optional NMS thresholds (Vision feeds only the image)
    extra = [i for i in inputs[1:] if manifest.task == "detect" and i.name in (IOU_INPUT, CONFIDENCE_INPUT)
             and i.type.WhichOneof("Type") == "doubleType" and i.type.isOptional]
    ok = len(inputs) == 1 + len(extra) and inputs[0].name == "image" and \
        inputs[0].type.WhichOneof("Type") == "imageType"
    found.append(Finding("input.image", ok, f"inputs {[i.name for i in inputs]} "
                         f"({inputs[0].type.WhichOneof('Type') if inputs else 'none'})"))
    if not ok:
        return found
    img = inputs[0].type.imageType
    size_ok = (img.width, img.height) == (manifest.input.width, manifest.input.height)
    found.append(Finding("input.size", size_ok, f"{img.width}x{img.height}, bundle "
                         f"{manifest.input.width}x{manifest.input.height}"))
    color = {10: "GRAYSCALE", 20: "RGB", 30: "BGR"}.get(img.colorSpace, str(img.colorSpace))
    found.append(Finding("input.color", color == manifest.input.color_order,
                         f"colour space {color}, bundle {manifest.input.color_order}"))
    dim = prog.functions["main"].inputs["image"].shape[0]
    flexible = not isinstance(dim, int)
    found.append(Finding("input.batch", flexible == flexible_batch(manifest),
                         f"batch {'flexible' if flexible else dim}, bundle "
                         f"{'dynamic' if manifest.batch.dynamic else 'static'} {manifest.task}"))
    return found


def check_outputs(spec, prog, manifest: Manifest, raw_name: str) -> list[Finding]:
    found = []
    names = [o.name for o in spec.description.output]
    if manifest.task == "classify":
        label, probs = _feature(spec, LABEL), _feature(spec, LABEL + "_probs")
        ok = (label is not None and label.type.WhichOneof("Type") == "stringType" and probs is not None
              and probs.type.WhichOneof("Type") == "dictionaryType"
              and spec.description.predictedFeatureName == LABEL
              and spec.description.predictedProbabilitiesName == LABEL + "_probs")
        found.append(Finding("outputs.classifier", ok, f"outputs {names}, predicted "
                             f"{spec.description.predictedFeatureName!r}/"
                             f"{spec.description.predictedProbabilitiesName!r}"))
        labels = class_labels(prog)
        problems = []
        if labels is None:
            problems.append("no classify op")
        else:
            if len(set(labels)) != len(labels):
                problems.append("labels are not unique (a probability dictionary would silently drop one)")
            if labels != manifest.labels:
                diff = next((i for i, (a, b) in enumerate(zip(labels, manifest.labels)) if a != b), None)
                problems.append(f"{len(labels)} labels vs {len(manifest.labels)} in the bundle"
                                + (f", first difference at index {diff}" if diff is not None else ""))
        found.append(Finding("labels", not problems, "; ".join(problems) or f"{len(labels or [])} labels, unique, "
                             "complete, in output order"))
    return found


def _range(feature, width: int) -> bool:
    """A FLOAT32 multi-array of (any number of boxes) x width."""
    if feature is None or feature.type.WhichOneof("Type") != "multiArrayType":
        return False
    arr = feature.type.multiArrayType
    ranges = [(r.lowerBound, r.upperBound) for r in arr.shapeRange.sizeRanges]
    return arr.dataType == FLOAT32 and ranges == [(0, -1), (width, width)]


def check_pipeline(package: Package, manifest: Manifest, raw_name: str) -> list[Finding]:
    """A detector: network -> decoding -> NMS, wired by name, with Vision's two outputs."""
    spec = package.spec
    names = [o.name for o in spec.description.output]
    classes = len(manifest.labels)
    found = [Finding("outputs.vision", names == [CONFIDENCE, COORDINATES]
                     and _range(_feature(spec, CONFIDENCE), classes) and _range(_feature(spec, COORDINATES), 4),
                     f"outputs {names}: Vision needs confidence (boxes x {classes}) and coordinates (boxes x 4), "
                     "FLOAT32")]
    kinds = [s.kind for s in package.stages]
    ok = package.is_pipeline and kinds == ["program", "program", "nms"]
    found.append(Finding("pipeline.stages", ok, f"stages {kinds}: network, decoding, NMS"))
    if not ok:
        return found
    network, decoding, nms = package.stages
    raw = next((f for f in network.spec.description.output if f.name == raw_name), None)
    wired = (network.output_names == [raw_name] and decoding.input_names == [raw_name]
             and raw is not None and raw.type.multiArrayType.dataType == FLOAT32
             and decoding.output_names == [RAW_CONFIDENCE, RAW_COORDINATES])
    found.append(Finding("pipeline.wiring", wired, f"network {network.output_names} -> decoding "
                         f"{decoding.input_names} -> {decoding.output_names} -> NMS"))
    p = nms.nms
    assert p is not None
    want = (RAW_CONFIDENCE, RAW_COORDINATES, CONFIDENCE, COORDINATES, IOU_INPUT, CONFIDENCE_INPUT,
            manifest.output.nms_iou, manifest.output.min_score, not manifest.output.class_agnostic_nms,
            manifest.labels)
    have = (p.confidence_input, p.coordinates_input, p.confidence_output, p.coordinates_output, p.iou_input,
            p.confidence_threshold_input, p.iou_threshold, p.confidence_threshold, p.per_class, p.labels)
    diffs = [f"{k}: {h!r} != {w!r}" for k, h, w in zip(
        ("confidence input", "coordinates input", "confidence output", "coordinates output", "IoU input",
         "threshold input", "IoU", "minimum score", "per class", "labels"), have, want) if h != w]
    found.append(Finding("pipeline.nms", not diffs, "; ".join(d if len(d) < 200 else d[:200] + "..." for d in diffs)
                         or f"IoU {p.iou_threshold:g}, minimum score {p.confidence_threshold:g}, "
                            f"{'per class' if p.per_class else 'across classes'}, {len(p.labels)} labels"))
    return found


def check_metadata(spec, manifest: Manifest) -> list[Finding]:
    meta = spec.description.metadata
    user = dict(meta.userDefined)
    problems = []
    for field, want in (("author", manifest.author or "unknown"), ("license", manifest.license or "unspecified"),
                        ("shortDescription", manifest.description or manifest.name),
                        ("versionString", manifest.version)):
        if getattr(meta, field) != want:
            problems.append(f"{field} {getattr(meta, field)!r} != {want!r}")
    expected: dict[str, Any] = {
        "shadowline.bundle": manifest.bundle_id, "shadowline.task": manifest.task,
        "shadowline.labels": manifest.labels, "shadowline.thresholds": manifest.thresholds.model_dump(mode="json"),
        "shadowline.preprocessing": manifest.input.model_dump(mode="json"),
        "shadowline.output": manifest.output.model_dump(mode="json")}
    for key, expect in expected.items():
        have: Any = user.get(key)
        if have is None:
            problems.append(f"metadata {key} missing")
            continue
        if key not in ("shadowline.bundle", "shadowline.task"):
            try:
                have = json.loads(have)
            except ValueError:
                problems.append(f"metadata {key} is not JSON")
                continue
        if have != expect:
            problems.append(f"metadata {key} does not match the bundle")
    return [Finding("metadata", not problems, "; ".join(problems) or "author, licence, description, version, "
                    "labels, thresholds, preprocessing, decoding")]


def fp16_outputs(prog) -> int:
    from coremltools.converters.mil.mil import types

    return sum(1 for o in prog.functions["main"].operations if o.op_type != "const"
               for v in o.outputs if types.is_tensor(v.sym_type) and v.dtype == types.fp16)


def check_precision(package: Package, precision: str) -> list[Finding]:
    """FP16 ops in the network exactly when the package is FP16; a detector's decoding stays FP32."""
    fp16 = fp16_outputs(package.network.program)
    found = [Finding("precision", fp16 > 0 if precision == "fp16" else fp16 == 0,
                     f"{fp16} op outputs of the network in FP16 for a {precision} package")]
    for stage in package.stages[1:]:
        if stage.program is not None:
            n = fp16_outputs(stage.program)
            found.append(Finding("precision.decoding", n == 0, f"{n} op outputs of the decoding in FP16"))
    return found


def check_description(package: Package, manifest: Manifest, precision: str, raw_name: str) -> list[dict]:
    """Every assertion as {check, passed, detail}."""
    spec, prog = package.spec, package.network.program
    outputs = check_outputs(spec, prog, manifest, raw_name) if manifest.task == "classify" else \
        check_pipeline(package, manifest, raw_name)
    findings = (check_input(spec, prog, manifest) + outputs + check_metadata(spec, manifest)
                + check_precision(package, precision))
    return [asdict(f) for f in findings]
