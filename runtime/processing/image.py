"""Decode untrusted image bytes into an 8-bit BGR array, or fail with an ImageError that says why.

Pillow reads the header first (format, mode, size: decompression bombs are refused before any pixel is decoded).
Plain 8-bit PNG and JPEG files, most of what cameras and line scanners write, are then decoded by OpenCV, with
pixels identical to Pillow's (checked on every shipped image in tests/edge/test_decode.py) at 0.7 to 0.8 of Pillow's
CPU (decode + preprocess of the shipped images, Pillow packing BGR in one pass); everything else (alpha, palettes,
16-bit, EXIF rotation, anything OpenCV refuses or that looks truncated) goes through Pillow, which raises on
truncated and corrupt files with a message that says so.

OpenCV is imported by the first PNG or JPEG decoded, not with this module: a process that never decodes one (the CLI,
`edge validate-config`, a daemon before its first frame) does not carry its 36 MB. Pillow is imported by the first
image decoded too (its import, PIL.ExifTags' enums above all, took 20 ms of the daemon's start).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from runtime.errors import ImageError

if TYPE_CHECKING:
    from PIL import Image

DEFAULT_MAX_PIXELS = 50_000_000


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, name: str = "image",
                 opencv: bool = True) -> np.ndarray:
    """Return an HxWx3 uint8 BGR array. Grayscale, palette, RGBA, CMYK and 16-bit inputs are converted.
    `opencv=False` decodes every file with Pillow (the same pixels, slower; OpenCV is never loaded)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not data:
        raise ImageError(f"{name}: empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            opened = Image.open(io.BytesIO(data))
            w, h = opened.size
            if w * h > max_pixels:
                raise ImageError(f"{name}: {w}x{h} = {w * h} pixels is over the limit of {max_pixels}")
            fast = _fast_decode(data, opened) if opencv else None
            if fast is not None:
                return fast
            opened.load()
    except ImageError:
        raise
    except UnidentifiedImageError as err:
        raise ImageError(f"{name}: not a recognised image format") from err
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageError(f"{name}: decompression bomb refused ({err})") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageError(f"{name}: corrupt or truncated image ({err})") from err
    im: Image.Image = opened
    try:
        im = ImageOps.exif_transpose(opened) or opened
    except Exception:  # a broken EXIF block is not a reason to lose the frame
        pass
    return _to_bgr8(im, name)


def _fast_decode(data: bytes, im: Image.Image) -> np.ndarray | None:
    """OpenCV's decode where it gives exactly Pillow's pixels; None: use Pillow."""
    if im.format == "JPEG":
        if im.mode not in ("RGB", "L") or im.getexif().get(0x0112, 1) != 1:
            return None  # CMYK/YCCK and rotated photos: Pillow's conversion and exif_transpose
        if data.rfind(b"\xff\xd9", max(0, len(data) - 4096)) < 0:
            return None  # no end-of-image marker near the end: let Pillow say the file is truncated
    elif im.format == "PNG":
        # RGBA is fine only when every pixel is opaque (checked below); an eXIf chunk before the pixels may rotate.
        if im.mode not in ("RGB", "L", "RGBA") or "exif" in im.info or "transparency" in im.info:
            return None
    else:
        return None
    import cv2

    buf = np.frombuffer(data, np.uint8)
    if im.mode == "RGBA":
        bgra = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)
        if bgra is None or bgra.ndim != 3 or bgra.shape[2] != 4 or bgra.dtype != np.uint8:
            return None
        if not bool((bgra[:, :, 3] == 255).all()):
            return None  # real transparency: Pillow composites it on white
        return cv2.cvtColor(bgra, cv2.COLOR_BGRA2BGR)
    out = cv2.imdecode(buf, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)  # None on a corrupt or truncated file: Pillow then reports why
    if out is None or out.ndim != 3 or out.dtype != np.uint8 or out.shape[:2] != (im.size[1], im.size[0]):
        return None
    return out


def _to_bgr8(im: Image.Image, name: str) -> np.ndarray:
    from PIL import Image

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
    if mode == "RGBA" and im.getchannel("A").getextrema() == (255, 255):
        im = im.convert("RGB")  # every pixel opaque (inspection renders often are): compositing would change nothing
    elif mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
        # Composite on white: transparent regions of inspection renders are background, not black defects.
        rgba = im.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(canvas, rgba)
    if im.mode != "RGB":
        im = im.convert("RGB")
    w, h = im.size
    if w == 0 or h == 0:
        raise ImageError(f"{name}: unsupported image layout {(h, w)}")
    # Pillow packs its pixels as BGR in one pass: 2 to 4 times less CPU than np.asarray of an RGB copy followed by
    # a reversed copy (measured on the shipped images); the bytearray keeps the array writable like OpenCV's.
    return np.frombuffer(bytearray(im.tobytes("raw", "BGR")), np.uint8).reshape(h, w, 3)


def read_image(path: Path | str, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ImageError(f"{path}: cannot read ({err.strerror})") from err
    return decode_image(data, max_pixels=max_pixels, name=str(path))
