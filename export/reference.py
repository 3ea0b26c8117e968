"""Build reference.npz from real calibration images, preprocessed exactly as the device will."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge.processing.image import read_image
from edge.processing.preprocess import preprocess
from edge.processing.spec import InputSpec
from edge.runners.base import Runner
from export.parity import Reference
from shadowline.errors import ConfigError, ImageError


def list_images(folder: Path, recursive: bool = False) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"image folder {folder} does not exist")
    it = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in it if p.is_file() and not p.name.startswith("."))


def load_images(paths: list[Path], spec: InputSpec, max_pixels: int) -> tuple[list[str], list, list[str]]:
    """(names, [(tensor, transform)], skipped-with-reason). Bad images are skipped and reported, never fatal."""
    names, items, skipped = [], [], []
    for p in paths:
        try:
            items.append(preprocess(read_image(p, max_pixels), spec))
            names.append(p.name)
        except ImageError as err:
            skipped.append(str(err))
    return names, items, skipped


def run_batched(runner: Runner, input_name: str, x: np.ndarray, max_batch: int) -> dict[str, np.ndarray]:
    """Run `x` through the runner in chunks the model accepts (batch 1 for a static-batch model)."""
    outs: dict[str, list[np.ndarray]] = {}
    for i in range(0, len(x), max_batch):
        for k, v in runner.infer({input_name: x[i : i + max_batch]}).items():
            outs.setdefault(k, []).append(v)
    return {k: np.concatenate(v) for k, v in outs.items()}


def build_reference(folder: Path, spec: InputSpec, runner: Runner, max_images: int, max_batch: int,
                    max_pixels: int) -> tuple[Reference, list[str]]:
    # Every file is tried, whatever its suffix: what cannot be decoded is skipped and reported by name.
    candidates = list_images(folder)
    names, items, skipped = load_images(candidates[: max_images + 64], spec, max_pixels)
    names, items = names[:max_images], items[:max_images]
    if not items:
        raise ConfigError(f"calibration folder {folder}: no usable image ({'; '.join(skipped) or 'empty folder'})")
    x = np.stack([t for t, _ in items])
    outputs = run_batched(runner, spec.name, x, max_batch if spec.dynamic_batch else 1)
    return Reference(x, outputs, names, [tr for _, tr in items]), skipped
