"""Image decoding: OpenCV's fast path gives exactly Pillow's pixels, and everything it cannot match goes to Pillow."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

import runtime.processing.image as image_mod
from runtime.errors import ImageError
from runtime.processing.image import decode_image
from tests.conftest import IMAGES

SHIPPED = sorted(p for d in ("pcb_winml", "photos") for p in (IMAGES / d).iterdir())


def pillow_only(data: bytes, monkeypatch: pytest.MonkeyPatch) -> np.ndarray:
    with monkeypatch.context() as m:
        m.setattr(image_mod, "_fast_decode", lambda data, im: None)
        return decode_image(data)


def encode(arr: np.ndarray, fmt: str, mode: str | None = None, **kw: object) -> bytes:
    buf = io.BytesIO()
    (Image.fromarray(arr, mode=mode) if mode else Image.fromarray(arr)).save(buf, fmt, **kw)
    return buf.getvalue()


def test_shipped_images_take_the_fast_path_with_identical_pixels(monkeypatch: pytest.MonkeyPatch) -> None:
    fast = 0
    real = image_mod._fast_decode

    def counting(data: bytes, im: Image.Image) -> np.ndarray | None:
        nonlocal fast
        out = real(data, im)
        fast += out is not None
        return out

    monkeypatch.setattr(image_mod, "_fast_decode", counting)
    for p in SHIPPED:
        data = p.read_bytes()
        got = decode_image(data)
        want = pillow_only(data, monkeypatch)
        assert got.shape == want.shape and got.dtype == np.uint8, p.name
        assert np.array_equal(got, want), p.name
    assert fast == len(SHIPPED)  # all 13 shipped images (PNG RGB/RGBA-opaque, JPEG RGB) are decoded by OpenCV


def test_variants_match_pillow(monkeypatch: pytest.MonkeyPatch) -> None:
    rgb = np.asarray(Image.open(IMAGES / "photos" / "chelsea.png").convert("RGB"))
    gray = np.asarray(Image.fromarray(rgb).convert("L"))
    alpha = np.dstack([rgb, np.tile(np.linspace(0, 255, rgb.shape[1]).astype(np.uint8), (rgb.shape[0], 1))])
    rotated = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    Image.fromarray(rgb).save(rotated, "JPEG", exif=exif.tobytes())
    cmyk = io.BytesIO()
    Image.fromarray(rgb).convert("CMYK").save(cmyk, "JPEG")
    variants = {
        "gray png": encode(gray, "PNG"), "gray jpeg": encode(gray, "JPEG"), "rgb jpeg": encode(rgb, "JPEG"),
        "transparent png": encode(alpha, "PNG"), "palette png": encode(np.asarray(Image.fromarray(rgb).convert("P")), "PNG", mode="P"),
        "16-bit png": encode(gray.astype(np.uint16) * 257, "PNG"),
        "exif-rotated jpeg": rotated.getvalue(), "cmyk jpeg": cmyk.getvalue(),
    }
    for name, data in variants.items():
        got, want = decode_image(data), pillow_only(data, monkeypatch)
        assert np.array_equal(got, want), name
    # the rotation was applied (by Pillow), not ignored
    assert decode_image(variants["exif-rotated jpeg"]).shape[:2] == (rgb.shape[1], rgb.shape[0])


def test_bad_bytes_keep_their_reasons() -> None:
    png = (IMAGES / "pcb_winml" / "Defective_02.png").read_bytes()
    jpg = (IMAGES / "photos" / "winml_dog.jpg").read_bytes()
    corrupt = bytearray(png)
    i = corrupt.find(b"IDAT")
    corrupt[i + 104: i + 404] = bytes(300)
    for data, why in [(png[: len(png) // 2], "truncated"), (bytes(corrupt), "corrupt"),
                      (jpg[: len(jpg) // 2], "truncated"), (b"", "empty file"), (b"GIF89a nonsense", "not a recognised image format")]:
        with pytest.raises(ImageError, match=why):
            decode_image(data, name="x")
    with pytest.raises(ImageError, match="over the limit of 1000"):
        decode_image(png, max_pixels=1000)


def test_pillow_decoder_gives_the_same_pixels_without_opencv(monkeypatch: pytest.MonkeyPatch) -> None:
    """`pipeline.decoder: pillow` (decode_image(opencv=False)): every shipped image decoded by Pillow alone, pixel for
    pixel what the OpenCV fast path gives."""
    fast = {p.name: decode_image(p.read_bytes()) for p in SHIPPED}

    def no_opencv(data: bytes, im: Image.Image) -> np.ndarray | None:
        raise AssertionError("the OpenCV path was taken")

    monkeypatch.setattr(image_mod, "_fast_decode", no_opencv)
    for p in SHIPPED:
        got = decode_image(p.read_bytes(), opencv=False)
        assert got.dtype == np.uint8 and np.array_equal(got, fast[p.name]), p.name


def test_pillow_path_matches_a_plain_conversion_and_is_writable() -> None:
    """Pillow's path packs BGR in one pass (im.tobytes("raw", "BGR")) and takes opaque RGBA without compositing;
    checked against the plain conversion (composite on white, RGB, reversed channels) on every mode it meets."""
    rgb = np.asarray(Image.open(IMAGES / "photos" / "chelsea.png").convert("RGB"))
    ramp = np.tile(np.linspace(0, 255, rgb.shape[1]).astype(np.uint8), (rgb.shape[0], 1))
    images = {"rgb": Image.fromarray(rgb), "opaque rgba": Image.fromarray(np.dstack([rgb, np.full_like(ramp, 255)])),
              "transparent rgba": Image.fromarray(np.dstack([rgb, ramp])), "gray": Image.fromarray(ramp),
              "gray+alpha": Image.fromarray(np.dstack([ramp, ramp[:, ::-1]])).convert("LA"),
              "palette": Image.fromarray(rgb).convert("P"), "cmyk": Image.fromarray(rgb).convert("CMYK")}
    for name, im in images.items():
        buf = io.BytesIO()
        im.save(buf, "TIFF")  # TIFF: never taken by OpenCV's path, keeps every one of these modes
        got = decode_image(buf.getvalue(), opencv=False)
        plain = im
        if im.mode in ("RGBA", "LA"):
            plain = Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im.convert("RGBA"))
        want = np.ascontiguousarray(np.asarray(plain.convert("RGB"))[:, :, ::-1])
        assert got.shape == want.shape and np.array_equal(got, want), name
        assert got.flags.writeable and got.flags.c_contiguous, name
