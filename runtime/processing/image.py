"""Decode untrusted image bytes into an 8-bit BGR array, or fail with an ImageError that says why.

Pillow decodes (it raises on truncated files where OpenCV's imdecode quietly returns a grey-filled image, and it
reads the size from the header before decoding, which stops decompression bombs); OpenCV does everything after.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from runtime.errors import ImageError

DEFAULT_MAX_PIXELS = 50_000_000


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, name: str = "image") -> np.ndarray:
    """Return an HxWx3 uint8 BGR array. Grayscale, palette, RGBA, CMYK and 16-bit inputs are converted."""
    if not data:
        raise ImageError(f"{name}: empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            w, h = im.size
            if w * h > max_pixels:
                raise ImageError(f"{name}: {w}x{h} = {w * h} pixels is over the limit of {max_pixels}")
            im.load()
    except ImageError:
        raise
    except UnidentifiedImageError as err:
        raise ImageError(f"{name}: not a recognised image format") from err
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageError(f"{name}: decompression bomb refused ({err})") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageError(f"{name}: corrupt or truncated image ({err})") from err
    try:
        im = ImageOps.exif_transpose(im) or im
    except Exception:  # a broken EXIF block is not a reason to lose the frame
        pass
    return _to_bgr8(im, name)


def _to_bgr8(im: Image.Image, name: str) -> np.ndarray:
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(im, dtype=np.uint32 if mode == "I" else np.uint16)
        peak = 65535 if mode != "I" else max(int(a.max()), 1)
        gray = (a.astype(np.float64) * (255.0 / peak)).round().clip(0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    if mode == "F":
        a = np.asarray(im, dtype=np.float32)
        lo, hi = float(a.min()), float(a.max())
        gray = ((a - lo) / (hi - lo or 1.0) * 255).round().astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
        # Composite on white: transparent regions of inspection renders are background, not black defects.
        rgba = im.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(canvas, rgba)
    rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ImageError(f"{name}: unsupported image layout {rgb.shape}")
    return np.ascontiguousarray(rgb[:, :, ::-1])


def read_image(path: Path | str, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ImageError(f"{path}: cannot read ({err.strerror})") from err
    return decode_image(data, max_pixels=max_pixels, name=str(path))
