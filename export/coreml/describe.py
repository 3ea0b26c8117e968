"""Assertions on a saved package's model description and program: what Xcode and Vision will see.

The colour order and the image size live only in the description (not in the program), and an ML Program
classifier's labels live only in its `classify` op, so both are read back from the saved package and compared
with the bundle manifest.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from export.coreml.converter import LABEL
from runtime.manifest import Manifest


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
    ok = len(inputs) == 1 and inputs[0].name == "image" and inputs[0].type.WhichOneof("Type") == "imageType"
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
    found.append(Finding("input.batch", flexible == manifest.batch.dynamic,
                         f"batch {'flexible' if flexible else dim}, bundle "
                         f"{'dynamic' if manifest.batch.dynamic else 'static'}"))
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
    else:
        out = _feature(spec, raw_name)
        ok = out is not None and out.type.WhichOneof("Type") == "multiArrayType" and \
            out.type.multiArrayType.dataType == 65568  # ArrayFeatureType.FLOAT32
        found.append(Finding("outputs.raw", ok, f"outputs {names}; {raw_name!r} must be a FLOAT32 multi-array "
                             "(Core ML defaults to FLOAT16)"))
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
    expected = {"shadowline.bundle": manifest.bundle_id, "shadowline.task": manifest.task,
                "shadowline.labels": manifest.labels,
                "shadowline.thresholds": manifest.thresholds.model_dump(mode="json"),
                "shadowline.preprocessing": manifest.input.model_dump(mode="json"),
                "shadowline.output": manifest.output.model_dump(mode="json")}
    for key, want in expected.items():
        have = user.get(key)
        if have is None:
            problems.append(f"metadata {key} missing")
            continue
        if key not in ("shadowline.bundle", "shadowline.task"):
            try:
                have = json.loads(have)
            except ValueError:
                problems.append(f"metadata {key} is not JSON")
                continue
        if have != want:
            problems.append(f"metadata {key} does not match the bundle")
    return [Finding("metadata", not problems, "; ".join(problems) or "author, licence, description, version, "
                    "labels, thresholds, preprocessing, decoding")]


def check_precision(prog, precision: str) -> list[Finding]:
    from coremltools.converters.mil.mil import types

    fp16 = sum(1 for o in prog.functions["main"].operations if o.op_type != "const"
               for v in o.outputs if types.is_tensor(v.sym_type) and v.dtype == types.fp16)
    ok = fp16 > 0 if precision == "fp16" else fp16 == 0
    return [Finding("precision", ok, f"{fp16} op outputs in FP16 for a {precision} package")]


def check_description(spec, prog, manifest: Manifest, precision: str, raw_name: str) -> list[dict]:
    """Every assertion as {check, passed, detail}."""
    findings = (check_input(spec, prog, manifest) + check_outputs(spec, prog, manifest, raw_name)
                + check_metadata(spec, manifest) + check_precision(prog, precision))
    return [asdict(f) for f in findings]
