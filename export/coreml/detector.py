"""Core ML detectors that Vision reads directly: a pipeline of the converted network, a decoding model and Core ML's
NonMaximumSuppression model, as Create ML's and Ultralytics' object detectors are built.

Vision turns such a model's results into `VNRecognizedObjectObservation`s when its outputs are
- `confidence` (boxes x classes): per kept box, its score for each class, and
- `coordinates` (boxes x 4): x centre, y centre, width, height, normalised to the model's input image (0..1),
  origin at the top left.

The decoding model does in Core ML what `runtime/processing/decode.py` does on the devices, up to NMS: YOLOX grid
offsets (`(xy + grid) * stride`, `exp(wh) * stride`, score = objectness x class score) or YOLOv8/YOLO11 boxes
(centre and size in input pixels, scores as given). Each box keeps only its best class's score: the device
decoder gives an anchor one class (the argmax), and Vision reads a row's sum as the confidence that an object is
there (NonMaximumSuppression.proto), which must not exceed 1. The decoding runs in FP32 in both precisions: it is a
handful of element-wise ops, and box coordinates are where FP16 would cost accuracy.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from runtime.errors import ConversionError
from runtime.manifest import Manifest
from runtime.processing.decode import _yolox_grid
from runtime.runners.coreml import coremltools_quiet, import_coremltools

CONFIDENCE, COORDINATES = "confidence", "coordinates"
RAW_CONFIDENCE, RAW_COORDINATES = "raw_confidence", "raw_coordinates"
IOU_INPUT, CONFIDENCE_INPUT = "iouThreshold", "confidenceThreshold"
# the decoders this module can express, and the raw layout each expects: (anchors axis, channels axis)
LAYOUTS = {"yolox": "[1, anchors, 5 + classes]", "yolov8": "[1, 4 + classes, anchors]"}


def raw_layout(manifest: Manifest, raw_shape: tuple[int, ...]) -> tuple[int, int]:
    """(anchors, classes) of the network's raw output, checked against the manifest's decoder and labels."""
    decoder, classes = manifest.output.decoder, len(manifest.labels)
    if decoder not in LAYOUTS:
        raise ConversionError(f"decoder {decoder!r} has no Core ML decoding model (supported: {sorted(LAYOUTS)})")
    extra = 5 if decoder == "yolox" else 4
    if len(raw_shape) != 3 or raw_shape[0] != 1 or not all(isinstance(d, int) for d in raw_shape):
        raise ConversionError(f"the {decoder} decoding model needs a static {LAYOUTS[decoder]} output, the network "
                              f"gives {list(raw_shape)}")
    anchors, channels = (raw_shape[1], raw_shape[2]) if decoder == "yolox" else (raw_shape[2], raw_shape[1])
    if channels != extra + classes:
        raise ConversionError(f"the network output {list(raw_shape)} does not fit {decoder} with {classes} labels "
                              f"({LAYOUTS[decoder]})")
    return anchors, classes


def decoding_program(manifest: Manifest, raw_name: str, raw_shape: tuple[int, ...],
                     bugs: frozenset[str] = frozenset()) -> Any:
    """The MIL program: raw network output -> (raw_confidence [A, C], raw_coordinates [A, 4] in Vision's
    convention). `bugs` plants box-convention mistakes (tests only)."""
    ct = import_coremltools()
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import Function, Program

    anchors, classes = raw_layout(manifest, raw_shape)
    h, w = manifest.input.height, manifest.input.width
    decoder = manifest.output.decoder
    prog = Program()
    # the input is named as the network's output: the pipeline wires its models by feature name
    with Function({raw_name: mb.placeholder(shape=tuple(raw_shape))}, opset_version=ct.target.iOS15) as func:
        raw = func.inputs[raw_name]
        if decoder == "yolox":
            x = mb.squeeze(x=raw, axes=[0])  # [A, 5 + C]
            grid, stride = _yolox_grid(h, w, manifest.output.strides)
            if len(grid) != anchors:
                raise ConversionError(f"yolox strides {manifest.output.strides} give {len(grid)} anchors for "
                                      f"{w}x{h}, the network has {anchors}")
            offsets = mb.slice_by_index(x=x, begin=[0, 0], end=[anchors, 2])
            logsize = mb.slice_by_index(x=x, begin=[0, 2], end=[anchors, 4])
            objectness = mb.slice_by_index(x=x, begin=[0, 4], end=[anchors, 5])
            class_scores = mb.slice_by_index(x=x, begin=[0, 5], end=[anchors, 5 + classes])
            centre = mb.mul(x=mb.add(x=offsets, y=grid), y=stride)
            # the device decoder clips at 20 before exp (no overflow); the same here keeps the two in step
            size = mb.mul(x=mb.exp(x=mb.minimum(x=logsize, y=np.float32(20.0))), y=stride)
            scores = mb.mul(x=objectness, y=class_scores)
        else:
            x = mb.transpose(x=mb.squeeze(x=raw, axes=[0]), perm=[1, 0])  # [A, 4 + C]
            centre = mb.slice_by_index(x=x, begin=[0, 0], end=[anchors, 2])
            size = mb.slice_by_index(x=x, begin=[0, 2], end=[anchors, 4])
            scores = mb.slice_by_index(x=x, begin=[0, 4], end=[anchors, 4 + classes])
        best = mb.reduce_argmax(x=scores, axis=1)
        top = mb.reduce_max(x=scores, axes=[1], keep_dims=True)
        hot = mb.one_hot(indices=best, one_hot_vector_size=classes, on_value=np.float32(1.0),
                         off_value=np.float32(0.0))
        confidence = mb.mul(x=hot, y=top, name=RAW_CONFIDENCE)
        if "box_corners" in bugs:  # x1, y1, x2, y2 instead of centre and size
            half = mb.mul(x=size, y=np.float32(0.5))
            boxes = mb.concat(values=[mb.sub(x=centre, y=half), mb.add(x=centre, y=half)], axis=1)
        else:
            boxes = mb.concat(values=[centre, size], axis=1)
        if "box_pixels" not in bugs:  # the bug: input pixels instead of 0..1
            boxes = mb.mul(x=boxes, y=np.asarray([[1 / w, 1 / h, 1 / w, 1 / h]], np.float32))
        if "box_bottom_left" in bugs:  # y measured from the bottom, as Vision's own boundingBox is
            flip = np.asarray([[1, -1, 1, 1]], np.float32)
            boxes = mb.add(x=mb.mul(x=boxes, y=flip), y=np.asarray([[0, 1, 0, 0]], np.float32))
        func.set_outputs([confidence, mb.identity(x=boxes, name=RAW_COORDINATES)])
        prog.add_function("main", func)
    return prog


def decoding_model(manifest: Manifest, raw_name: str, raw_shape: tuple[int, ...],
                   bugs: frozenset[str] = frozenset()) -> Any:
    ct = import_coremltools()
    prog = decoding_program(manifest, raw_name, raw_shape, bugs)
    with coremltools_quiet():
        return ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS15,
                          inputs=[ct.TensorType(name=raw_name, shape=tuple(raw_shape), dtype=np.float32)],
                          outputs=[ct.TensorType(name=RAW_CONFIDENCE, dtype=np.float32),
                                   ct.TensorType(name=RAW_COORDINATES, dtype=np.float32)],
                          compute_precision=ct.precision.FLOAT32, skip_model_load=True)


def nms_model(manifest: Manifest, anchors: int, spec_version: int) -> Any:
    """Core ML's NonMaximumSuppression with the bundle's IoU, minimum score, per-class rule and labels; the two
    thresholds can be overridden at run time through optional inputs (`iouThreshold`, `confidenceThreshold`)."""
    ct = import_coremltools()
    fp32 = ct.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT32
    classes = len(manifest.labels)
    spec = ct.proto.Model_pb2.Model()
    spec.specificationVersion = spec_version
    for name, width in ((RAW_CONFIDENCE, classes), (RAW_COORDINATES, 4)):
        f = spec.description.input.add()
        f.name = name
        f.type.multiArrayType.dataType = fp32
        f.type.multiArrayType.shape.extend([anchors, width])
    for name, text in ((IOU_INPUT, f"(optional) NMS IoU threshold, default {manifest.output.nms_iou:g}"),
                       (CONFIDENCE_INPUT, f"(optional) minimum box score, default {manifest.output.min_score:g}")):
        f = spec.description.input.add()
        f.name = name
        f.shortDescription = text
        f.type.doubleType.SetInParent()
        f.type.isOptional = True
    for name, width in ((CONFIDENCE, classes), (COORDINATES, 4)):
        f = spec.description.output.add()
        f.name = name
        arr = f.type.multiArrayType
        arr.dataType = fp32
        rows = arr.shapeRange.sizeRanges.add()
        rows.lowerBound, rows.upperBound = 0, -1
        cols = arr.shapeRange.sizeRanges.add()
        cols.lowerBound = cols.upperBound = width
    nms = spec.nonMaximumSuppression
    nms.confidenceInputFeatureName, nms.coordinatesInputFeatureName = RAW_CONFIDENCE, RAW_COORDINATES
    nms.confidenceOutputFeatureName, nms.coordinatesOutputFeatureName = CONFIDENCE, COORDINATES
    nms.iouThresholdInputFeatureName, nms.confidenceThresholdInputFeatureName = IOU_INPUT, CONFIDENCE_INPUT
    nms.iouThreshold = manifest.output.nms_iou
    nms.confidenceThreshold = manifest.output.min_score
    nms.pickTop.perClass = not manifest.output.class_agnostic_nms
    nms.stringClassLabels.vector.extend(manifest.labels)
    with coremltools_quiet():
        return ct.models.MLModel(spec)


def detector_pipeline(network: Any, manifest: Manifest, raw_name: str, bugs: frozenset[str] = frozenset()) -> Any:
    """network -> decoding -> NMS, as one pipeline MLModel whose inputs are the image and the two optional
    thresholds and whose outputs are exactly `confidence` and `coordinates`."""
    ct = import_coremltools()
    out = next((f for f in network.get_spec().description.output if f.name == raw_name), None)
    if out is None:
        raise ConversionError(f"the converted network has no output {raw_name!r}")
    raw_shape = tuple(int(d) for d in out.type.multiArrayType.shape)
    anchors, _ = raw_layout(manifest, raw_shape)
    decoding = decoding_model(manifest, raw_name, raw_shape, bugs)
    suppress = nms_model(manifest, anchors, decoding.get_spec().specificationVersion)
    with coremltools_quiet():
        pipeline = ct.utils.make_pipeline(network, decoding, suppress)
    names = [f.name for f in pipeline.get_spec().description.output]
    if names != [CONFIDENCE, COORDINATES]:
        raise ConversionError(f"the detector pipeline's outputs are {names}, Vision needs {[CONFIDENCE, COORDINATES]}")
    return pipeline
