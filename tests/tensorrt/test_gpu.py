"""Real TensorRT builds on an NVIDIA device (skipped without tensorrt + pycuda): each shipped bundle's engine is
built, checked against reference.npz, cached, reused, and reproduces the shipped expected results."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from runtime.bundle import load_bundle
from runtime.loaders.tensorrt.builder import BuildSettings
from runtime.loaders.tensorrt.cache import EngineCache
from runtime.loaders.tensorrt.prepare import prepare_engine
from runtime.predictor import BundleModel
from runtime.processing.decode import iou_matrix
from runtime.processing.image import read_image
from tests.conftest import IMAGES

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def engine_cache(tmp_path_factory: pytest.TempPathFactory) -> EngineCache:
    return EngineCache(tmp_path_factory.mktemp("engines"))


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("preset", ["pcb-aoi", "squeezenet", "yolox-nano"])
def test_build_check_and_reuse(bundles: dict[str, Path], engine_cache: EngineCache, preset: str,
                               precision: str) -> None:
    lines: list[str] = []
    with load_bundle(bundles[preset]) as b:
        built = prepare_engine(b, engine_cache, BuildSettings(precision=precision, workspace_mb=512),
                               progress=lines.append)
        assert built.check is not None and built.check.passed, built.check.detail if built.check else ""
        assert not built.cache_hit and built.path.stat().st_size > 0
        assert any("[tensorrt]" in line for line in lines)  # the progress monitor reported phases
        again = prepare_engine(b, engine_cache, BuildSettings(precision=precision, workspace_mb=512))
        assert again.cache_hit and again.path == built.path
    assert engine_cache.timing_cache_path(built.key).stat().st_size > 0


def _model(bundle: Path, cache: EngineCache, precision: str) -> tuple:
    b = load_bundle(bundle)
    return b, BundleModel(b, "tensorrt", cache_dir=cache.root, precision=precision).load()


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_pcb_expected(bundles: dict[str, Path], engine_cache: EngineCache, expected: dict, precision: str) -> None:
    b, model = _model(bundles["pcb-aoi"], engine_cache, precision)
    try:
        files = sorted((IMAGES / "pcb_winml").iterdir())
        outs = model.predict([read_image(f) for f in files])  # one batch: the dynamic profile at work
        exp = expected["pcb-aoi_opset11"]
        for f, out in zip(files, outs):
            assert out.top()[0] == exp[f.name]["pred"]
            for cls, score in exp[f.name]["scores"].items():
                assert out.scores[cls] == pytest.approx(score, abs=0.02 if precision == "fp32" else 0.05)
        assert model.runner.describe()["backend"] == "tensorrt"
    finally:
        model.close()
        b.close()


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_yolox_expected(bundles: dict[str, Path], engine_cache: EngineCache, expected: dict, precision: str) -> None:
    b, model = _model(bundles["yolox-nano"], engine_cache, precision)
    try:
        exp = expected["yolox_nano"]
        for name, want in exp.items():
            out = model.predict([read_image(IMAGES / "photos" / name)])[0]
            got = [d for d in out.detections if d.score > 0.35]
            assert len(got) == len(want), name
            for w in want:
                cands = [d for d in got if d.label == w["label"]]
                ious = iou_matrix(np.asarray([w["box_xyxy"]]), np.asarray([d.box for d in cands]))[0]
                assert ious.max() > 0.9
                assert cands[int(ious.argmax())].score == pytest.approx(w["score"], abs=0.05)
    finally:
        model.close()
        b.close()
