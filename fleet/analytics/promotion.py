"""Training-data promotion: the hard cases of the field (overridden, disagreed-on, near-threshold) exported as a
dataset with a manifest of where each sample came from. Bad images, samples an inspector marked irrelevant and
high-confidence correct predictions are left out: there is nothing to learn from them."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from fleet.analytics.cases import NO_DEFECT, model_finding, review_finding
from fleet.analytics.windows import parse_ts
from fleet.protocol import PredictionRecord, ReviewRecord, now_iso
from runtime.errors import ConfigError, ImageError
from runtime.fsio import replace_tree, sha256_bytes
from runtime.processing.image import decode_image

UNREVIEWED = "_unreviewed"


class PromotionPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")
    near_threshold: float = Field(0.1, ge=0, le=1, description="a top score within this of its class threshold "
                                  "is near-threshold")
    high_confidence: float = Field(0.9, ge=0, le=1, description="a confirmed prediction at or above this top "
                                   "score is left out as learned already")
    exclude_notes: list[str] = Field(["irrelevant"], description="a review whose note contains one of these "
                                     "words (case-insensitive) leaves the sample out")
    negative_label: str = Field(NO_DEFECT, description="class folder for samples without a defect "
                                "(e.g. 'Normal')")
    include_unreviewed: bool = Field(True, description="near-threshold and disagreed-on samples nobody reviewed "
                                     "go to the _unreviewed folder")


class Candidate(BaseModel):
    prediction: PredictionRecord
    review: ReviewRecord | None
    reasons: list[Literal["overridden", "disagreement", "near_threshold"]]
    label: str


def _threshold(p: PredictionRecord, label: str) -> float | None:
    """The threshold in effect for `label`: flat {class: t, default: t} or per stage {role: {...}}."""
    th: dict[str, Any] = p.thresholds
    if th and all(isinstance(v, dict) for v in th.values()):
        th = th.get("verify") or th.get("screen") or next(iter(th.values()))
    value = th.get(label, th.get("default")) if th else None
    return float(value) if isinstance(value, (int, float)) else None


def select(predictions: Iterable[PredictionRecord], reviews: Iterable[ReviewRecord],
           policy: PromotionPolicy | None = None) -> tuple[list[Candidate], Counter[str]]:
    """The samples worth promoting and a count of those left out, by reason."""
    policy = policy or PromotionPolicy()
    by_pred: dict[str, list[ReviewRecord]] = defaultdict(list)
    for r in reviews:
        by_pred[r.prediction_id].append(r)
    out: list[Candidate] = []
    left_out: Counter[str] = Counter()
    notes = [w.lower() for w in policy.exclude_notes]
    for p in predictions:
        revs = sorted(by_pred.get(p.id, ()), key=lambda r: parse_ts(r.created_at))
        if p.decision == "error":
            continue
        if any(r.verdict == "bad_image" for r in revs):
            left_out["bad_image"] += 1
            continue
        if any(w in r.note.lower() for r in revs for w in notes):
            left_out["irrelevant"] += 1
            continue
        last = revs[-1] if revs else None
        found = model_finding(p)
        findings = {review_finding(r, found) for r in revs}
        reasons: list = []
        if any(r.override for r in revs):
            reasons.append("overridden")
        if p.disagrees_with is not None or len(findings) > 1:
            reasons.append("disagreement")
        thr = _threshold(p, p.top_label) if p.top_label else None
        if thr is not None and p.top_score is not None and abs(p.top_score - thr) <= policy.near_threshold:
            reasons.append("near_threshold")
        if not reasons:
            continue
        confirmed = last is not None and not last.override and "disagreement" not in reasons
        if confirmed and p.top_score is not None and p.top_score >= policy.high_confidence:
            left_out["high_confidence_correct"] += 1
            continue
        if last is None:
            if not policy.include_unreviewed:
                left_out["unreviewed"] += 1
                continue
            label = UNREVIEWED
        else:
            truth = review_finding(last, found)
            label = policy.negative_label if truth == NO_DEFECT else str(truth)
        out.append(Candidate(prediction=p, review=last, reasons=reasons, label=label))
    return out, left_out


class SampleEntry(BaseModel):
    file: str
    sha256: str
    label: str
    reasons: list[str]
    prediction_id: str
    device: str
    created_at: str
    source: str
    release: str
    revision: int
    models: dict[str, str]
    thresholds: dict[str, Any]
    top_label: str | None
    top_score: float | None
    verdict: str | None
    inspector: str | None
    review_id: str | None


class DatasetManifest(BaseModel):
    schema_id: str = Field("shadowline.dataset", alias="schema")
    version: int = 1
    created_at: str = Field(default_factory=now_iso)
    task: Literal["classify", "detect"]
    policy: PromotionPolicy
    samples: list[SampleEntry]
    counts: dict[str, int] = Field(description="samples per label")
    left_out: dict[str, int] = Field(description="samples not promoted, by reason")
    missing: list[dict[str, str]] = Field(default_factory=list, description="chosen but no usable image")

    model_config = ConfigDict(populate_by_name=True)


def _ext(data: bytes) -> str:
    if data.startswith(b"\x89PNG"):
        return ".png"
    if data.startswith(b"\xff\xd8"):
        return ".jpg"
    return ".img"


def _detections(p: PredictionRecord) -> list[dict[str, Any]]:
    for stage in reversed(p.stages):
        if stage.detections is not None:
            return stage.detections
    return []


def export_dataset(candidates: list[Candidate], fetch_image: Callable[[PredictionRecord], bytes | None], out: Path,
                   task: Literal["classify", "detect"], labels: list[str] | None = None,
                   policy: PromotionPolicy | None = None, left_out: dict[str, int] | None = None) -> DatasetManifest:
    """Write the dataset to `out` (a folder per class, or images/ + annotations.json in COCO form), with
    manifest.json. Built in a staging folder and renamed into place: a failure leaves `out` as it was."""
    policy = policy or PromotionPolicy()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        entries: list[SampleEntry] = []
        missing: list[dict[str, str]] = []
        coco: dict[str, list] = {"images": [], "annotations": [], "categories": []}
        cat_ids = {name: i + 1 for i, name in enumerate(labels or [])}
        for c in candidates:
            p = c.prediction
            try:
                data = fetch_image(p)
            except OSError as err:
                data, why = None, f"fetch failed: {err}"
            else:
                why = "image not kept or not uploaded"
            if data is None:
                missing.append({"prediction_id": p.id, "reason": why})
                continue
            try:
                img = decode_image(data, name=p.id)
            except ImageError as err:
                missing.append({"prediction_id": p.id, "reason": str(err)})
                continue
            if task == "classify":
                rel = f"{c.label}/{p.id}{_ext(data)}"
            else:
                rel = f"images/{p.id}{_ext(data)}"
                image_id = len(coco["images"]) + 1
                coco["images"].append({"id": image_id, "file_name": rel, "height": int(img.shape[0]),
                                       "width": int(img.shape[1]), "label": c.label, "reasons": c.reasons})
                # An inspector who called the flag false says the model's boxes are wrong: keep none of them.
                if c.review is None or c.review.verdict != "false_positive":
                    for d in _detections(p):
                        if d["label"] not in cat_ids:
                            cat_ids[d["label"]] = len(cat_ids) + 1
                        x1, y1, x2, y2 = (float(v) for v in d["box"])
                        coco["annotations"].append({
                            "id": len(coco["annotations"]) + 1, "image_id": image_id,
                            "category_id": cat_ids[d["label"]], "bbox": [x1, y1, x2 - x1, y2 - y1],
                            "area": (x2 - x1) * (y2 - y1), "iscrowd": 0, "score": float(d["score"]),
                            "source": "model" if c.review is None else "model, confirmed by inspector"})
            dest = staging / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)
            r = c.review
            entries.append(SampleEntry(
                file=rel, sha256=sha256_bytes(data), label=c.label, reasons=list(c.reasons), prediction_id=p.id,
                device=p.device, created_at=p.created_at, source=p.source, release=p.release, revision=p.revision,
                models=p.models, thresholds=p.thresholds, top_label=p.top_label, top_score=p.top_score,
                verdict=r.verdict if r else None, inspector=r.inspector if r else None, review_id=r.id if r else None))
        if task == "detect":
            coco["categories"] = [{"id": i, "name": n} for n, i in sorted(cat_ids.items(), key=lambda kv: kv[1])]
            (staging / "annotations.json").write_text(json.dumps(coco, indent=1))
        manifest = DatasetManifest(task=task, policy=policy, samples=entries,
                                   counts=dict(sorted(Counter(e.label for e in entries).items())),
                                   left_out=dict(left_out or {}), missing=missing)
        (staging / "manifest.json").write_text(manifest.model_dump_json(indent=2, by_alias=True))
        replace_tree(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def promote(predictions: Iterable[PredictionRecord], reviews: Iterable[ReviewRecord],
            fetch_image: Callable[[PredictionRecord], bytes | None], out: Path, task: Literal["classify", "detect"],
            labels: list[str] | None = None, policy: PromotionPolicy | None = None) -> DatasetManifest:
    """Select the hard cases and export them in one step."""
    if task not in ("classify", "detect"):
        raise ConfigError(f"unknown task {task!r}: classify or detect")
    chosen, left_out = select(predictions, reviews, policy)
    return export_dataset(chosen, fetch_image, out, task, labels, policy, left_out)
