"""Image decoding of untrusted bytes, resize modes and their inverse transforms, decoders and NMS."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from runtime.errors import ImageError
from runtime.processing.decode import decode_classification, nms_per_class
from runtime.processing.image import decode_image
from runtime.processing.preprocess import preprocess, resize
from runtime.processing.spec import InputSpec
from tests.conftest import IMAGES


def png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def test_real_png_decodes_to_bgr():
    data = (IMAGES / "pcb_winml" / "Normal_33.png").read_bytes()
    bgr = decode_image(data)
    rgb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert bgr.dtype == np.uint8 and bgr.shape == rgb.shape
    np.testing.assert_array_equal(bgr[:, :, ::-1], rgb)


@pytest.mark.parametrize("data,reason", [
    (b"", "empty file"),
    (b"hello world, not an image", "not a recognised image"),
    ((IMAGES / "photos" / "rocket.jpg").read_bytes()[:5000], "truncated"),
])
def test_bad_bytes(data, reason):
    with pytest.raises(ImageError, match=reason):
        decode_image(data, name="x")


def test_pixel_limit_refuses_before_decoding():
    data = png(Image.new("L", (4000, 3000)))
    with pytest.raises(ImageError, match="over the limit"):
        decode_image(data, max_pixels=10_000_000)
    assert decode_image(data, max_pixels=20_000_000).shape == (3000, 4000, 3)


def test_grayscale_rgba_and_16bit_are_converted():
    gray = decode_image(png(Image.new("L", (8, 6), 200)))
    assert gray.shape == (6, 8, 3) and (gray == 200).all()
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red -> white background
    out = decode_image(png(rgba))
    assert (out == 255).all()
    opaque = decode_image(png(Image.new("RGBA", (4, 4), (255, 0, 0, 255))))
    assert tuple(opaque[0, 0]) == (0, 0, 255)  # BGR
    sixteen = Image.fromarray(np.full((5, 5), 65535, dtype=np.uint16))
    assert (decode_image(png(sixteen)) == 255).all()


def spec(**kw) -> InputSpec:
    base = dict(name="x", shape=[1, 3, 100, 200], color_order="BGR", resize="stretch")
    base.update(kw)
    return InputSpec(**base)


def test_letterbox_top_left_and_inverse_transform():
    s = spec(resize="letterbox", letterbox={"alignment": "top_left", "pad_value": 114}, shape=[1, 3, 416, 416])
    img = np.zeros((300, 600, 3), np.uint8)
    out, t = resize(img, s)
    assert out.shape == (416, 416, 3)
    assert (out[208:, :] == 114).all() and (out[:208, :] == 0).all()
    box = np.array([[0, 0, 416, 208]], np.float32)
    np.testing.assert_allclose(t.to_original(box), [[0, 0, 600, 300]], atol=1.5)


def test_letterbox_center():
    s = spec(resize="letterbox", shape=[1, 3, 100, 100])
    out, t = resize(np.zeros((50, 100, 3), np.uint8), s)
    assert t.offset_y == 25 and (out[:25] == 114).all() and (out[25:75] == 0).all()


def test_short_side_center_crop_matches_hand_computation():
    s = spec(resize="short_side_center_crop", resize_short=256, shape=[1, 3, 224, 224])
    img = np.arange(512 * 384 * 3, dtype=np.uint32).reshape(384, 512, 3).astype(np.uint8)
    out, t = resize(img, s)
    assert out.shape == (224, 224, 3)
    # short side 384 -> 256 (scale 2/3), long 512 -> 341; crop offsets (341-224)//2 = 58, (256-224)//2 = 16
    assert (t.offset_x, t.offset_y) == (-58, -16)
    assert t.scale_x == pytest.approx(341 / 512) and t.scale_y == pytest.approx(256 / 384)


def test_normalisation_and_colour_order():
    s = spec(color_order="RGB", scale=1 / 255, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25], shape=[1, 3, 2, 2])
    img = np.zeros((2, 2, 3), np.uint8)
    img[..., 0] = 255  # blue in BGR
    x, _ = preprocess(img, s)
    assert x.shape == (3, 2, 2)
    np.testing.assert_allclose(x[2], (1.0 - 0.5) / 0.25)  # blue lands in channel 2 for RGB
    np.testing.assert_allclose(x[0], (0.0 - 0.5) / 0.25)


def test_decoders():
    logits = np.array([[2.0, 0.0, -1.0]])
    sm = decode_classification(logits, "softmax")
    assert sm.sum() == pytest.approx(1.0) and sm.argmax() == 0
    sg = decode_classification(logits, "sigmoid")
    assert sg[0, 1] == pytest.approx(0.5)
    assert decode_classification(np.ones((1, 4, 1, 1)), "probabilities").shape == (1, 4)


def test_nms_per_class():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    classes = np.array([0, 0, 1, 0])
    keep = nms_per_class(boxes, scores, classes, 0.45)
    assert list(keep) == [0, 2, 3]  # box 1 suppressed by box 0 (same class); box 2 is another class
    assert list(nms_per_class(boxes, scores, np.zeros(4, int), 0.45)) == [0, 3]
