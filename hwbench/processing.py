"""Pre- and post-processing cost per image on real images, through the daemon's own code path (BundleModel).

A line's latency budget covers the whole frame, not only the network: resizing a 12-megapixel photo or running
NMS on a busy detector output can cost as much as inference. This work runs on the CPU whatever the backend, so it
is measured once and added to every configuration's inference latency in the verdict.
"""

from __future__ import annotations

import time
from pathlib import Path

from pydantic import BaseModel, Field

from hwbench.bench import Stats, stats
from runtime.bundle import Bundle
from runtime.errors import ConfigError, ImageError
from runtime.predictor import BundleModel
from runtime.processing.image import read_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class ProcessingResult(BaseModel):
    images: int = Field(description="images measured")
    repeats: int
    read_ms: Stats = Field(description="reading and decoding the image file")
    preprocess_ms: Stats = Field(description="resize, colour order, normalisation (the manifest's rules)")
    decode_ms: Stats = Field(description="output decoding: scores or boxes, NMS")
    skipped: dict[str, str] = Field(default_factory=dict, description="image -> why it could not be used")

    @property
    def overhead_ms(self) -> float:
        """Median cost per image besides inference, added to inference latency in the verdict."""
        return self.preprocess_ms.p50 + self.decode_ms.p50


def list_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise ConfigError(f"--images {folder}: not a directory")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ConfigError(f"--images {folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def measure_processing(bundle: Bundle, images: list[Path], repeats: int = 3) -> ProcessingResult | None:
    """Time reading, preprocessing and decoding of each image `repeats` times; None when no image could be used."""
    model = BundleModel(bundle, "onnxruntime").load()
    read, pre, dec = [], [], []
    skipped: dict[str, str] = {}
    if images:
        try:
            model.predict([read_image(images[0])])  # warm-up: the first call allocates
        except ImageError:
            pass
    try:
        for path in images:
            try:
                t = time.perf_counter()
                image = read_image(path)
                read.append((time.perf_counter() - t) * 1000)
            except ImageError as err:
                skipped[path.name] = str(err)
                continue
            for _ in range(repeats):
                t = time.perf_counter()
                out = model.predict([image])[0]
                total = (time.perf_counter() - t) * 1000
                pre.append(out.preprocess_ms)
                dec.append(max(0.0, total - out.preprocess_ms - out.infer_ms))
    finally:
        model.close()
    if not pre:
        return None
    return ProcessingResult(images=len(read), repeats=repeats, read_ms=stats(read), preprocess_ms=stats(pre),
                            decode_ms=stats(dec), skipped=skipped)
