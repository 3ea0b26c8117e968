"""The device check on real bundles: ONNX Runtime here; TensorRT on a Jetson (marked gpu, skipped elsewhere)."""

from __future__ import annotations

import importlib.util

import pytest

from edge.agent.cache import ReleaseCache
from edge.agent.check import check, pick_backend, prepare
from runtime.errors import ParityError
from tests.agent.conftest import PCB_IMAGES, release_for


def unpack(tmp_path, tar, keys):
    from runtime.signing import TrustStore

    cache = ReleaseCache(tmp_path / "cache")
    _, artifact = release_for(tar, 1)
    cache.tar_path(artifact).write_bytes(tar.read_bytes())
    return cache.install(artifact, TrustStore.load(keys["trust"]))


def test_auto_backend_is_onnxruntime_without_tensorrt():
    expected = "tensorrt" if importlib.util.find_spec("tensorrt") else "onnxruntime"
    assert pick_backend("auto") == expected and pick_backend("onnxruntime") == "onnxruntime"


def test_good_bundle_passes_with_stats_and_smoke_run(tmp_path, tars, keys):
    model = prepare(unpack(tmp_path, tars["v1.0"], keys), "onnxruntime")
    try:
        result = check(model, latency_budget_ms=None, images=PCB_IMAGES + [tmp_path / "gone.png"])
    finally:
        model.close()
    assert result.parity.passed and result.parity.stats["top1_agree"] == 4
    assert result.smoke_images == 4 and "gone.png" in result.notes[0]


def test_latency_budget_enforced(tmp_path, tars, keys):
    model = prepare(unpack(tmp_path, tars["v1.0"], keys), "onnxruntime")
    try:
        with pytest.raises(ParityError, match="over the budget of 0.001 ms"):
            check(model, latency_budget_ms=0.001, images=[])
    finally:
        model.close()


def test_mismatching_reference_fails(tmp_path, tars, keys):
    model = prepare(unpack(tmp_path, tars["bad"], keys), "onnxruntime")
    try:
        with pytest.raises(ParityError, match="top-1"):
            check(model, latency_budget_ms=None, images=[])
    finally:
        model.close()


@pytest.mark.gpu
def test_tensorrt_engine_checked_on_device(tmp_path, tars, keys):
    good = prepare(unpack(tmp_path / "a", tars["v1.0"], keys), "tensorrt")
    try:
        assert check(good, latency_budget_ms=None, images=PCB_IMAGES[:1]).parity.kind == "tensorrt"
    finally:
        good.close()
    # the runner's own engine gate or the device check refuses it: either way a ParityError
    with pytest.raises(ParityError):
        bad = prepare(unpack(tmp_path / "b", tars["bad"], keys), "tensorrt")
        try:
            check(bad, latency_budget_ms=None, images=[])
        finally:
            bad.close()


def test_check_runs_onnxruntime_as_the_daemon_does(tmp_path, tars, keys):
    """One intra-op thread, no spinning (the frame path's defaults): the latency checked against the budget is the
    one frames will see, and the check does not spin a thread per core while the device works."""
    from edge.config import OnnxRuntimeRunnerConfig

    model = prepare(unpack(tmp_path, tars["v1.0"], keys), "onnxruntime")
    try:
        described = model.runner.describe()
        daemon = OnnxRuntimeRunnerConfig().runner_options()
        assert described["threads"] == daemon["threads"] == 1
        assert described["session_config"] == {k: daemon["session_config"][k] for k in described["session_config"]}
        assert described["session_config"]["session.intra_op.allow_spinning"] == "0"
    finally:
        model.close()
