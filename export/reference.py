"""Build reference.npz from real calibration images, preprocessed exactly as the device will."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from runtime.errors import ConfigError, ImageError
from runtime.parity import Reference
from runtime.processing.image import read_image
from runtime.processing.preprocess import preprocess
from runtime.processing.spec import InputSpec
from runtime.runners.base import Runner, run_batched


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
