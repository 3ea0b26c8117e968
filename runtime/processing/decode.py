"""Output decoders (classification scores, YOLOX boxes) and per-class NMS."""

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


def decode_yolox(
    output: np.ndarray,
    input_hw: tuple[int, int],
    spec: OutputSpec,
    labels: list[str],
    transforms: list[Transform],
    min_score: float | None = None,
) -> list[list[Detection]]:
    """Raw YOLOX output (N, anchors, 5 + classes) -> detections per image, in original image pixels."""
    out = np.asarray(output, dtype=np.float32)
    grid, stride = _yolox_grid(input_hw[0], input_hw[1], spec.strides)
    if out.shape[1] != len(grid):
        raise ValueError(f"yolox output has {out.shape[1]} anchors, strides {spec.strides} give {len(grid)}")
    threshold = spec.min_score if min_score is None else min_score
    results: list[list[Detection]] = []
    for n in range(out.shape[0]):
        o = out[n]
        xy = (o[:, :2] + grid) * stride
        wh = np.exp(np.minimum(o[:, 2:4], 20.0)) * stride
        cls_scores = o[:, 4:5] * o[:, 5:]
        cls = cls_scores.argmax(1)
        conf = cls_scores[np.arange(len(cls)), cls]
        m = conf > threshold
        if not m.any():
            results.append([])
            continue
        boxes = np.concatenate([xy[m] - wh[m] / 2, xy[m] + wh[m] / 2], axis=1)
        boxes = transforms[n].to_original(boxes)
        conf, cls = conf[m], cls[m]
        groups = np.zeros_like(cls) if spec.class_agnostic_nms else cls
        keep = nms_per_class(boxes, conf, groups, spec.nms_iou)[: spec.max_detections]
        results.append([
            Detection(int(cls[k]), labels[int(cls[k])], float(conf[k]), tuple(float(v) for v in boxes[k]))
            for k in keep
        ])
    return results
