"""Read label lists and make sure they fit the model: right count, unique (or visibly de-duplicated)."""

from __future__ import annotations

import ast
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
        meta = model_metadata or {}
        if "labels" in meta:
            return [s.strip() for s in meta["labels"].split(",")]
        if "names" in meta:
            return _index_dict(meta["names"])
        raise LabelError("labels: model-metadata was asked for, but the model has neither metadata_props['labels'] "
                         "(comma-separated) nor ['names'] (an {index: name} mapping, as Ultralytics writes)")
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


def _index_dict(text: str) -> list[str]:
    """Ultralytics' `names` metadata, a Python literal {0: 'person', 1: 'bicycle', ...}, as a list in index order.
    Read with ast.literal_eval: a literal, never code."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError) as err:
        raise LabelError(f"labels: metadata_props['names'] is not an {{index: name}} mapping ({err})") from err
    if not isinstance(value, dict) or not all(isinstance(k, int) for k in value):
        raise LabelError("labels: metadata_props['names'] is not an {index: name} mapping")
    if sorted(value) != list(range(len(value))):
        raise LabelError(f"labels: metadata_props['names'] indices are not 0..{len(value) - 1}")
    return [str(value[i]).strip() for i in range(len(value))]


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
