"""Read label lists and make sure they fit the model: right count, unique (or visibly de-duplicated)."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from runtime.errors import LabelError

_INDEXED = re.compile(r"^(\d+)\s*[,:]\s*(.+)$")


def read_labels(source: str | Path | list[str], model_metadata: dict[str, str] | None = None) -> list[str]:
    """A list, a comma-separated string, `model-metadata`, or a file of one label per line ("index,name" allowed)."""
    if isinstance(source, list):
        return [str(s).strip() for s in source]
    text = str(source)
    if text == "model-metadata":
        if not model_metadata or "labels" not in model_metadata:
            raise LabelError("labels: model-metadata was asked for, but the model has no metadata_props['labels']")
        return [s.strip() for s in model_metadata["labels"].split(",")]
    path = Path(text)
    if not path.is_file():
        if "," in text and "/" not in text:
            return [s.strip() for s in text.split(",")]
        raise LabelError(f"labels file {path} does not exist")
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    matches = [_INDEXED.match(ln) for ln in lines]
    if lines and all(matches):
        indices = [int(m.group(1)) for m in matches]  # type: ignore[union-attr]
        if indices != list(range(len(lines))):
            raise LabelError(f"labels file {path}: indices are not 0..{len(lines) - 1} in order")
        return [m.group(2).strip() for m in matches]  # type: ignore[union-attr]
    return lines


def check_labels(labels: list[str], expected: int | None, dedupe: bool) -> tuple[list[str], dict[str, str]]:
    """Return (labels, renames). Duplicates are an error unless `dedupe`, which suffixes each with its index."""
    if expected is not None and len(labels) != expected:
        raise LabelError(f"{len(labels)} labels given, but the model output has {expected} classes")
    if any(not label for label in labels):
        raise LabelError("labels must not be empty strings")
    counts = Counter(labels)
    dups = {label: [i for i, x in enumerate(labels) if x == label] for label, n in counts.items() if n > 1}
    if not dups:
        return labels, {}
    if not dedupe:
        desc = "; ".join(f"{label!r} at {idx}" for label, idx in dups.items())
        raise LabelError(f"duplicate labels: {desc} (use --dedupe-labels to rename them visibly)")
    out, renames = list(labels), {}
    for label, idx in dups.items():
        for i in idx:
            out[i] = f"{label} [{i}]"
            renames[str(i)] = out[i]
    return out, renames
