"""Output decoders (classification scores, YOLOX and YOLOv8/YOLO11 boxes) and the one NMS.

The NMS is written here on purpose, not taken from OpenCV or torchvision: parity checks compare detections made
by it on both sides, so its exact order and tie-breaking must not change with a library version."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from runtime.processing.preprocess import Transform
from runtime.processing.spec import OutputSpec


@dataclass(frozen=True)
class Detection:
    class_index: int
    label: str
    score: float
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in original image pixels

    def as_dict(self) -> dict:
        return {"class_index": self.class_index, "label": self.label, "score": round(self.score, 6),
                "box": [round(v, 2) for v in self.box]}


def decode_classification(output: np.ndarray, decoder: str) -> np.ndarray:
    """Raw output (N, C) or (N, C, 1, 1) -> per-class scores (N, C) in 0..1."""
    x = np.asarray(output, dtype=np.float32)
    x = x.reshape(x.shape[0], -1)
    if decoder == "softmax":
        e = np.exp(x - x.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    if decoder == "sigmoid":
        return 1.0 / (1.0 + np.exp(-x))
    if decoder == "probabilities":
        return x
    raise ValueError(f"decoder {decoder!r} is not a classification decoder")


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of boxes a (N,4) and b (M,4), x1y1x2y2."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), dtype=np.float32)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def nms_per_class(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou: float) -> np.ndarray:
    """Indices kept by greedy NMS run separately per class, highest score first."""
    keep: list[int] = []
    for c in np.unique(classes):
        idx = np.flatnonzero(classes == c)
        order = idx[np.argsort(-scores[idx], kind="stable")]
        while order.size:
            i = order[0]
            keep.append(int(i))
            if order.size == 1:
                break
            rest = order[1:]
            order = rest[iou_matrix(boxes[i : i + 1], boxes[rest])[0] <= iou]
    return np.asarray(sorted(keep, key=lambda k: -scores[k]), dtype=np.int64)


def _yolox_grid(height: int, width: int, strides: list[int]) -> tuple[np.ndarray, np.ndarray]:
    grids, expanded = [], []
    for s in strides:
        hs, ws = height // s, width // s
        xv, yv = np.meshgrid(np.arange(ws), np.arange(hs))
        grids.append(np.stack((xv, yv), 2).reshape(-1, 2))
        expanded.append(np.full((hs * ws, 1), s))
    return np.concatenate(grids).astype(np.float32), np.concatenate(expanded).astype(np.float32)


def anchor_count(input_hw: tuple[int, int], strides: list[int]) -> int:
    """Anchors of a grid detector: one per cell of each stride's grid (416x416, strides 8/16/32: 3549)."""
    return sum((input_hw[0] // s) * (input_hw[1] // s) for s in strides)


def _select(boxes: np.ndarray, cls_scores: np.ndarray, transform: Transform, spec: OutputSpec, labels: list[str],
            threshold: float) -> list[Detection]:
    """Best class per anchor, score cut, back to original pixels, then NMS (per class unless class-agnostic)."""
    cls = cls_scores.argmax(1)
    conf = cls_scores[np.arange(len(cls)), cls]
    m = conf > threshold
    if not m.any():
        return []
    kept = transform.to_original(boxes[m])
    conf, cls = conf[m], cls[m]
    groups = np.zeros_like(cls) if spec.class_agnostic_nms else cls
    keep = nms_per_class(kept, conf, groups, spec.nms_iou)[: spec.max_detections]
    out = []
    for k in keep:
        x1, y1, x2, y2 = (float(v) for v in kept[k])
        out.append(Detection(int(cls[k]), labels[int(cls[k])], float(conf[k]), (x1, y1, x2, y2)))
    return out


def yolox_candidates(output: np.ndarray, input_hw: tuple[int, int], strides: list[int]) -> tuple[np.ndarray,
                                                                                             np.ndarray]:
    """YOLOX (N, anchors, 5 + classes): grid offsets, log sizes, objectness, class scores (already sigmoided).
    xy = (xy + grid) * stride, wh = exp(wh) * stride, score = objectness * class score."""
    out = np.asarray(output, dtype=np.float32)
    grid, stride = _yolox_grid(input_hw[0], input_hw[1], strides)
    if out.ndim != 3 or out.shape[1] != len(grid):
        raise ValueError(f"yolox output has shape {list(out.shape)}, strides {strides} give {len(grid)} anchors")
    xy = (out[:, :, :2] + grid) * stride
    wh = np.exp(np.minimum(out[:, :, 2:4], 20.0)) * stride
    return np.concatenate([xy - wh / 2, xy + wh / 2], axis=2), out[:, :, 4:5] * out[:, :, 5:]


def yolov8_candidates(output: np.ndarray, input_hw: tuple[int, int], strides: list[int]) -> tuple[np.ndarray,
                                                                                              np.ndarray]:
    """Anchor-free YOLOv8 / YOLO11 (N, 4 + classes, anchors): centre x, centre y, width, height in input pixels (the
    distribution head is decoded inside the graph), then one already-sigmoided score per class; no objectness."""
    out = np.asarray(output, dtype=np.float32)
    anchors = anchor_count(input_hw, strides)
    if out.ndim != 3 or out.shape[2] != anchors:
        raise ValueError(f"yolov8 output has shape {list(out.shape)}, strides {strides} give {anchors} anchors")
    o = out.transpose(0, 2, 1)  # (N, anchors, 4 + classes)
    centre, size = o[:, :, :2], o[:, :, 2:4]
    return np.concatenate([centre - size / 2, centre + size / 2], axis=2), o[:, :, 4:]


CANDIDATES = {"yolox": yolox_candidates, "yolov8": yolov8_candidates}


def detection_candidates(output: np.ndarray, input_hw: tuple[int, int], spec: OutputSpec) -> tuple[np.ndarray,
                                                                                               np.ndarray]:
    """Every anchor before the score cut and NMS: boxes (N, A, 4) as x1, y1, x2, y2 in input pixels and class
    scores (N, A, C), with the manifest's decoder. Parity checks compare these anchor by anchor."""
    try:
        candidates = CANDIDATES[spec.decoder]
    except KeyError:
        raise ValueError(f"decoder {spec.decoder!r} is not a detection decoder") from None
    return candidates(output, input_hw, spec.strides)


def decode_detections(output: np.ndarray, input_hw: tuple[int, int], spec: OutputSpec, labels: list[str],
                      transforms: list[Transform], min_score: float | None = None) -> list[list[Detection]]:
    """Detections per image in original image pixels, with the manifest's decoder (`spec.decoder`): the one entry
    point for the predictor, parity checks and tuning."""
    boxes, scores = detection_candidates(output, input_hw, spec)
    threshold = spec.min_score if min_score is None else min_score
    return [_select(boxes[n], scores[n], transforms[n], spec, labels, threshold) for n in range(len(boxes))]


def decode_yolox(output: np.ndarray, input_hw: tuple[int, int], spec: OutputSpec, labels: list[str],
                 transforms: list[Transform], min_score: float | None = None) -> list[list[Detection]]:
    """Raw YOLOX output (N, anchors, 5 + classes) -> detections per image, in original image pixels."""
    return decode_detections(output, input_hw, spec.model_copy(update={"decoder": "yolox"}), labels, transforms,
                             min_score)


def decode_yolov8(output: np.ndarray, input_hw: tuple[int, int], spec: OutputSpec, labels: list[str],
                  transforms: list[Transform], min_score: float | None = None) -> list[list[Detection]]:
    """YOLOv8 / YOLO11 output (N, 4 + classes, anchors) -> detections per image, in original image pixels."""
    return decode_detections(output, input_hw, spec.model_copy(update={"decoder": "yolov8"}), labels, transforms,
                             min_score)
