"""Where tuning samples come from: labelled images run through a bundle, or collected inspector verdicts."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from fleet.analytics.cases import NO_DEFECT, model_finding, review_finding
from fleet.analytics.tuning import Sample
from fleet.protocol import PredictionRecord, ReviewRecord
from runtime.errors import ConfigError, ImageError
from runtime.processing.image import read_image

IMAGE_EXT = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}


class Skipped(BaseModel):
    source: str
    reason: str


class LabelledSet(BaseModel):
    samples: list[Sample]
    skipped: list[Skipped] = Field(default_factory=list)


def labelled_images(folder: Path, labels: list[str]) -> list[tuple[Path, list[str]]]:
    """(image, classes present) from one of three layouts: `labels.json` ({file: [classes]}, for detectors);
    a sub-folder per class; or flat files named `<Class>_<anything>` (e.g. Defective_02.png)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"validation folder {folder} does not exist")
    known = set(labels)
    listing = folder / "labels.json"
    if listing.exists():
        try:
            spec = json.loads(listing.read_text())
        except ValueError as err:
            raise ConfigError(f"{listing}: not JSON ({err})") from err
        out = []
        for name, classes in sorted(spec.items()):
            unknown = set(classes) - known
            if unknown:
                raise ConfigError(f"{listing}: {name} has classes the model does not know: {sorted(unknown)}")
            out.append((folder / name, list(classes)))
        return out
    subdirs = [d for d in sorted(folder.iterdir()) if d.is_dir() and d.name in known]
    if subdirs:
        return [(f, [d.name]) for d in subdirs for f in sorted(d.iterdir()) if f.suffix.lower() in IMAGE_EXT]
    out = []
    for f in sorted(folder.iterdir()):
        if f.suffix.lower() not in IMAGE_EXT:
            continue
        prefix = f.stem.split("_")[0]
        if prefix not in known:
            raise ConfigError(f"{f.name}: no class folder, no labels.json and the name prefix {prefix!r} is not a "
                              f"class ({', '.join(labels)})")
        out.append((f, [prefix]))
    return out


def samples_from_images(model, folder: Path, batch: int = 8) -> LabelledSet:
    """Run `model` (an runtime.predictor.BundleModel, loaded) over a labelled folder. Detectors give image-level
    scores: the best detection of each class. Unreadable images are skipped with the reason, the rest go on."""
    labels = list(model.manifest.labels)
    items = labelled_images(folder, labels)
    out: list[Sample] = []
    skipped: list[Skipped] = []
    images: list[np.ndarray] = []
    metas: list[tuple[Path, list[str]]] = []

    def flush() -> None:
        for (path, truth), res in zip(metas, model.predict(images)):
            if res.scores is not None:
                scores = dict(res.scores)
            else:
                scores = {c: 0.0 for c in labels}
                for d in res.detections:
                    scores[d.label] = max(scores[d.label], d.score)
            out.append(Sample(id=path.name, scores=scores, truth=truth, source=str(path)))
        images.clear()
        metas.clear()

    for path, truth in items:
        try:
            images.append(read_image(path))
        except ImageError as err:
            skipped.append(Skipped(source=str(path), reason=str(err)))
            continue
        metas.append((path, truth))
        if len(images) >= batch:
            flush()
    if images:
        flush()
    return LabelledSet(samples=out, skipped=skipped)


def _stage_scores(p: PredictionRecord) -> dict[str, float] | None:
    """The scores of the last stage that has them (the verify stage in a two-stage pipeline)."""
    for stage in reversed(p.stages):
        if stage.scores:
            return dict(stage.scores)
        if stage.detections is not None:
            best: dict[str, float] = {}
            for d in stage.detections:
                best[d["label"]] = max(best.get(d["label"], 0.0), float(d["score"]))
            return best
    return None


def samples_from_verdicts(predictions: Iterable[PredictionRecord], reviews: Iterable[ReviewRecord]) -> LabelledSet:
    """Samples whose truth is the latest inspector verdict on each reviewed prediction; bad images and predictions
    recorded without scores are skipped."""
    latest: dict[str, ReviewRecord] = {}
    for r in sorted(reviews, key=lambda r: r.created_at):
        latest[r.prediction_id] = r
    out: list[Sample] = []
    skipped: list[Skipped] = []
    for p in predictions:
        review = latest.get(p.id)
        if review is None:
            continue
        scores = _stage_scores(p)
        found = review_finding(review, model_finding(p))
        if found is None:
            skipped.append(Skipped(source=p.id, reason="bad image"))
        elif scores is None:
            skipped.append(Skipped(source=p.id, reason="no scores recorded"))
        else:
            out.append(Sample(id=p.id, scores=scores, truth=[] if found == NO_DEFECT else [found],
                              source=f"{p.device}:{p.source}"))
    return LabelledSet(samples=out, skipped=skipped)
