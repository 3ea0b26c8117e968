"""TensorRTRunner's data path on the TensorRT/pycuda stand-in: bindings, dynamic batch, splitting, contexts.

The stand-in executes the engine's ONNX with ONNX Runtime, so outputs are compared with ONNX Runtime run directly
on the same inputs: what is checked is the runner's marshalling (copies, shapes, addresses, chunking), not
TensorRT's numerics (the `gpu` tests check those on a device).
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from runtime.bundle import load_bundle
from runtime.errors import BackendUnavailable
from runtime.loaders.tensorrt.device import DeviceInfo
from runtime.loaders.tensorrt.loader import EngineFromBundle
from runtime.predictor import BundleModel
from runtime.runners import create_runner
from runtime.runners.base import RunnerError
from runtime.runners.onnxrt import OnnxRuntimeRunner
from runtime.runners.tensorrt import TensorRTRunner
from tests.conftest import IMAGES
from tests.tensorrt import fake_trt


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch):
    trt, drv = fake_trt.install(monkeypatch, "10.3.0.26")
    # The stand-in has no /etc/nv_tegra_release to read: pin the device identity.
    monkeypatch.setattr("runtime.loaders.tensorrt.prepare.detect",
                        lambda device=0: DeviceInfo(gpu_name="Orin", compute_capability="8.7", l4t="36.4.0"))
    return trt, drv


def _ort(bundle: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    with OnnxRuntimeRunner(bundle / "model.onnx") as r:
        return {k: v for k, v in r.infer({"data": x}).items()}


def test_dynamic_batch_and_split(fake, bundles: dict[str, Path], tmp_path: Path) -> None:
    trt, drv = fake
    loader = EngineFromBundle(bundles["pcb-aoi"] / "model.onnx", cache_dir=tmp_path, max_batch=4, precision="fp32")
    with TensorRTRunner(loader) as r:
        assert [m.name for m in r.input_metadata()] == ["data"]
        assert r.input_metadata()[0].shape == ("N", 3, 227, 227) and r.input_metadata()[0].dtype == "float32"
        assert r.output_metadata()[0].name == "loss" and r.output_metadata()[0].shape == ("N", 2)
        assert (r.min_batch, r.max_batch) == (1, 4)
        x = np.random.default_rng(0).normal(size=(10, 3, 227, 227)).astype(np.float32)
        trt.calls.clear()
        out = r.infer({"data": x})
        assert out["loss"].shape == (10, 2)
        np.testing.assert_allclose(out["loss"], _ort(bundles["pcb-aoi"], x)["loss"], rtol=1e-5, atol=1e-6)
        # 10 = 4 + 4 + 2: one set_input_shape and one execute per chunk, on the runner's stream.
        shapes = [c[2][0] for c in trt.calls if c[0] == "set_input_shape"]
        assert shapes == [4, 4, 2]
        assert [c for c in trt.calls if c[0] == "execute_async_v3"] == [("execute_async_v3", 0xBEEF)] * 3
        one = r.infer({"data": x[:1]})["loss"]
        np.testing.assert_allclose(one, out["loss"][:1], rtol=1e-5, atol=1e-6)
        assert r.last_inference_time is not None and r.last_inference_time > 0
        d = r.describe()
        assert d["backend"] == "tensorrt" and d["precision"] == "fp32" and d["cache_hit"] is False
        assert d["batch"] == {"min": 1, "max": 4} and d["gpu"] == "Orin (fake)" and d["parity_passed"] is True
    assert drv.state["stack"] == [] and drv.state["retained"] == 0
    assert drv.state["freed"] == drv.state["allocated"]  # every device buffer freed by close()


def test_static_model_refuses_other_batches(fake, bundles: dict[str, Path], tmp_path: Path) -> None:
    with TensorRTRunner(EngineFromBundle(bundles["squeezenet"], cache_dir=tmp_path)) as r:
        assert r.input_metadata()[0].shape == (1, 3, 224, 224)
        x = np.zeros((2, 3, 224, 224), np.float32)
        with pytest.raises(RunnerError, match="shape"):
            r.infer({"data_0": x})
        with pytest.raises(RunnerError, match="missing"):
            r.infer({"images": x[:1]})
        with pytest.raises(RunnerError, match="shape"):
            r.infer({"data_0": np.zeros((1, 3, 224, 225), np.float32)})


def test_second_runner_uses_the_cache(fake, bundles: dict[str, Path], tmp_path: Path) -> None:
    trt, _ = fake
    with TensorRTRunner(EngineFromBundle(bundles["pcb-aoi"], cache_dir=tmp_path)) as r:
        assert not r.describe()["cache_hit"]
    with TensorRTRunner(EngineFromBundle(bundles["pcb-aoi"], cache_dir=tmp_path)) as r2:
        assert r2.describe()["cache_hit"] and r2.describe()["parity_passed"] == "checked when cached"
    assert trt.build_count == 1


def test_engine_file_and_foreign_engine(fake, bundles: dict[str, Path], tmp_path: Path, monkeypatch) -> None:
    loader = EngineFromBundle(bundles["pcb-aoi"], cache_dir=tmp_path)
    with TensorRTRunner(loader):
        assert loader.prepared is not None
        engine = loader.prepared.path
    with TensorRTRunner(engine) as r:  # an .engine path is run as is
        assert r.describe()["engine"] == str(engine)
        assert r.infer({"data": np.zeros((3, 3, 227, 227), np.float32)})["loss"].shape == (3, 2)
    # The same engine on another TensorRT version: refused with a rebuild hint, nothing left allocated.
    trt, drv = fake_trt.install(monkeypatch, "10.4.0")
    with pytest.raises(BackendUnavailable, match="rebuild it on this device"):
        TensorRTRunner(engine).load()
    assert drv.state["stack"] == [] and drv.state["retained"] == 0


def test_bundle_model_predicts_like_onnxruntime(fake, bundles: dict[str, Path], tmp_path: Path) -> None:
    from runtime.processing.image import read_image

    images = [read_image(p) for p in sorted((IMAGES / "pcb_winml").iterdir())[:4]]
    with load_bundle(bundles["pcb-aoi"]) as b:
        trt_model = BundleModel(b, "tensorrt", cache_dir=tmp_path).load()
        ort_model = BundleModel(b).load()
        got, want = trt_model.predict(images), ort_model.predict(images)
        trt_model.close()
        ort_model.close()
    assert [g.top()[0] for g in got] == [w.top()[0] for w in want]
    for g, w in zip(got, want):
        assert g.scores is not None and w.scores is not None
        assert max(abs(g.scores[k] - w.scores[k]) for k in w.scores) < 1e-5


def test_threads_share_one_runner(fake, bundles: dict[str, Path], tmp_path: Path) -> None:
    """The daemon infers from worker threads: each call makes the context current and is serialised."""
    _, drv = fake
    x = np.random.default_rng(1).normal(size=(2, 3, 227, 227)).astype(np.float32)
    want = _ort(bundles["pcb-aoi"], x)["loss"]
    errors: list[BaseException] = []
    with TensorRTRunner(EngineFromBundle(bundles["pcb-aoi"], cache_dir=tmp_path, precision="fp32")) as r:
        def work() -> None:
            try:
                for _ in range(5):
                    np.testing.assert_allclose(r.infer({"data": x})["loss"], want, rtol=1e-5, atol=1e-6)
            except BaseException as err:  # noqa: BLE001 - surfaced below
                errors.append(err)

        threads = [threading.Thread(target=work) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == [] and drv.state["stack"] == []


def test_argument_errors() -> None:
    with pytest.raises(RunnerError, match="not a serialized engine"):
        TensorRTRunner("bundle-dir")  # a runner never builds: a bundle goes through EngineFromBundle
    with pytest.raises(RunnerError, match="must be bytes"):
        TensorRTRunner(42)  # type: ignore[arg-type]
    r = TensorRTRunner(b"x")
    with pytest.raises(RunnerError, match="before load"):
        r.infer({"data": np.zeros((1, 3, 2, 2), np.float32)})
    with pytest.raises(RunnerError, match="load\\(\\) first"):
        r.input_metadata()


def test_without_tensorrt_or_pycuda(monkeypatch: pytest.MonkeyPatch, bundles: dict[str, Path]) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    runner = create_runner("tensorrt", bundles["pcb-aoi"] / "model.onnx")  # the module itself imports anywhere
    with pytest.raises(BackendUnavailable, match="python3-libnvinfer"):
        runner.load()
    fake_trt.install(monkeypatch)
    monkeypatch.setitem(sys.modules, "pycuda", None)
    monkeypatch.setitem(sys.modules, "pycuda.driver", None)
    with pytest.raises(BackendUnavailable, match="CUDA_ROOT"):
        runner.load()
    assert not runner.is_loaded
