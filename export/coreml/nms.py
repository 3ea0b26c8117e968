"""Core ML's NonMaximumSuppression model, evaluated with numpy as its specification (NonMaximumSuppression.proto)
documents it, so a detector pipeline can be checked end to end on Linux.

The documented algorithm (PickTop): drop boxes whose confidence is below the confidence threshold; sort the rest
by descending confidence; keep the top box and suppress the boxes that overlap it by more than the IoU threshold
(with `perClass`, only boxes with the same label, the argmax of the confidence row); repeat on what is left.
Outputs are the kept rows of the confidence and coordinates inputs, unchanged, in that order. Coordinates are
(x centre, y centre, width, height); IoU does not depend on their unit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class NmsParams:
    """What a NonMaximumSuppression model spec says."""

    confidence_input: str
    coordinates_input: str
    confidence_output: str
    coordinates_output: str
    iou_input: str
    confidence_threshold_input: str
    iou_threshold: float
    confidence_threshold: float
    per_class: bool
    labels: list[str]

    @classmethod
    def from_spec(cls, spec: Any) -> NmsParams:
        nms = spec.nonMaximumSuppression
        if nms.WhichOneof("SuppressionMethod") != "pickTop":
            raise ValueError(f"NMS suppression method {nms.WhichOneof('SuppressionMethod')!r} is not PickTop")
        kind = nms.WhichOneof("ClassLabels")
        labels = [str(v) for v in (getattr(nms, kind).vector if kind else [])]
        return cls(nms.confidenceInputFeatureName, nms.coordinatesInputFeatureName, nms.confidenceOutputFeatureName,
                   nms.coordinatesOutputFeatureName, nms.iouThresholdInputFeatureName,
                   nms.confidenceThresholdInputFeatureName, float(nms.iouThreshold), float(nms.confidenceThreshold),
                   bool(nms.pickTop.perClass), labels)


def iou_xywh(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of one centre/size box with each of `others` (N, 4)."""
    def corners(b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return b[..., 0] - b[..., 2] / 2, b[..., 1] - b[..., 3] / 2, b[..., 0] + b[..., 2] / 2, b[..., 1] + b[..., 3] / 2

    ax1, ay1, ax2, ay2 = corners(box.astype(np.float64))
    bx1, by1, bx2, by2 = corners(others.astype(np.float64))
    inter = np.clip(np.minimum(ax2, bx2) - np.maximum(ax1, bx1), 0, None) * \
        np.clip(np.minimum(ay2, by2) - np.maximum(ay1, by1), 0, None)
    union = box[2] * box[3] + others[:, 2] * others[:, 3] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def suppress(confidence: np.ndarray, coordinates: np.ndarray, iou_threshold: float, confidence_threshold: float,
             per_class: bool) -> tuple[np.ndarray, np.ndarray]:
    """(kept confidence rows, kept coordinate rows), highest confidence first."""
    conf = np.asarray(confidence)
    coords = np.asarray(coordinates)
    if conf.ndim != 2 or coords.ndim != 2 or coords.shape != (conf.shape[0], 4):
        raise ValueError(f"NMS wants confidence (N, C) and coordinates (N, 4), got {conf.shape} and {coords.shape}")
    if (conf < 0).any():
        raise ValueError("NMS confidences must be non-negative (the specification forbids negative values)")
    score = conf.max(axis=1) if conf.shape[1] else np.zeros(len(conf))
    label = conf.argmax(axis=1) if conf.shape[1] else np.zeros(len(conf), int)
    candidates = np.flatnonzero(score >= confidence_threshold)
    order = candidates[np.argsort(-score[candidates], kind="stable")]
    keep: list[int] = []
    while order.size:
        top, rest = order[0], order[1:]
        keep.append(int(top))
        overlap = iou_xywh(coords[top], coords[rest]) > iou_threshold
        if per_class:
            overlap &= label[rest] == label[top]
        order = rest[~overlap]
    idx = np.asarray(keep, dtype=np.int64)
    return conf[idx], coords[idx]


def run_nms(params: NmsParams, values: dict[str, Any]) -> dict[str, np.ndarray]:
    """Evaluate the NMS model on `values` (its inputs by name; the optional threshold inputs override the spec's
    defaults when given)."""
    iou = float(values.get(params.iou_input, params.iou_threshold)) if params.iou_input else params.iou_threshold
    thr = float(values.get(params.confidence_threshold_input, params.confidence_threshold)) \
        if params.confidence_threshold_input else params.confidence_threshold
    conf, coords = suppress(values[params.confidence_input], values[params.coordinates_input], iou, thr,
                            params.per_class)
    return {params.confidence_output: conf, params.coordinates_output: coords}
