"""Compare an artifact's outputs with reference.npz: element-wise statistics and task-level agreement.

One module for every artifact (FP16 ONNX, Core ML package, TensorRT engine, a device's freshly loaded model), so
all of them are judged by the same rules and produce the same `ParityCheck` record.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from runtime.manifest import Manifest, ParityCheck
from runtime.processing.decode import Detection, decode_classification, decode_yolox, iou_matrix
from runtime.processing.preprocess import Transform

# Task-level tolerances (issue: detections matched by class with IoU > 0.9, score within 0.05 for FP16).
DEFAULT_TASK = {"iou": 0.9, "score": 0.05}


@dataclass
class Reference:
    """reference.npz: preprocessed calibration inputs and the FP32 ONNX Runtime outputs."""

    inputs: np.ndarray
    outputs: dict[str, np.ndarray]
    names: list[str]
    transforms: list[Transform]

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> Reference:
        outputs = {k[len("output."):]: v for k, v in arrays.items() if k.startswith("output.")}
        return cls(arrays["input"], outputs, [str(n) for n in arrays["names"]],
                   [Transform.from_list(t) for t in arrays["transforms"]])

    def to_arrays(self) -> dict[str, np.ndarray]:
        d = {"input": self.inputs, "names": np.asarray(self.names),
             "transforms": np.asarray([t.as_list() for t in self.transforms], dtype=np.float64)}
        d.update({f"output.{k}": v for k, v in self.outputs.items()})
        return d


@dataclass
class TaskOutput:
    scores: np.ndarray | None = None  # classify: (N, C)
    detections: list[list[Detection]] = field(default_factory=list)  # detect


def task_output(manifest: Manifest, output: np.ndarray, transforms: list[Transform],
                min_score: float | None = None) -> TaskOutput:
    if manifest.task == "classify":
        return TaskOutput(scores=decode_classification(output, manifest.output.decoder))
    dets = decode_yolox(output, (manifest.input.height, manifest.input.width), manifest.output,
                        manifest.labels, transforms, min_score=min_score)
    return TaskOutput(detections=dets)


def elementwise_stats(ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    ref = np.asarray(ref, dtype=np.float64)
    got = np.asarray(got, dtype=np.float64).reshape(ref.shape)
    diff = np.abs(ref - got)
    peak = float(np.abs(ref).max()) or 1.0
    return {"max_abs": float(diff.max()), "mean_abs": float(diff.mean()), "max_rel_to_peak": float(diff.max() / peak),
            "peak": peak}


def match_detections(ref: list[Detection], got: list[Detection], threshold: float, iou: float,
                     score_tol: float) -> tuple[int, list[str]]:
    """Greedy match by class, IoU and score. Unmatched detections within `score_tol` of the threshold are
    borderline (one side of the cut-off or the other) and tolerated; any other unmatched one is a failure."""
    problems: list[str] = []
    used: set[int] = set()
    matched = 0
    for r in sorted(ref, key=lambda d: -d.score):
        best, best_iou = None, 0.0
        for j, g in enumerate(got):
            if j in used or g.class_index != r.class_index:
                continue
            v = float(iou_matrix(np.asarray([r.box]), np.asarray([g.box]))[0, 0])
            if v > best_iou:
                best, best_iou = j, v
        if best is not None and best_iou > iou and abs(got[best].score - r.score) <= score_tol:
            used.add(best)
            matched += 1
        elif r.score - threshold > score_tol:
            problems.append(f"reference {r.label} {r.score:.3f} unmatched (best IoU {best_iou:.3f})")
    for j, g in enumerate(got):
        if j not in used and g.score - threshold > score_tol:
            problems.append(f"extra {g.label} {g.score:.3f}")
    return matched, problems


def compare(manifest: Manifest, reference: Reference, outputs: dict[str, np.ndarray], *, artifact: str,
            kind: str, precision: str, elementwise: dict[str, float] | None = None,
            task: dict[str, float] | None = None, seconds: float | None = None) -> ParityCheck:
    """Judge `outputs` (same output names as the reference) against the reference.

    `elementwise` may hold `max_abs` and/or `max_rel_to_peak` limits; `task` holds `iou` and `score` for
    detectors. Classifiers must agree on the top-1 class of every sample.
    """
    task = {**DEFAULT_TASK, **(task or {})}
    name = manifest.output.names[0]
    ref_out, got_out = reference.outputs[name], outputs[name]
    stats: dict[str, object] = {}
    failures: list[str] = []
    if elementwise:
        es = elementwise_stats(ref_out, got_out)
        stats.update(es)
        for key, limit in elementwise.items():
            if es[key] > limit:
                failures.append(f"{key} {es[key]:.3g} > {limit:g}")
    n = len(reference.names)
    ref_t = task_output(manifest, ref_out, reference.transforms)
    got_t = task_output(manifest, got_out, reference.transforms)
    if manifest.task == "classify":
        assert ref_t.scores is not None and got_t.scores is not None
        agree = ref_t.scores.argmax(1) == got_t.scores.argmax(1)
        stats["top1_agree"] = int(agree.sum())
        stats["top1_of"] = n
        stats["max_abs_score"] = float(np.abs(ref_t.scores - got_t.scores).max())
        for i in np.flatnonzero(~agree):
            failures.append(f"{reference.names[i]}: top-1 {manifest.labels[int(got_t.scores[i].argmax())]!r} "
                            f"instead of {manifest.labels[int(ref_t.scores[i].argmax())]!r}")
    else:
        threshold = manifest.thresholds.default
        total, matched = 0, 0
        for i in range(n):
            r = [d for d in ref_t.detections[i] if d.score >= threshold - task["score"]]
            g = [d for d in got_t.detections[i] if d.score >= threshold - task["score"]]
            m, problems = match_detections(r, g, threshold, task["iou"], task["score"])
            total += sum(1 for d in r if d.score >= threshold)
            matched += m
            failures.extend(f"{reference.names[i]}: {p}" for p in problems)
        stats["detections_reference"] = total
        stats["detections_matched"] = matched
    level = "elementwise+task" if elementwise else "task"
    tolerances = {**(elementwise or {}), **({"iou": task["iou"], "score": task["score"]}
                                           if manifest.task == "detect" else {})}
    return ParityCheck(artifact=artifact, kind=kind, precision=precision, level=level, passed=not failures,
                       samples=n, stats=stats, tolerances=tolerances, detail="; ".join(failures[:20]),
                       seconds=seconds)
