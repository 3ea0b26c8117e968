"""Compare an artifact's outputs with reference.npz: element-wise statistics and task-level agreement.

One module for every artifact (FP16 ONNX, Core ML package, TensorRT engine, a device's freshly loaded model), so
all of them are judged by the same rules and produce the same `ParityCheck` record.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from runtime.manifest import Manifest, ParityCheck
from runtime.processing.decode import (
    Detection,
    decode_classification,
    decode_detections,
    detection_candidates,
    iou_matrix,
)
from runtime.processing.preprocess import Transform

# Task-level tolerances (issue: detections matched by class with IoU > 0.9, score within 0.05 for FP16).
DEFAULT_TASK = {"iou": 0.9, "score": 0.05}

# Per precision, for every artifact of that precision (export variants, TensorRT engines, the device's own check):
# FP32 differs from the reference only by kernel order, so a relative error above 1e-3 of the output's peak is a
# wrong model, not rounding. Reduced precisions are judged at task level; INT8 gets a wider score band because Q/DQ
# rounding moves scores more than FP16 does.
ELEMENTWISE: dict[str, dict[str, float] | None] = {"fp32": {"max_rel_to_peak": 1e-3}, "fp16": None, "int8": None}
TASK: dict[str, dict[str, float]] = {"fp32": {"score": 0.02}, "fp16": {"score": 0.05}, "int8": {"score": 0.1}}


def tolerances_for(precision: str) -> tuple[dict[str, float] | None, dict[str, float]]:
    """(element-wise limits or None, task-level tolerances) for an artifact of `precision`."""
    if precision not in TASK:
        raise ValueError(f"unknown precision {precision!r}")
    limits = ELEMENTWISE[precision]
    return (dict(limits) if limits else None), dict(TASK[precision])


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
    dets = decode_detections(output, (manifest.input.height, manifest.input.width), manifest.output,
                             manifest.labels, transforms, min_score=min_score)
    return TaskOutput(detections=dets)


def elementwise_stats(ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    ref = np.asarray(ref, dtype=np.float64)
    got = np.asarray(got, dtype=np.float64).reshape(ref.shape)
    diff = np.abs(ref - got)
    peak = float(np.abs(ref).max()) or 1.0
    return {"max_abs": float(diff.max()), "mean_abs": float(diff.mean()), "max_rel_to_peak": float(diff.max() / peak),
            "peak": peak}


Candidates = tuple[np.ndarray, np.ndarray]  # boxes (A, 4) in original image pixels, class scores (A, C)


def _found_among(d: Detection, candidates: Candidates | None, iou: float, score_tol: float) -> bool:
    """Is detection `d` among the other side's boxes before NMS (same class, IoU > iou, score within tol)?"""
    if candidates is None:
        return False
    boxes, scores = candidates
    near = np.flatnonzero(np.abs(scores[:, d.class_index] - d.score) <= score_tol)
    return bool(near.size) and bool((iou_matrix(np.asarray([d.box]), boxes[near])[0] > iou).any())


def match_detections(ref: list[Detection], got: list[Detection], threshold: float, iou: float,
                     score_tol: float, ref_candidates: Candidates | None = None,
                     got_candidates: Candidates | None = None) -> tuple[int, list[str]]:
    """Greedy match by class, IoU and score. Unmatched detections within `score_tol` of the threshold are
    borderline (one side of the cut-off or the other) and tolerated; any other unmatched one is a problem.

    With the other side's candidates (every box before NMS), an unmatched detection that is among them with the
    same box and score counts as matched: NMS there kept another member of a near-tied cluster and suppressed this
    one (an untrained detector gives hundreds of boxes at 0.99 on one object). A box that moved is not among them."""
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
        elif _found_among(r, got_candidates, iou, score_tol):
            matched += 1
        elif r.score - threshold > score_tol:
            problems.append(f"reference {r.label} {r.score:.3f} unmatched (best IoU {best_iou:.3f})")
    for j, g in enumerate(got):
        if j not in used and g.score - threshold > score_tol and not _found_among(g, ref_candidates, iou, score_tol):
            problems.append(f"extra {g.label} {g.score:.3f}")
    return matched, problems


def candidate_stats(ref: Candidates, got: Candidates, cut: float) -> tuple[int, float, float]:
    """(candidates compared, largest score difference, smallest box IoU) over the anchors either side scores at or
    above `cut`: how far the raw outputs moved, before NMS decides what a user sees. Reported, not judged."""
    relevant = (ref[1] >= cut) | (got[1] >= cut)
    anchors = np.flatnonzero(relevant.any(1))
    if not anchors.size:
        return 0, 0.0, 1.0
    diff = float(np.where(relevant, np.abs(ref[1] - got[1]), 0.0).max())
    a, b = ref[0][anchors], got[0][anchors]
    inter = np.clip(np.minimum(a[:, 2:], b[:, 2:]) - np.maximum(a[:, :2], b[:, :2]), 0, None).prod(1)
    union = (a[:, 2:] - a[:, :2]).prod(1) + (b[:, 2:] - b[:, :2]).prod(1) - inter
    return int(relevant.sum()), diff, float((inter / np.maximum(union, 1e-9)).min())


def compare(manifest: Manifest, reference: Reference, outputs: dict[str, np.ndarray], *, artifact: str,
            kind: str, precision: str, elementwise: dict[str, float] | None = None,
            task: dict[str, float] | None = None, seconds: float | None = None) -> ParityCheck:
    """Judge `outputs` (same output names as the reference) against the reference.

    `elementwise` may hold `max_abs` and/or `max_rel_to_peak` limits. Classifiers must agree on the top-1 class of
    every sample; a `score` given in `task` also limits the largest score difference. Detectors: the detections
    after NMS must match (class, IoU > `iou`, score within `score`), a detection NMS suppressed on one side behind
    a near-tie counting as matched when it is among that side's boxes before NMS; how far the raw candidate boxes
    and scores moved is reported in the stats.
    """
    class_score = (task or {}).get("score")
    task = {**DEFAULT_TASK, **(task or {})}
    name = manifest.output.names[0]
    ref_out, got_out = reference.outputs[name], outputs[name]
    stats: dict[str, object] = {}
    failures: list[str] = []
    level = "elementwise+task" if elementwise else "task"
    # Another runtime may drop unit dimensions ([N, C] for [N, C, 1, 1]); fewer or more values are not comparable
    # at all (and numpy would broadcast them silently).
    if np.size(got_out) != np.size(ref_out) or len(got_out) != len(ref_out):
        return ParityCheck(artifact=artifact, kind=kind, precision=precision, level=level, passed=False,
                           samples=len(reference.names), stats={"shape": list(np.shape(got_out))},
                           detail=f"output {name!r} has shape {list(np.shape(got_out))}, the reference "
                                  f"{list(np.shape(ref_out))}", seconds=seconds)
    got_out = np.reshape(got_out, np.shape(ref_out))
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
        max_abs_score = float(np.abs(ref_t.scores - got_t.scores).max())
        stats["max_abs_score"] = max_abs_score
        for i in np.flatnonzero(~agree):
            failures.append(f"{reference.names[i]}: top-1 {manifest.labels[int(got_t.scores[i].argmax())]!r} "
                            f"instead of {manifest.labels[int(ref_t.scores[i].argmax())]!r}")
        if class_score is not None and max_abs_score > class_score:
            failures.append(f"max_abs_score {max_abs_score:.3g} > {class_score:g}")
    else:
        threshold = min([manifest.thresholds.default, *manifest.thresholds.per_class.values()])
        cut = threshold - task["score"]
        hw = (manifest.input.height, manifest.input.width)
        boxes_r, scores_r = detection_candidates(ref_out, hw, manifest.output)
        boxes_g, scores_g = detection_candidates(got_out, hw, manifest.output)
        total, matched, checked, worst_score, worst_iou = 0, 0, 0, 0.0, 1.0
        for i in range(n):
            to_original = reference.transforms[i].to_original
            cand_r: Candidates = (to_original(boxes_r[i]), scores_r[i])
            cand_g: Candidates = (to_original(boxes_g[i]), scores_g[i])
            r = [d for d in ref_t.detections[i] if d.score >= cut]
            g = [d for d in got_t.detections[i] if d.score >= cut]
            m, problems = match_detections(r, g, threshold, task["iou"], task["score"], cand_r, cand_g)
            total += sum(1 for d in r if d.score >= threshold)
            matched += min(m, sum(1 for d in r if d.score >= threshold))
            failures.extend(f"{reference.names[i]}: {p}" for p in problems)
            c, ds, ious = candidate_stats(cand_r, cand_g, cut)
            checked, worst_score, worst_iou = checked + c, max(worst_score, ds), min(worst_iou, ious)
        stats.update(detections_reference=total, detections_matched=matched, candidates_compared=checked,
                     max_candidate_score_diff=worst_score, min_candidate_iou=worst_iou)
    tolerances = {**(elementwise or {}), **({"iou": task["iou"], "score": task["score"]}
                                           if manifest.task == "detect" else {})}
    if manifest.task == "classify" and class_score is not None:
        tolerances["score"] = class_score
    return ParityCheck(artifact=artifact, kind=kind, precision=precision, level=level, passed=not failures,
                       samples=n, stats=stats, tolerances=tolerances, detail="; ".join(failures[:20]),
                       seconds=seconds)
