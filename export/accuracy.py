"""Per-class precision, recall and F1 at the bundle's thresholds, on labelled validation images (classifiers)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from export.reference import list_images, load_images
from runtime.errors import ConfigError
from runtime.manifest import ClassMetrics, Thresholds, ValidationMetrics
from runtime.processing.decode import decode_classification
from runtime.processing.spec import InputSpec
from runtime.runners.base import Runner, run_batched


def labelled_images(folder: Path, mode: str, labels: list[str]) -> list[tuple[Path, str]]:
    """(image, class): class is the sub-folder name (`folder`) or the file-name prefix before '_' (`prefix`)."""
    out = []
    if mode == "folder":
        for p in list_images(folder, recursive=True):
            if p.parent != folder:
                out.append((p, p.parent.name))
    else:
        out = [(p, p.name.split("_", 1)[0]) for p in list_images(folder)]
    unknown = sorted({c for _, c in out} - set(labels))
    if unknown:
        raise ConfigError(f"validation folder {folder}: classes {unknown} are not among the labels")
    if not out:
        raise ConfigError(f"validation folder {folder}: no labelled images")
    return out


def per_class_metrics(scores: np.ndarray, truth: list[int], labels: list[str], thresholds: Thresholds) -> dict:
    """A class is predicted for an image when its score reaches the class threshold (one-vs-rest)."""
    result = {}
    truth_arr = np.asarray(truth)
    for c, label in enumerate(labels):
        t = thresholds.for_class(label)
        pred = scores[:, c] >= t
        actual = truth_arr == c
        tp, fp, fn = int((pred & actual).sum()), int((pred & ~actual).sum()), int((~pred & actual).sum())
        if not actual.any() and not pred.any():
            continue
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        result[label] = ClassMetrics(precision=p, recall=r, f1=f1, support=int(actual.sum()), tp=tp, fp=fp, fn=fn,
                                     threshold=t)
    return result


def classifier_metrics(folder: Path, mode: str, labels: list[str], spec: InputSpec, decoder: str,
                        runner: Runner, thresholds: Thresholds, max_batch: int, max_pixels: int) -> ValidationMetrics:
    pairs = labelled_images(Path(folder), mode, labels)
    names, items, skipped = load_images([p for p, _ in pairs], spec, max_pixels)
    by_name = {p.name: c for p, c in pairs}
    if not items:
        raise ConfigError(f"validation folder {folder}: no usable image")
    x = np.stack([t for t, _ in items])
    out = run_batched(runner, spec.name, x, max_batch if spec.dynamic_batch else 1)
    scores = decode_classification(next(iter(out.values())), decoder)
    truth = [labels.index(by_name[n]) for n in names]
    return ValidationMetrics(images=len(names), skipped=skipped,
                             per_class=per_class_metrics(scores, truth, labels, thresholds),
                             accuracy=float((scores.argmax(1) == np.asarray(truth)).mean()))
