"""The executor's NonMaximumSuppression: the semantics NonMaximumSuppression.proto documents, on boxes worked out by
hand, and the same choices as the device's NMS (runtime/processing/decode.py) on random boxes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from export.coreml.nms import iou_xywh, suppress
from runtime.processing.decode import nms_per_class


def rows(*scores_by_class):
    return np.asarray(scores_by_class, np.float32)


def test_iou_of_centre_size_boxes():
    # two 2x2 squares offset by 1 along x: intersection 2, union 6
    assert iou_xywh(np.asarray([1, 1, 2, 2.0]), np.asarray([[2, 1, 2, 2.0]]))[0] == pytest.approx(1 / 3)
    assert iou_xywh(np.asarray([0, 0, 1, 1.0]), np.asarray([[5, 5, 1, 1.0]]))[0] == 0.0


def test_pick_top_suppresses_overlaps_highest_first():
    conf = rows([0.9, 0], [0.8, 0], [0.7, 0])
    coords = np.asarray([[0.5, 0.5, 0.2, 0.2], [0.51, 0.5, 0.2, 0.2], [0.1, 0.1, 0.1, 0.1]], np.float32)
    kept_conf, kept_coords = suppress(conf, coords, iou_threshold=0.45, confidence_threshold=0.05, per_class=True)
    assert kept_conf[:, 0].tolist() == pytest.approx([0.9, 0.7])
    np.testing.assert_allclose(kept_coords, coords[[0, 2]])


def test_confidence_threshold_drops_before_suppression():
    """A box below the threshold cannot suppress anything: it is gone before the algorithm starts."""
    conf = rows([0.04, 0], [0.03, 0])
    coords = np.asarray([[0.5, 0.5, 0.2, 0.2], [0.8, 0.8, 0.2, 0.2]], np.float32)
    assert len(suppress(conf, coords, 0.45, 0.05, True)[0]) == 0
    assert len(suppress(conf, coords, 0.45, 0.03, True)[0]) == 2


def test_per_class_only_suppresses_the_same_label():
    conf = rows([0.9, 0.0], [0.0, 0.8])  # labels 0 and 1 on the same box
    coords = np.asarray([[0.5, 0.5, 0.2, 0.2]] * 2, np.float32)
    assert len(suppress(conf, coords, 0.45, 0.05, per_class=True)[0]) == 2
    assert len(suppress(conf, coords, 0.45, 0.05, per_class=False)[0]) == 1


def test_iou_threshold_one_means_no_suppression():
    conf = rows([0.9], [0.8])
    coords = np.asarray([[0.5, 0.5, 0.2, 0.2], [0.5, 0.5, 0.2, 0.2]], np.float32)
    assert len(suppress(conf, coords, 1.0, 0.0, True)[0]) == 2


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="non-negative"):
        suppress(rows([-0.1]), np.zeros((1, 4), np.float32), 0.45, 0.0, True)
    with pytest.raises(ValueError, match="coordinates"):
        suppress(rows([0.5]), np.zeros((2, 4), np.float32), 0.45, 0.0, True)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31 - 1), st.booleans(), st.floats(0.2, 0.8))
def test_same_boxes_as_the_device_nms(seed, per_class, iou):
    """On one-hot confidence rows (what the decoding model emits), Core ML's documented NMS keeps exactly the boxes
    the device's NMS keeps, in the same order."""
    rng = np.random.default_rng(seed)
    n, classes = int(rng.integers(1, 40)), 3
    centre = rng.uniform(0.2, 0.8, (n, 2))
    size = rng.uniform(0.05, 0.4, (n, 2))
    score = np.round(rng.uniform(0.0, 1.0, n), 3) + np.arange(n) * 1e-6  # distinct: no tie-breaking question
    label = rng.integers(0, classes, n)
    conf = np.zeros((n, classes))
    conf[np.arange(n), label] = score
    coords = np.concatenate([centre, size], axis=1)
    kept_conf, kept_coords = suppress(conf, coords, iou, 0.1, per_class)
    corners = np.concatenate([centre - size / 2, centre + size / 2], axis=1)
    above = np.flatnonzero(score >= 0.1)
    groups = label[above] if per_class else np.zeros(len(above), int)
    device = above[nms_per_class(corners[above], score[above], groups, iou)]
    assert kept_conf.max(axis=1).tolist() == pytest.approx(score[device].tolist())
    np.testing.assert_allclose(kept_coords, coords[device])
