"""A classifier's per-frame scores as `ScoreMap` (labels shared by every frame, the frame's vector) instead of a
dict built per frame: the same mapping in every way the daemon and its callers read it, on SqueezeNet's 1000 classes
and real photos against the scores computed here from a bare ONNX Runtime session."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from edge.pipeline import StageResult, StageRule
from fleet.protocol import StageSpec
from runtime.bundle import load_bundle
from runtime.manifest import Thresholds
from runtime.predictor import BundleModel, ModelOutput, ScoreMap
from runtime.processing.decode import decode_classification
from runtime.processing.image import read_image
from runtime.processing.preprocess import preprocess
from tests.edge.conftest import PHOTOS


def test_score_map_is_a_read_only_mapping_in_label_order() -> None:
    labels = ("cat", "dog", "tench")
    m = ScoreMap(labels, np.array([0.25, 0.5, 0.125]))
    assert list(m) == ["cat", "dog", "tench"] and len(m) == 3
    assert m["dog"] == 0.5 and isinstance(m["dog"], float)
    assert "tench" in m and "eel" not in m and m.get("eel") is None
    with pytest.raises(KeyError):
        _ = m["eel"]
    assert m == {"cat": 0.25, "dog": 0.5, "tench": 0.125} and {"cat": 0.25, "dog": 0.5, "tench": 0.125} == m
    assert m != {"cat": 0.25, "dog": 0.5, "tench": 0.5}
    assert dict(m) == m.as_dict() and list(m.items()) == [("cat", 0.25), ("dog", 0.5), ("tench", 0.125)]
    assert max(m, key=m.__getitem__) == "dog"
    assert json.loads(json.dumps(dict(m))) == {"cat": 0.25, "dog": 0.5, "tench": 0.125}
    with pytest.raises(TypeError):
        m["cat"] = 1.0  # type: ignore[index]
    with pytest.raises(ValueError, match="3 labels for 2 scores"):
        ScoreMap(labels, np.array([0.1, 0.2]))
    out = ModelOutput(scores=m, vector=m.vector)
    assert out.top() == ("dog", 0.5)


def test_squeezenet_scores_on_photos_match_a_bare_session(bundles: dict[str, Path]) -> None:
    """Every score, the top class, a rule's hits and the recorded top-k are what a dict of the bare session's
    softmax gives."""
    with load_bundle(bundles["squeezenet"]) as b:
        model = BundleModel(b).load()
        m = b.manifest
        sess = ort.InferenceSession(str(b.model_path), providers=["CPUExecutionProvider"])
        rule = StageRule.from_spec(StageSpec(role="verify", bundle="b", thresholds={"default": 0.2}), m.labels,
                                   Thresholds(default=0.5))
        files = sorted(PHOTOS.iterdir())
        outs = model.predict([read_image(f) for f in files])
        assert len(outs) == len(files) and len(files) >= 5
        for f, out in zip(files, outs):
            x, _ = preprocess(read_image(f), m.input)
            raw = decode_classification(sess.run(None, {m.input.name: x[None]})[0], m.output.decoder)[0]
            want = dict(zip(m.labels, raw.tolist()))
            assert isinstance(out.scores, ScoreMap) and len(out.scores) == 1000
            assert list(out.scores) == list(want)
            got = dict(out.scores.items())
            assert max(abs(got[k] - want[k]) for k in want) < 1e-6
            best = max(want, key=want.__getitem__)
            assert out.top()[0] == best and abs(out.top()[1] - want[best]) < 1e-6
            hits, _ = rule.evaluate(out, 0.1)
            assert [c for c, _ in hits] == [c for c, s in sorted(want.items(), key=lambda kv: -kv[1]) if s >= 0.2]
            rec = StageResult("verify", m.bundle_id, out, hits, 1.0, rule).recorded_scores()
            assert rec is not None
            top5 = sorted(want, key=want.__getitem__, reverse=True)[:5]
            assert set(top5) <= set(rec) and all(abs(rec[k] - round(want[k], 6)) < 1e-6 for k in rec)
        model.close()
