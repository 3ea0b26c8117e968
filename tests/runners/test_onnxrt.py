"""OnnxRuntimeRunner on the real models: providers read back, CPU fallback reported, strict mode, input checks."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from runtime.errors import BackendUnavailable
from runtime.runners import create_runner
from runtime.runners.base import RunnerError
from runtime.runners.onnxrt import OnnxRuntimeRunner
from tests.conftest import MODELS

PCB = MODELS / "pcb-aoi_opset11.onnx"
SQUEEZE = MODELS / "squeezenet1.0_fp32.onnx"


def test_cpu_provider_read_back() -> None:
    with OnnxRuntimeRunner(PCB, providers=["cpu"], threads=1) as r:
        d = r.describe()
        assert d["requested_providers"] == ["CPUExecutionProvider"]
        assert d["active_providers"] == ["CPUExecutionProvider"] and d["threads"] == 1


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="needs a CPU-only ORT")
def test_missing_provider_falls_back_to_cpu_and_is_reported() -> None:
    with OnnxRuntimeRunner(PCB, providers=["tensorrt", ("cuda", {"device_id": 0}), "cpu"]) as r:
        d = r.describe()
        assert d["requested_providers"] == ["TensorrtExecutionProvider", "CUDAExecutionProvider",
                                            "CPUExecutionProvider"]
        assert d["active_providers"] == ["CPUExecutionProvider"]
        assert set(d["requested_providers"]) - set(d["active_providers"]) == {"TensorrtExecutionProvider",
                                                                              "CUDAExecutionProvider"}
        out = r.infer({"data": np.zeros((2, 3, 227, 227), np.float32)})
        assert out["loss"].shape == (2, 2)
    # Only unavailable providers requested: still runs, on the CPU.
    with OnnxRuntimeRunner(PCB, providers=["cuda"]) as r:
        assert r.active_providers == ["CPUExecutionProvider"]


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="needs a CPU-only ORT")
def test_require_providers_raises_with_hint() -> None:
    r = OnnxRuntimeRunner(PCB, providers=["cuda", "cpu"], require_providers=True)
    with pytest.raises(BackendUnavailable, match="CUDAExecutionProvider.*onnxruntime-gpu") as err:
        r.load()
    assert err.value.exit_code == 8 and not r.is_loaded
    with OnnxRuntimeRunner(PCB, providers=["cpu"], require_providers=True) as ok:
        assert ok.active_providers == ["CPUExecutionProvider"]


def test_metadata() -> None:
    with OnnxRuntimeRunner(PCB) as r:
        (i,) = r.input_metadata()
        assert (i.name, i.shape, i.dtype) == ("data", ("N", 3, 227, 227), "float32")
        assert [(o.name, o.shape) for o in r.output_metadata()] == [("loss", ("N", 2))]
    with OnnxRuntimeRunner(SQUEEZE) as r:
        assert r.input_metadata()[0].shape == (1, 3, 224, 224)


def test_input_checks() -> None:
    with OnnxRuntimeRunner(SQUEEZE) as r:
        good = np.zeros((1, 3, 224, 224), np.float32)
        assert r.infer({"data_0": good})["softmaxout_1"].shape == (1, 1000, 1, 1)
        assert r.last_inference_time is not None
        for bad, _what in [(np.zeros((2, 3, 224, 224), np.float32), "batch"),
                          (np.zeros((1, 3, 227, 227), np.float32), "size"),
                          (np.zeros((3, 224, 224), np.float32), "rank")]:
            with pytest.raises(RunnerError, match="has shape"):
                r.infer({"data_0": bad})
        with pytest.raises(RunnerError, match=r"missing \['data_0'\], unexpected \['x'\]"):
            r.infer({"x": good})
        with pytest.raises(RunnerError, match=r"unexpected \['extra'\]"):
            r.infer({"data_0": good, "extra": good})
    with OnnxRuntimeRunner(PCB) as r:  # a dynamic batch accepts any batch
        assert r.infer({"data": np.zeros((5, 3, 227, 227), np.float32)})["loss"].shape == (5, 2)


def test_order_of_use() -> None:
    r = OnnxRuntimeRunner(PCB)
    with pytest.raises(RunnerError, match="before load"):
        r.infer({"data": np.zeros((1, 3, 227, 227), np.float32)})
    r.load()
    r.close()
    assert not r.is_loaded
    r.close()  # twice is harmless


def test_registry() -> None:
    assert isinstance(create_runner("onnxruntime", PCB), OnnxRuntimeRunner)
    with pytest.raises(BackendUnavailable, match="unknown backend 'openvino'; known: onnxruntime, tensorrt, coreml"):
        create_runner("openvino", PCB)
    from runtime.runners.coreml import CoreMLRunner
    from runtime.runners.tensorrt import TensorRTRunner

    assert type(create_runner("tensorrt", PCB)) is TensorRTRunner
    assert type(create_runner("coreml", PCB)) is CoreMLRunner


def test_session_config_entries_reach_the_session(bundles):
    """Entries are applied to the live session (read back from it, not from what was asked)."""
    from runtime.bundle import load_bundle
    from runtime.runners.onnxrt import OnnxRuntimeRunner

    with load_bundle(bundles["pcb-aoi"]) as b:
        r = OnnxRuntimeRunner(b.model_path, session_config={"session.intra_op.allow_spinning": "0"}).load()
        assert r.describe()["session_config"] == {"session.intra_op.allow_spinning": "0"}
        plain = OnnxRuntimeRunner(b.model_path).load()
        with pytest.raises(RuntimeError, match="does not have configuration"):  # not set unless asked for
            plain._session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning")
        r.close()
        plain.close()
