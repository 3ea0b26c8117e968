"""Resize, colour order and normalisation per the manifest's InputSpec, with OpenCV (imported at the first resize
that needs it: the shipped presets resize with Pillow, and OpenCV adds about 36 MB to a process that loads it)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from runtime.processing.spec import InputSpec

_INTERP = {  # OpenCV's flags by name (cv2.INTER_*), read when a resize needs them
    "bilinear": "INTER_LINEAR",
    "nearest": "INTER_NEAREST",
    "area": "INTER_AREA",
    "bicubic": "INTER_CUBIC",
}


@dataclass(frozen=True)
class Transform:
    """Maps model-input pixel coordinates back to the original image: orig = (p - offset) / scale."""

    scale_x: float
    scale_y: float
    offset_x: float
    offset_y: float
    width: int
    height: int

    def to_original(self, boxes: np.ndarray) -> np.ndarray:
        """Boxes (N,4) x1,y1,x2,y2 in input pixels -> original pixels, clipped to the image."""
        out = np.empty_like(boxes, dtype=np.float32)
        out[:, [0, 2]] = (boxes[:, [0, 2]] - self.offset_x) / self.scale_x
        out[:, [1, 3]] = (boxes[:, [1, 3]] - self.offset_y) / self.scale_y
        out[:, [0, 2]] = out[:, [0, 2]].clip(0, self.width)
        out[:, [1, 3]] = out[:, [1, 3]].clip(0, self.height)
        return out

    def as_list(self) -> list[float]:
        return [self.scale_x, self.scale_y, self.offset_x, self.offset_y, float(self.width), float(self.height)]

    @classmethod
    def from_list(cls, v: list[float] | np.ndarray) -> Transform:
        return cls(float(v[0]), float(v[1]), float(v[2]), float(v[3]), int(v[4]), int(v[5]))


def _resize(image: np.ndarray, size: tuple[int, int], interpolation: str) -> np.ndarray:
    """Resize to size=(width, height). `bilinear_antialias` is PIL's bilinear: when shrinking, its triangle filter
    widens with the scale factor (as torchvision's antialias=True). Models trained on PIL-resized images need it:
    plain INTER_LINEAR moves the shipped PCB model's score for Normal_33 from 0.86 to 0.36."""
    if interpolation == "bilinear_antialias":
        if size == (image.shape[1], image.shape[0]):
            return image
        from PIL import Image

        # Channels are resampled independently, so the BGR array can pass through PIL as if it were RGB.
        return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))
    import cv2

    return cv2.resize(image, size, interpolation=getattr(cv2, _INTERP[interpolation]))


def resize(image: np.ndarray, spec: InputSpec) -> tuple[np.ndarray, Transform]:
    """Resize an HxWx3 uint8 image to the model's input size per `spec.resize`."""
    h, w = image.shape[:2]
    H, W = spec.height, spec.width
    interp = spec.interpolation
    if spec.resize == "stretch":
        out = _resize(image, (W, H), interp)
        return out, Transform(W / w, H / h, 0.0, 0.0, w, h)
    if spec.resize == "short_side_center_crop":
        short = spec.resize_short or min(H, W)
        s = short / min(w, h)
        nw, nh = max(round(w * s), W), max(round(h * s), H)
        resized = _resize(image, (nw, nh), interp)
        left, top = (nw - W) // 2, (nh - H) // 2
        out = resized[top : top + H, left : left + W]
        return np.ascontiguousarray(out), Transform(nw / w, nh / h, -left, -top, w, h)
    # letterbox
    lb = spec.letterbox
    assert lb is not None
    r = min(H / h, W / w)
    nw, nh = max(int(w * r), 1), max(int(h * r), 1)
    resized = _resize(image, (nw, nh), interp)
    canvas = np.full((H, W, 3), lb.pad_value, dtype=np.uint8)
    left, top = (0, 0) if lb.alignment == "top_left" else ((W - nw) // 2, (H - nh) // 2)
    canvas[top : top + nh, left : left + nw] = resized
    return canvas, Transform(nw / w, nh / h, float(left), float(top), w, h)


def preprocess(image_bgr: np.ndarray, spec: InputSpec) -> tuple[np.ndarray, Transform]:
    """One BGR uint8 image -> one input tensor (without batch dimension) and its transform.

    The colour flip and the NCHW transpose are views of the resized uint8 image; the float tensor is written once,
    contiguous, in the model's layout (a float HWC copy transposed afterwards read each float twice, strided: 0.85 of
    the 1 CPU ms this took per SqueezeNet frame). The arithmetic is the same float32 operations in the same order as
    ever (x * scale - mean) / std, so the values are identical to the bit."""
    resized, transform = resize(image_bgr, spec)
    if spec.color_order == "RGB":
        resized = resized[:, :, ::-1]
    src = resized.transpose(2, 0, 1) if spec.layout == "NCHW" else resized
    x = np.empty(src.shape, dtype=np.float32)
    per_channel = (3, 1, 1) if spec.layout == "NCHW" else (3,)
    mean = np.asarray(spec.mean, dtype=np.float32).reshape(per_channel)
    std = np.asarray(spec.std, dtype=np.float32).reshape(per_channel)
    if spec.scale != 1.0:
        np.multiply(src, np.float32(spec.scale), out=x, dtype=np.float32)
    else:
        np.copyto(x, src, casting="safe")
    if mean.any():
        x -= mean
    if (std != 1.0).any():
        x /= std
    return (x.astype(np.float16) if spec.dtype == "float16" else x), transform


def preprocess_batch(images: list[np.ndarray], spec: InputSpec) -> tuple[np.ndarray, list[Transform]]:
    tensors, transforms = zip(*(preprocess(im, spec) for im in images)) if images else ((), ())
    return np.stack(tensors), list(transforms)
