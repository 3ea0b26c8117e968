"""What the manifest says about the model's tensors: the input (layout, size, preprocessing) and the decoded output,
from the model file and the export options. Anything the device could not feed or read is refused here, by name."""

from __future__ import annotations

from collections.abc import Sequence

from export.model_check import ModelInfo
from export.options import ExportOptions
from runtime.errors import ConfigError, ModelRejected
from runtime.processing.shapes import check_output_shape
from runtime.processing.spec import CLASSIFY_DECODERS, DETECT_DECODERS, InputSpec, LetterboxSpec, OutputSpec

Dim = int | str


def _known(d: Dim) -> int | None:
    return d if isinstance(d, int) and d > 0 else None


def input_layout(name: str, shape: Sequence[Dim], requested: str | None, where: str) -> str:
    """NCHW when the channels (3) come first, NHWC when they come last; `requested` settles a shape that fits both
    (or whose channel dimension is dynamic). Anything else is refused naming the shape."""
    first, last = _known(shape[1]), _known(shape[3])
    if requested is not None:
        channels = first if requested == "NCHW" else last
        if channels not in (3, None):
            raise ModelRejected(f"{where}: input {name!r} has shape {list(shape)}: layout {requested} puts "
                                f"{channels} channels where 3 colour channels are expected")
        return requested
    if first == 3 and last == 3:
        raise ConfigError(f"{where}: input {name!r} has shape {list(shape)}, which reads as NCHW and as NHWC: "
                          "give --layout NCHW or NHWC")
    if first == 3:
        return "NCHW"
    if last == 3:
        return "NHWC"
    if first is None or last is None:
        raise ConfigError(f"{where}: input {name!r} has shape {list(shape)} with a dynamic channel dimension: "
                          "give --layout NCHW or NHWC")
    raise ModelRejected(f"{where}: input {name!r} has shape {list(shape)}: Shadowline feeds 3-channel colour images "
                        "as NCHW [N, 3, H, W] or NHWC [N, H, W, 3]; this input is neither (grayscale, "
                        "multi-frame or non-image inputs are not supported)")


def input_spec(info: ModelInfo, opts: ExportOptions) -> InputSpec:
    """The manifest's input: tensor name, shape (dynamic batch as 'N'), dtype, layout and preprocessing."""
    if len(info.inputs) != 1:
        raise ModelRejected(f"{info.path}: expected one image input, found {[i[0] for i in info.inputs]}")
    name, shape, dtype = info.inputs[0]
    if len(shape) != 4:
        raise ModelRejected(f"{info.path}: input {name!r} has shape {shape}; a 4-dimensional image tensor "
                            "(NCHW [N, 3, H, W] or NHWC [N, H, W, 3]) is expected")
    if dtype not in ("float32", "float16"):
        raise ModelRejected(f"{info.path}: input {name!r} is {dtype}; Shadowline feeds float32 or float16 image "
                            "tensors")
    layout = input_layout(name, shape, opts.layout, str(info.path))
    h, w = (shape[2], shape[3]) if layout == "NCHW" else (shape[1], shape[2])
    if opts.input_size:
        if len(opts.input_size) != 2:
            raise ConfigError("input_size must be [height, width]")
        if isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0 and [h, w] != opts.input_size:
            raise ConfigError(f"input_size {opts.input_size} does not match the model's fixed input {[h, w]}")
        h, w = opts.input_size
    if not isinstance(h, int) or not isinstance(w, int) or h <= 0 or w <= 0:
        raise ConfigError(f"the model's input size is dynamic ({shape}); give --input-size HEIGHT WIDTH")
    for key in ("color_order", "resize"):
        if getattr(opts, key) is None:
            raise ConfigError(f"{key} is required (the model file does not say how its pixels are prepared)")
    batch: Dim = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else "N"
    full: list[Dim] = [batch, 3, h, w] if layout == "NCHW" else [batch, h, w, 3]
    return InputSpec(
        name=name, shape=full, dtype="float32" if dtype == "float32" else "float16",
        layout=layout, color_order=opts.color_order, resize=opts.resize,
        letterbox=LetterboxSpec(alignment=opts.letterbox_alignment, pad_value=opts.pad_value)
        if opts.resize == "letterbox" else None,
        resize_short=opts.resize_short, interpolation=opts.interpolation, scale=opts.scale, mean=opts.mean,
        std=opts.std)


def output_spec(info: ModelInfo, opts: ExportOptions) -> OutputSpec:
    assert opts.decoder is not None and opts.task is not None
    if opts.task == "classify" and opts.decoder not in CLASSIFY_DECODERS:
        raise ConfigError(f"decoder {opts.decoder!r} is for task detect; a classifier uses "
                          f"{', '.join(CLASSIFY_DECODERS)}")
    if opts.task == "detect" and opts.decoder not in DETECT_DECODERS:
        raise ConfigError(f"decoder {opts.decoder!r} cannot decode detections; use {' or '.join(DETECT_DECODERS)}")
    return OutputSpec(names=[o[0] for o in info.outputs], decoder=opts.decoder, nms_iou=opts.nms_iou,
                      class_agnostic_nms=opts.class_agnostic_nms, strides=opts.strides, min_score=opts.min_score)


def class_count(shape: Sequence[Dim], decoder: str) -> int | None:
    """Classes in an output of `shape` as `decoder` reads it, or None while a dimension is unknown."""
    if decoder == "yolox":
        c = _known(shape[-1]) if len(shape) == 3 else None
        return c - 5 if c is not None else None
    if decoder == "yolov8":
        c = _known(shape[1]) if len(shape) == 3 else None
        return c - 4 if c is not None else None
    rest = [_known(d) for d in shape[1:]]
    return rest[0] if rest and all(d is not None for d in rest) and all(d == 1 for d in rest[1:]) else None


def check_output(shape: Sequence[Dim], spec: InputSpec, output: OutputSpec, task: str, labels: int,
                 where: str) -> None:
    """The output-shape rule of runtime.processing.shapes for this export (before and after the reference run)."""
    check_output_shape(shape, task=task, decoder=output.decoder, labels=labels, input_hw=(spec.height, spec.width),
                       strides=output.strides, name=output.names[0], where=where)
