"""The output-shape rule: can this decoder read this output? One function for the exporter, `edge validate-config`,
the device's activation check and the predictor, so a bundle that cannot be decoded never reaches a frame.

A classifier's output is [N, C] or [N, C, 1, 1] with C equal to the labels; a YOLOX output is [N, A, 5 + C]; a
YOLOv8/YOLO11 output is [N, 4 + C, A], where A is the number of grid cells the strides give for the input size.
Anything else is refused with the actual and the expected shape and, where one exists, the decoder that would fit.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from runtime.errors import LabelError, ModelRejected
from runtime.processing.decode import anchor_count
from runtime.processing.spec import CLASSIFY_DECODERS, DETECT_DECODERS

if TYPE_CHECKING:
    from runtime.bundle import Bundle
    from runtime.manifest import Manifest

Dim = int | str | None


def _fixed(d: Dim) -> int | None:
    return d if isinstance(d, int) and d > 0 else None


def _fmt(shape: Sequence[Dim]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def expected_shape(task: str, decoder: str, labels: int, input_hw: tuple[int, int], strides: list[int]) -> str:
    """The shape `decoder` reads, written out for messages (batch as N)."""
    if decoder in CLASSIFY_DECODERS:
        return f"[N, {labels}] or [N, {labels}, 1, 1]"
    anchors = anchor_count(input_hw, strides)
    if decoder == "yolox":
        return f"[N, {anchors}, {5 + labels}] (anchors, 5 + {labels} classes)"
    if decoder == "yolov8":
        return f"[N, {4 + labels}, {anchors}] (4 + {labels} classes, anchors)"
    raise ModelRejected(f"unknown decoder {decoder!r}")


def reading(shape: Sequence[Dim], input_hw: tuple[int, int], strides: list[int]) -> str:
    """What an output of this shape is, in words, with the decoder that reads it (or that none does)."""
    dims = [_fixed(d) for d in shape]
    anchors = anchor_count(input_hw, strides)
    if len(dims) == 2 and dims[1]:
        return f"a classifier output of {dims[1]} classes (decoder softmax, sigmoid or probabilities, {dims[1]} labels)"
    if len(dims) == 4 and dims[1] and dims[2] == 1 and dims[3] == 1:
        return f"a classifier output of {dims[1]} classes (decoder softmax, sigmoid or probabilities, {dims[1]} labels)"
    if len(dims) == 4 and (dims[2] or 0) > 1 and (dims[3] or 0) > 1:
        return (f"a per-pixel map of {dims[1] or '?'} channel(s) at {dims[2]}x{dims[3]} (segmentation or text "
                "detection, e.g. DB): no Shadowline decoder reads it")
    if len(dims) == 3:
        if dims[1] == anchors and dims[2] and dims[2] > 5:
            return f"a YOLOX detector output (decoder yolox, task detect, {dims[2] - 5} labels)"
        if dims[2] == anchors and dims[1] and dims[1] > 4:
            return f"a YOLOv8/YOLO11 detector output (decoder yolov8, task detect, {dims[1] - 4} labels)"
        if dims[1] and dims[2]:
            return (f"a sequence of {dims[1]} steps over {dims[2]} classes (a CTC text recogniser such as CRNN, or a "
                    f"detector whose anchors do not match the {input_hw[0]}x{input_hw[1]} input with strides "
                    f"{strides}): no Shadowline decoder reads it")
    return "no Shadowline decoder reads it"


def check_output_shape(shape: Sequence[Dim], *, task: str, decoder: str, labels: int, input_hw: tuple[int, int],
                       strides: list[int], name: str = "output", where: str = "") -> None:
    """Raise ModelRejected unless `decoder` (for `task`) reads an output of `shape` with `labels` classes.

    Unknown dimensions (None, a symbol, 0) pass for now: the exporter calls this again with the actual shape of its
    reference run, where every dimension is known."""
    prefix = f"{where}: " if where else ""
    if task == "classify" and decoder not in CLASSIFY_DECODERS:
        raise ModelRejected(f"{prefix}decoder {decoder!r} does not classify; use one of {', '.join(CLASSIFY_DECODERS)}")
    if task == "detect" and decoder not in DETECT_DECODERS:
        raise ModelRejected(f"{prefix}decoder {decoder!r} does not detect; use one of {', '.join(DETECT_DECODERS)}")
    dims = [_fixed(d) for d in shape]
    anchors = anchor_count(input_hw, strides)
    if decoder in CLASSIFY_DECODERS:
        fits = len(dims) == 2 or (len(dims) == 4 and dims[2] in (1, None) and dims[3] in (1, None))
        classes = dims[1] if fits else None
    elif decoder == "yolox":
        fits = len(dims) == 3 and dims[1] in (anchors, None) and (dims[2] is None or dims[2] > 5)
        classes = dims[2] - 5 if fits and dims[2] else None
    else:
        fits = len(dims) == 3 and dims[2] in (anchors, None) and (dims[1] is None or dims[1] > 4)
        classes = dims[1] - 4 if fits and dims[1] else None
    if fits and classes in (None, labels):
        return
    expected = expected_shape(task, decoder, labels, input_hw, strides)
    what = reading(shape, input_hw, strides)
    if fits:
        raise LabelError(f"{prefix}{labels} labels given, but the model output has {classes} classes: output "
                         f"{name!r} has shape {_fmt(shape)}, decoder {decoder!r} expects {expected}")
    raise ModelRejected(f"{prefix}output {name!r} has shape {_fmt(shape)}; decoder {decoder!r} (task {task}) expects "
                        f"{expected}. It looks like {what}")


def check_manifest_output(manifest: Manifest, shape: Sequence[Dim], where: str = "") -> None:
    """`check_output_shape` with the task, decoder, labels, input size and strides of a bundle's manifest."""
    check_output_shape(shape, task=manifest.task, decoder=manifest.output.decoder, labels=len(manifest.labels),
                       input_hw=(manifest.input.height, manifest.input.width), strides=manifest.output.strides,
                       name=manifest.output.names[0], where=where or manifest.bundle_id)


def check_bundle_output(bundle: Bundle) -> None:
    """Refuse a bundle whose decoder cannot read its model's output, as recorded by the export's reference run
    (reference.npz). Reads the array's header only, not its data."""
    m = bundle.manifest
    check_manifest_output(m, reference_shape(bundle.path("reference.npz"), f"output.{m.output.names[0]}",
                                             m.bundle_id))


def reference_shape(npz: Path, key: str, where: str) -> list[int]:
    """The shape of one array of an .npz file from its .npy header (a detector's reference outputs are megabytes
    of compressed data that the check does not need)."""
    import zipfile

    import numpy as np

    fmt = np.lib.format
    try:
        with zipfile.ZipFile(npz) as zf, zf.open(f"{key}.npy") as f:
            major, _ = fmt.read_magic(f)
            header = fmt.read_array_header_1_0(f) if major == 1 else fmt.read_array_header_2_0(f)
    except KeyError:
        raise ModelRejected(f"{where}: reference.npz holds no {key!r} for the decoded output") from None
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise ModelRejected(f"{where}: reference.npz cannot be read ({err})") from err
    return list(header[0])
