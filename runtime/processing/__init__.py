"""The one implementation of pre- and post-processing: the daemon runs it per frame, export/ for its parity checks."""

from runtime.processing.decode import (
    Detection,
    decode_classification,
    decode_detections,
    decode_yolov8,
    decode_yolox,
    nms_per_class,
)
from runtime.processing.image import decode_image, read_image
from runtime.processing.preprocess import Transform, preprocess, preprocess_batch
from runtime.processing.spec import InputSpec, LetterboxSpec, OutputSpec

__all__ = [
    "Detection", "InputSpec", "LetterboxSpec", "OutputSpec", "Transform", "decode_classification",
    "decode_detections", "decode_image", "decode_yolov8", "decode_yolox", "nms_per_class", "preprocess", "preprocess_batch", "read_image",
]
