"""What a Core ML package is judged by: what the app receives, at the tolerance the two sides allow.

- Classifiers: the probabilities in `classLabel_probs` (after the converted softmax or sigmoid) against the
  reference probabilities (the manifest's decoder applied to the ONNX Runtime output), besides the raw output and
  the classify op's label. Comparing only logits and top-1 would pass a package that lost its softmax.
- Detectors: the pipeline's `confidence` and `coordinates`, read in Vision's convention and mapped back to the
  original image, against the detections the device decoder makes from the ONNX Runtime output.

Tolerances follow the precision of both sides: an FP16 package, or a reference that is itself FP16 (a model with
float16 output), is compared at FP16 tolerance, and the result says which side limits the comparison.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from runtime.manifest import Manifest
from runtime.parity import DEFAULT_TASK, Reference, match_detections, task_output
from runtime.processing.decode import Detection, detection_candidates

# FP32: element-wise on the raw output (classifiers absolute, detectors relative to the largest value), and the
# probabilities the app reads within 1e-4. FP16: task level: same top-1, every probability within 0.05.
FP32_RAW = {"classify": {"max_abs": 1e-4}, "detect": {"max_rel_to_peak": 1e-3}}
FP32_PROBABILITY = 1e-4
FP16_SCORE = 0.05
# Detections of the pipeline vs the reference's, matched by class, IoU and score. FP32: the same boxes up to
# rounding; FP16: the task-level tolerance (IoU > 0.9, score within 0.05).
FP32_DETECTIONS = {"iou": 0.99, "score": 1e-3}
FP16_DETECTIONS = dict(DEFAULT_TASK)


@dataclass(frozen=True)
class Tolerance:
    """The precision a comparison is made at, and which side sets it."""

    level: str  # "fp32" | "fp16"
    limited_by: str  # "" (both FP32) | "package" | "reference" | "package and reference"
    reference_dtype: str

    @property
    def fp32(self) -> bool:
        return self.level == "fp32"

    def describe(self) -> str:
        if self.fp32:
            return "FP32 tolerance (package and reference both FP32)"
        why = {"package": "the package computes in FP16",
               "reference": f"the reference is {self.reference_dtype} (the ONNX model's output)",
               "package and reference": f"the package computes in FP16 and the reference is "
                                        f"{self.reference_dtype}"}[self.limited_by]
        return f"FP16 tolerance (limited by the {self.limited_by}: {why})"


def tolerance(precision: str, reference_output: np.ndarray) -> Tolerance:
    ref16 = np.asarray(reference_output).dtype == np.float16
    pkg16 = precision == "fp16"
    limited = "package and reference" if ref16 and pkg16 else "package" if pkg16 else "reference" if ref16 else ""
    return Tolerance("fp16" if limited else "fp32", limited, str(np.asarray(reference_output).dtype))


def reference_scores(manifest: Manifest, reference: Reference) -> np.ndarray:
    scores = task_output(manifest, reference.outputs[manifest.output.names[0]], reference.transforms).scores
    assert scores is not None
    return scores.astype(np.float64)


def check_probabilities(manifest: Manifest, reference: Reference, dicts: list[dict[str, float]],
                        labels: list[str], tol: Tolerance) -> tuple[dict[str, Any], list[str]]:
    """classLabel_probs and classLabel (what the app reads) against the reference probabilities and top-1."""
    want = reference_scores(manifest, reference)
    problems: list[str] = []
    if len(dicts) != len(want) or len(labels) != len(want):
        return {}, [f"the classify op gave {len(dicts)} dictionaries and {len(labels)} labels for {len(want)} "
                    "samples"]
    missing = sorted({label for d in dicts for label in manifest.labels if label not in d})
    if missing:
        return {}, [f"classLabel_probs lacks labels {missing[:5]}"]
    got = np.asarray([[float(d[label]) for label in manifest.labels] for d in dicts], np.float64)
    diff = np.abs(got - want)
    limit = FP32_PROBABILITY if tol.fp32 else FP16_SCORE
    stats: dict[str, Any] = {"probs_max_abs": float(diff.max()), "probs_mean_abs": float(diff.mean()),
                             "probs_limit": limit}
    if diff.max() > limit:
        problems.append(f"classLabel_probs max abs {diff.max():.3g} > {limit:g}")
        # per sample, the class the app would show first: what an inspector would read
        for i in np.flatnonzero(diff.max(axis=1) > limit):
            j = int(want[i].argmax())
            problems.append(f"{reference.names[i]}: classLabel_probs[{manifest.labels[j]!r}] = {got[i, j]:.4g}, "
                            f"reference {want[i, j]:.4g}")
    top = [manifest.labels[int(k)] for k in want.argmax(1)]
    stats["class_label_agree"] = sum(a == b for a, b in zip(labels, top))
    problems += [f"{n}: classLabel {a!r}, reference {b!r}" for n, a, b in zip(reference.names, labels, top) if a != b]
    return stats, problems


def _vision_boxes(manifest: Manifest, coordinates: np.ndarray, transform) -> np.ndarray:
    """Vision's (x centre, y centre, width, height), normalised to the input image, as x1, y1, x2, y2 in original
    image pixels."""
    xywh = np.asarray(coordinates, np.float64).reshape(-1, 4)
    w, h = manifest.input.width, manifest.input.height
    cx, cy, bw, bh = xywh[:, 0] * w, xywh[:, 1] * h, xywh[:, 2] * w, xywh[:, 3] * h
    return transform.to_original(np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1))


def vision_detections(manifest: Manifest, confidence: np.ndarray, coordinates: np.ndarray,
                      transform) -> list[Detection]:
    """Pipeline outputs read as an app reads them (Vision's convention), mapped back to original image pixels."""
    conf = np.asarray(confidence, np.float64).reshape(-1, len(manifest.labels))
    if not len(conf):
        return []
    boxes = _vision_boxes(manifest, coordinates, transform)
    cls = conf.argmax(1)
    return [Detection(int(c), manifest.labels[int(c)], float(conf[k, c]),
                      (float(boxes[k, 0]), float(boxes[k, 1]), float(boxes[k, 2]), float(boxes[k, 3])))
            for k, c in enumerate(cls)]


def check_detections(manifest: Manifest, reference: Reference, outputs: list[tuple[np.ndarray, np.ndarray]],
                     tol: Tolerance, before_nms: list[tuple[np.ndarray, np.ndarray]] | None = None,
                     ) -> tuple[dict[str, Any], list[str]]:
    """The pipeline's detections per reference image against the device decoder's on the ONNX Runtime output, at
    the bundle's default threshold. With `before_nms` (per image, the pipeline's decoded boxes before its NMS
    stage), a near-tie counts as runtime.parity counts it for every other artifact: a detection one side's NMS kept
    and the other suppressed behind a near-tied neighbour is matched when it is among that side's boxes before NMS
    (the pipeline's own boxes, so a wrong box convention in its decoding still fails)."""
    task = FP32_DETECTIONS if tol.fp32 else FP16_DETECTIONS
    ref_raw = reference.outputs[manifest.output.names[0]]
    ref = task_output(manifest, ref_raw, reference.transforms).detections
    threshold = manifest.thresholds.default
    ref_boxes, ref_scores = detection_candidates(ref_raw, (manifest.input.height, manifest.input.width),
                                                 manifest.output)
    total = matched = boxes = 0
    problems: list[str] = []
    for i, (conf, coords) in enumerate(outputs):
        transform = reference.transforms[i]
        got = vision_detections(manifest, conf, coords, transform)
        boxes += len(got)
        r = [d for d in ref[i] if d.score >= threshold - task["score"]]
        g = [d for d in got if d.score >= threshold - task["score"]]
        if before_nms is None:
            m, found = match_detections(r, g, threshold, task["iou"], task["score"])
        else:
            raw_conf, raw_coords = before_nms[i]
            got_cands = (_vision_boxes(manifest, raw_coords, transform),
                         np.asarray(raw_conf, np.float64).reshape(-1, len(manifest.labels)))
            m, found = match_detections(r, g, threshold, task["iou"], task["score"],
                                        (transform.to_original(ref_boxes[i]), ref_scores[i]), got_cands)
        total += sum(1 for d in r if d.score >= threshold)
        matched += m
        problems.extend(f"{reference.names[i]}: Vision output: {p}" for p in found)
    stats = {"vision_detections_reference": total, "vision_detections_matched": matched,
             "vision_boxes_after_nms": boxes, "vision_iou": task["iou"], "vision_score_tol": task["score"]}
    return stats, problems
