"""The build path against the TensorRT stand-in: the exact calls per version, timing cache, progress, errors."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import pytest

from runtime.bundle import read_manifest
from runtime.errors import BackendUnavailable, ModelRejected
from runtime.loaders.tensorrt.builder import (
    BuildCancelled,
    BuildSettings,
    ProgressReporter,
    build_engine,
    import_tensorrt,
)
from runtime.loaders.tensorrt.profile import profile_for
from runtime.loaders.tensorrt.versions import TrtVersion, plan_build
from tests.tensorrt import fake_trt


def _plan(bundle: Path, version: str, precision: str):
    m = read_manifest(bundle)
    return plan_build(TrtVersion.parse(version), precision, set(m.files), bundle), profile_for(m)


def test_missing_tensorrt_gives_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(BackendUnavailable, match="python3-libnvinfer") as err:
        import_tensorrt()
    assert err.value.exit_code == 8


def test_trt10_fp16_calls(monkeypatch: pytest.MonkeyPatch, bundles: dict[str, Path], tmp_path: Path) -> None:
    trt, _ = fake_trt.install(monkeypatch, "10.3.0.26")
    plan, profile = _plan(bundles["pcb-aoi"], trt.__version__, "fp16")
    lines: list[str] = []
    result = build_engine(bundles["pcb-aoi"] / plan.onnx_file, plan, profile, BuildSettings(workspace_mb=512),
                          tmp_path / "timing.cache", lines.append)
    assert result.engine.startswith(fake_trt.MAGIC)
    calls = trt.calls
    assert ("create_network", 0) in calls and ("parse_from_file", "model.onnx") in calls
    assert ("set_memory_pool_limit", "WORKSPACE", 512 << 20) in calls
    assert ("set_flag", "FP16") in calls and not any(c[0] == "clear_flag" for c in calls)
    assert ("set_shape", "data", profile.min, profile.opt, profile.max) in calls
    header = json.loads(result.engine[12 : 12 + int.from_bytes(result.engine[8:12], "little")])
    assert header["fp16"] and not header["strongly_typed"] and header["workspace"] == 512 << 20
    # Progress: every phase announced and finished, the build line names version, precision and profile.
    assert any("building fp16 engine from model.onnx with TensorRT 10.3.0" in line for line in lines)
    assert any("Tactic selection done" in line for line in lines)
    assert any(line.startswith("  [tensorrt] Tactic selection (0/4)") for line in lines)  # nested phase indented


def test_trt11_fp16_is_strongly_typed_from_fp16_onnx(monkeypatch: pytest.MonkeyPatch, bundles: dict[str, Path],
                                                      tmp_path: Path) -> None:
    trt, _ = fake_trt.install(monkeypatch, "11.0.0.12")
    plan, profile = _plan(bundles["pcb-aoi"], trt.__version__, "fp16")
    build_engine(bundles["pcb-aoi"] / plan.onnx_file, plan, profile, BuildSettings(), None)
    strongly = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    assert ("create_network", strongly) in trt.calls
    assert ("parse_from_file", "model.fp16.onnx") in trt.calls
    assert not any(c[0] == "set_flag" for c in trt.calls)


def test_fp32_clears_tf32_and_static_model_gets_no_profile(monkeypatch: pytest.MonkeyPatch,
                                                            bundles: dict[str, Path]) -> None:
    trt, _ = fake_trt.install(monkeypatch, "10.3.0")
    plan, profile = _plan(bundles["squeezenet"], trt.__version__, "fp32")
    result = build_engine(bundles["squeezenet"] / plan.onnx_file, plan, profile, BuildSettings(), None)
    assert ("clear_flag", "TF32") in trt.calls and not any(c[0] == "set_shape" for c in trt.calls)
    header = json.loads(result.engine[12 : 12 + int.from_bytes(result.engine[8:12], "little")])
    assert header["tf32"] is False


def test_weak_flag_on_strong_network_would_fail(monkeypatch: pytest.MonkeyPatch, bundles: dict[str, Path]) -> None:
    """The stand-in refuses FP16 on a strongly typed network, as TensorRT does; the builder reports its error."""
    trt, _ = fake_trt.install(monkeypatch, "10.3.0")
    plan, profile = _plan(bundles["pcb-aoi"], trt.__version__, "fp16")
    from dataclasses import replace

    bad = replace(plan, strongly_typed=True)
    with pytest.raises(ModelRejected, match="not allowed with a strongly typed network"):
        build_engine(bundles["pcb-aoi"] / "model.onnx", bad, profile, BuildSettings(), None)


def test_timing_cache_persisted_reused_and_merged(monkeypatch: pytest.MonkeyPatch, bundles: dict[str, Path],
                                                  tmp_path: Path) -> None:
    trt, _ = fake_trt.install(monkeypatch, "10.3.0")
    cache_file = tmp_path / "t" / "timing.cache"
    plan, profile = _plan(bundles["pcb-aoi"], trt.__version__, "fp16")
    first = build_engine(bundles["pcb-aoi"] / plan.onnx_file, plan, profile, BuildSettings(), cache_file)
    assert not first.timing_cache_loaded and cache_file.is_file()
    entries = json.loads(cache_file.read_bytes())["entries"]
    assert len(entries) == 1
    plan2, profile2 = _plan(bundles["squeezenet"], trt.__version__, "fp16")
    second = build_engine(bundles["squeezenet"] / plan2.onnx_file, plan2, profile2, BuildSettings(), cache_file)
    assert second.timing_cache_loaded
    assert set(entries) < set(json.loads(cache_file.read_bytes())["entries"])
    # Another process wrote the file during our build: its timings are combined, not overwritten.
    trt.calls.clear()
    original = trt.Builder.build_serialized_network

    def concurrent_writer(self, network, config):
        out = original(self, network, config)
        cache_file.write_bytes(json.dumps({"device": "sm87", "entries": ["tactics:other-process"]}).encode())
        return out

    monkeypatch.setattr(trt.Builder, "build_serialized_network", concurrent_writer)
    plan3, profile3 = _plan(bundles["yolox-nano"], trt.__version__, "fp16")
    build_engine(bundles["yolox-nano"] / plan3.onnx_file, plan3, profile3, BuildSettings(), cache_file)
    merged = set(json.loads(cache_file.read_bytes())["entries"])
    assert "tactics:other-process" in merged and set(entries) <= merged and len(merged) == 4
    assert any(c[0] == "timing_cache.combine" for c in trt.calls)


def test_timing_cache_from_another_gpu_starts_empty(monkeypatch: pytest.MonkeyPatch, bundles: dict[str, Path],
                                                    tmp_path: Path) -> None:
    trt, _ = fake_trt.install(monkeypatch, "10.3.0")
    cache_file = tmp_path / "timing.cache"
    cache_file.write_bytes(json.dumps({"device": "sm72", "entries": ["tactics:xavier"]}).encode())
    plan, profile = _plan(bundles["pcb-aoi"], trt.__version__, "fp16")
    result = build_engine(bundles["pcb-aoi"] / plan.onnx_file, plan, profile, BuildSettings(), cache_file)
    assert not result.timing_cache_loaded
    saved = json.loads(cache_file.read_bytes())
    assert saved["device"] == "sm87" and "tactics:xavier" not in saved["entries"]


def test_parser_error_names_the_op(monkeypatch: pytest.MonkeyPatch, bundles: dict[str, Path]) -> None:
    trt, _ = fake_trt.install(monkeypatch, "10.3.0")
    trt.OnnxParser.unsupported = {"LRN"}
    plan, profile = _plan(bundles["squeezenet"], trt.__version__, "fp16")
    import onnx

    ops = {n.op_type for n in onnx.load(str(bundles["squeezenet"] / "model.onnx")).graph.node}
    trt.OnnxParser.unsupported = {sorted(ops)[0]}
    with pytest.raises(ModelRejected, match=f"no importer registered for op: {sorted(ops)[0]}"):
        build_engine(bundles["squeezenet"] / "model.onnx", plan, profile, BuildSettings(), None)


def test_not_onnx(monkeypatch: pytest.MonkeyPatch, bundles: dict[str, Path], tmp_path: Path) -> None:
    trt, _ = fake_trt.install(monkeypatch, "10.3.0")
    plan, profile = _plan(bundles["pcb-aoi"], trt.__version__, "fp16")
    junk = tmp_path / "model.onnx"
    junk.write_bytes(b"\x00not a model")
    with pytest.raises(ModelRejected, match="rejected model.onnx"):
        build_engine(junk, plan, profile, BuildSettings(), None)


def test_profile_must_name_the_network_input(monkeypatch: pytest.MonkeyPatch, bundles: dict[str, Path]) -> None:
    trt, _ = fake_trt.install(monkeypatch, "10.3.0")
    plan, profile = _plan(bundles["pcb-aoi"], trt.__version__, "fp16")
    wrong = profile.model_copy(update={"input": "images"})
    with pytest.raises(ModelRejected, match="names 'images'"):
        build_engine(bundles["pcb-aoi"] / "model.onnx", plan, wrong, BuildSettings(), None)


def test_cancel(monkeypatch: pytest.MonkeyPatch, bundles: dict[str, Path]) -> None:
    trt, _ = fake_trt.install(monkeypatch, "10.3.0")
    plan, profile = _plan(bundles["pcb-aoi"], trt.__version__, "fp16")
    stop = threading.Event()
    stop.set()
    with pytest.raises(BuildCancelled, match="cancelled"):
        build_engine(bundles["pcb-aoi"] / "model.onnx", plan, profile, BuildSettings(), None, cancel=stop)
    assert trt.build_count == 0


def test_reporter_throttles_and_times_out() -> None:
    now = [0.0]
    lines: list[str] = []
    r = ProgressReporter(lines.append, every_s=2.0, deadline=10.0, clock=lambda: now[0])
    r.phase_start("Building engine", None, 100)
    r.phase_start("Tactic selection", "Building engine", 50)
    for step in range(50):
        now[0] += 0.1
        assert r.step_complete("Tactic selection", step)
    # 5 s of steps at most every 2 s: two progress lines besides the start line.
    assert len([x for x in lines if "Tactic selection (" in x]) == 3
    now[0] = 11.0
    assert r.step_complete("Tactic selection", 50) is False and r.stopped_because == "time limit reached"
    r.phase_finish("Tactic selection")
    assert lines[-1].startswith("  [tensorrt] Tactic selection done in")
