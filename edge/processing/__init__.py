"""The one implementation of pre- and post-processing: the daemon runs it per frame, export/ for its parity checks."""

from edge.processing.decode import Detection, decode_classification, decode_yolox, nms_per_class
from edge.processing.image import decode_image, read_image
from edge.processing.preprocess import Transform, preprocess, preprocess_batch
from edge.processing.spec import InputSpec, LetterboxSpec, OutputSpec

__all__ = [
    "Detection", "InputSpec", "LetterboxSpec", "OutputSpec", "Transform", "decode_classification",
    "decode_image", "decode_yolox", "nms_per_class", "preprocess", "preprocess_batch", "read_image",
]
