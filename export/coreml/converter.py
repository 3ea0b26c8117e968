"""ONNX -> Core ML ML Program, built op by op with coremltools' MIL builder (coremltools has no ONNX frontend).

The program takes a Core ML image (pixels 0..255 in the bundle's colour order) and applies the bundle's
normalisation inside the program, so a camera frame feeds it directly. Classifiers end in Core ML's `classify`
op with the bundle's labels; a detector's network outputs its raw tensor, which `detector.py` decodes in the
pipeline Vision reads. Constant shape computations are folded first (`fold.py`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from export.coreml.fold import FoldReport, fold_constants
from export.coreml.graph import Attrs, Graph, node_label
from runtime.errors import ConversionError, ModelRejected
from runtime.manifest import Manifest
from runtime.runners.coreml import coremltools_quiet, import_coremltools

MIN_OPSET = 7  # older files (pre-release ONNX, e.g. the 2018 PCB model) use ops and semantics that no longer exist
STANDARD_DOMAINS = {"", "ai.onnx"}
PROBABILITIES = "probabilities"
LABEL = "classLabel"


@dataclass
class Converted:
    """A converted model and what the checks need to know about it."""

    model: object  # coremltools.models.MLModel
    input_name: str
    raw_output: str  # the ONNX output, as named in the Core ML program
    compared_var: str  # the program var whose value is compared with reference.npz
    outputs: list[str]
    batch: tuple[int, int]
    op_counts: dict[str, int] = field(default_factory=dict)
    fold: dict[str, object] = field(default_factory=dict)


def check_model(model, where: str) -> int:
    """Refuse what the converter cannot represent before building anything; return the ai.onnx opset."""
    opsets = {(o.domain or "ai.onnx"): o.version for o in model.opset_import}
    custom = sorted({f"{n.domain}:{n.op_type} (node {n.name!r})" for n in model.graph.node
                     if n.domain not in STANDARD_DOMAINS})
    opset = opsets.get("ai.onnx", 0)
    text = ", ".join(f"{d} {v}" for d, v in opsets.items())
    if opset < MIN_OPSET:
        raise ModelRejected(f"{where}: legacy ONNX (ir_version {model.ir_version}, opsets: {text}) is not supported "
                            f"by the Core ML converter; ai.onnx opset {MIN_OPSET} or newer is required"
                            + (f"; non-standard ops: {', '.join(custom)}" if custom else "")
                            + ". Re-export the model with a current exporter (opset >= 11).")
    if custom:
        raise ConversionError(f"{where}: unsupported op {custom[0]}: non-standard domain (opsets: {text})")
    return opset


def image_scaling(manifest: Manifest) -> tuple[float, list[float], np.ndarray | None, np.ndarray | None]:
    """(image scale, image bias, per-channel multiplier, per-channel offset). Core ML's image scale is one scalar:
    a per-channel std needs explicit ops, so then the image type passes pixels through unchanged."""
    spec = manifest.input
    std, mean = np.asarray(spec.std, np.float64), np.asarray(spec.mean, np.float64)
    if np.all(std == std[0]):
        return float(spec.scale / std[0]), [float(-m / std[0]) for m in mean], None, None
    mul = (spec.scale / std).astype(np.float32).reshape(1, 3, 1, 1)
    add = (-mean / std).astype(np.float32).reshape(1, 3, 1, 1)
    return 1.0, [0.0, 0.0, 0.0], mul, add


def _feature_name(name: str, taken: set[str]) -> str:
    clean = "".join(c if c.isalnum() or c == "_" else "_" for c in name) or "output"
    if clean[0].isdigit():
        clean = "t_" + clean
    while clean in taken:
        clean += "_"
    return clean


@dataclass
class Built:
    """A MIL program of the network and what the conversion needs to know about it."""

    program: Any  # coremltools' mil.Program
    raw_name: str  # the ONNX output, as named in the Core ML program
    compared_var: str  # the program var whose value is compared with reference.npz
    batch: tuple[int, int]
    fold: FoldReport


def flexible_batch(manifest: Manifest) -> bool:
    """Classifiers keep a dynamic ONNX batch as a flexible batch; detectors end in NMS, which takes one image's
    boxes, so their network is converted for one image (Vision feeds one frame at a time anyway)."""
    return manifest.batch.dynamic and manifest.task == "classify"


def build_program(onnx_model, manifest: Manifest, max_batch: int, bugs: frozenset[str] = frozenset()) -> Built:
    """The MIL program of `onnx_model` (image input named "image"), after folding its constant computations."""
    import onnx

    ct = import_coremltools()
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import Function, Program, get_new_symbol, types

    from export.coreml.ops import CONVERTERS

    g = Graph(check_model(onnx_model, manifest.bundle_id), bugs)
    onnx_model, fold = fold_constants(onnx_model)
    inits = {i.name for i in onnx_model.graph.initializer}
    g.consumed = {name for n in onnx_model.graph.node for name in n.input} | \
        {o.name for o in onnx_model.graph.output}
    for init in onnx_model.graph.initializer:
        g.set(init.name, onnx.numpy_helper.to_array(init))
    inputs = [i for i in onnx_model.graph.input if i.name not in inits]
    if len(inputs) != 1 or inputs[0].name != manifest.input.name:
        raise ConversionError(f"expected one graph input {manifest.input.name!r}, found {[i.name for i in inputs]}")
    dynamic = flexible_batch(manifest)
    batch_dim = get_new_symbol() if dynamic else 1
    batch = (1, max_batch if dynamic else 1)
    h, w = manifest.input.height, manifest.input.width
    _, _, mul, add = image_scaling(manifest)
    taken = {"image", LABEL, LABEL + "_probs", PROBABILITIES}
    raw_name = _feature_name(manifest.output.names[0], taken)
    prog = Program()
    with Function({"image": mb.placeholder(shape=(batch_dim, 3, h, w))},
                  opset_version=ct.target.iOS15) as func:
        x = func.inputs["image"]
        if mul is not None:
            x = mb.add(x=mb.mul(x=x, y=mul), y=add, name="normalised")
        if manifest.input.layout == "NHWC":  # Core ML hands an image over as [N, 3, H, W]; the model reads NHWC
            x = mb.transpose(x=x, perm=[0, 2, 3, 1], name="image_nhwc")
        g.set(manifest.input.name, x)
        for node in onnx_model.graph.node:
            fn = CONVERTERS.get(node.op_type)
            if fn is None:
                attrs = ", ".join(a.name for a in node.attribute) or "none"
                raise ConversionError(f"unsupported op: {node_label(node)} (attributes: {attrs}) has no Core ML "
                                      "converter")
            a = Attrs(node)
            try:
                fn(g, node, a)
            except ConversionError:
                raise
            except (ValueError, TypeError, AssertionError, IndexError, KeyError) as err:
                # the MIL builder validates types and shapes as ops are added
                raise ConversionError(f"{node_label(node)}: Core ML rejected the op: {err}") from err
            a.done()
        out = g.values.get(manifest.output.names[0])
        if out is None or isinstance(out, np.ndarray):
            raise ConversionError(f"output {manifest.output.names[0]!r} is missing or constant")
        if out.dtype != types.fp32:  # an FP16-I/O model computes in FP16 where ONNX Runtime does; Core ML
            out = mb.cast(x=out, dtype="fp32")  # outputs FP32 either way
        if manifest.task == "classify":
            n = len(manifest.labels)
            flat = mb.reshape(x=out, shape=[-1 if dynamic else 1, n])
            decoder = manifest.output.decoder
            if decoder == "probabilities":
                outputs = [mb.identity(x=flat, name=PROBABILITIES)]
                compared = PROBABILITIES
            else:
                if "drop_softmax" in g.bugs:
                    act = flat
                else:
                    act = mb.softmax(x=flat, axis=-1) if decoder == "softmax" else mb.sigmoid(x=flat)
                outputs = [mb.identity(x=act, name=PROBABILITIES), mb.identity(x=out, name=raw_name)]
                compared = raw_name
        else:
            outputs = [mb.identity(x=out, name=raw_name)]
            compared = raw_name
        func.set_outputs(outputs)
        prog.add_function("main", func)
    return Built(prog, raw_name, compared, batch, fold)


def convert(onnx_path: Path, manifest: Manifest, precision: str, max_batch: int = 8,
            bugs: frozenset[str] = frozenset()) -> Converted:
    """Convert the bundle's ONNX model into an ML Program MLModel with the bundle's preprocessing and metadata."""
    import onnx

    ct = import_coremltools()
    try:
        model = onnx.load(str(onnx_path))
    except Exception as err:  # protobuf DecodeError and friends
        raise ModelRejected(f"{onnx_path}: not an ONNX model ({err})") from err
    built = build_program(model, manifest, max_batch, bugs)
    op_counts: dict[str, int] = {}
    for op in built.program.functions["main"].operations:
        op_counts[op.op_type] = op_counts.get(op.op_type, 0) + 1
    scale, bias, _, _ = image_scaling(manifest)
    batch, raw_name, compared = built.batch, built.raw_name, built.compared_var
    shape = (ct.RangeDim(batch[0], batch[1], default=1), 3, manifest.input.height, manifest.input.width) \
        if batch[1] > 1 else (1, 3, manifest.input.height, manifest.input.width)
    layout = ct.colorlayout.BGR if manifest.input.color_order == "BGR" else ct.colorlayout.RGB
    image = ct.ImageType(name="image", shape=ct.Shape(shape), scale=scale, bias=bias, color_layout=layout)
    kwargs: dict = {}
    if manifest.task == "classify":
        kwargs["classifier_config"] = ct.ClassifierConfig(list(manifest.labels), predicted_feature_name=LABEL,
                                                          predicted_probabilities_output=PROBABILITIES)
        if compared != PROBABILITIES:
            kwargs["outputs"] = [ct.TensorType(name=PROBABILITIES), ct.TensorType(name=raw_name, dtype=np.float32)]
    else:
        kwargs["outputs"] = [ct.TensorType(name=raw_name, dtype=np.float32)]
    try:
        with coremltools_quiet():
            mlmodel = ct.convert(built.program, convert_to="mlprogram", inputs=[image],
                                 minimum_deployment_target=ct.target.iOS15,
                                 compute_precision=ct.precision.FLOAT16 if precision == "fp16"
                                 else ct.precision.FLOAT32, skip_model_load=True, **kwargs)
    except (ValueError, TypeError, RuntimeError, NotImplementedError) as err:
        raise ConversionError(f"coremltools could not convert the program: {err}") from err
    outputs = [LABEL, LABEL + "_probs"] + ([raw_name] if compared == raw_name else []) \
        if manifest.task == "classify" else [raw_name]
    return Converted(model=mlmodel, input_name="image", raw_output=raw_name, compared_var=compared,
                     outputs=outputs, batch=batch, op_counts=op_counts, fold=built.fold.as_dict())


def preprocessing_note(manifest: Manifest) -> str:
    spec = manifest.input
    crop = {"short_side_center_crop": f"resize the short side to {spec.resize_short or spec.height} and crop the "
                                      f"centre {spec.width}x{spec.height} (Vision: see docs/ios.md)",
            "letterbox": f"letterbox into {spec.width}x{spec.height}, aligned "
                         f"{spec.letterbox.alignment if spec.letterbox else 'center'}, pad value "
                         f"{spec.letterbox.pad_value if spec.letterbox else 114}",
            "stretch": f"stretch to {spec.width}x{spec.height}"}[spec.resize]
    return f"{spec.color_order} image, {crop}; x = (pixel*{spec.scale:g} - mean{spec.mean}) / std{spec.std} " \
           "is applied inside the model"


def describe_model(mlmodel, manifest: Manifest, precision: str, raw_name: str) -> None:
    """Author, licence, description, version and the bundle's labels, thresholds and preprocessing as metadata."""
    mlmodel.author = manifest.author or "unknown"
    mlmodel.license = manifest.license or "unspecified"
    mlmodel.short_description = manifest.description or manifest.name
    mlmodel.version = manifest.version
    meta = mlmodel.user_defined_metadata
    meta["shadowline.bundle"] = manifest.bundle_id
    meta["shadowline.task"] = manifest.task
    meta["shadowline.precision"] = precision
    meta["shadowline.labels"] = json.dumps(manifest.labels)
    meta["shadowline.thresholds"] = json.dumps(manifest.thresholds.model_dump(mode="json"), sort_keys=True)
    meta["shadowline.preprocessing"] = json.dumps(manifest.input.model_dump(mode="json"), sort_keys=True)
    meta["shadowline.output"] = json.dumps(manifest.output.model_dump(mode="json"), sort_keys=True)
    mlmodel.input_description["image"] = preprocessing_note(manifest)
    if manifest.task == "classify":
        mlmodel.output_description[LABEL] = "most likely class"
        mlmodel.output_description[LABEL + "_probs"] = f"score per class ({manifest.output.decoder})"
        if raw_name in mlmodel.output_description:
            mlmodel.output_description[raw_name] = "raw model output (before the activation)"
    else:
        mlmodel.output_description["confidence"] = (
            "per box after NMS: the score of its class (0 for the other classes), in label order")
        mlmodel.output_description["coordinates"] = (
            f"per box after NMS: x centre, y centre, width, height, normalised to the {manifest.input.width}x"
            f"{manifest.input.height} input image, origin top left")
