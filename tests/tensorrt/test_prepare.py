"""prepare_engine end to end on the stand-in: build, parity gate against reference.npz, cache, reuse; the CLI."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from runtime.bundle import load_bundle
from runtime.errors import ConfigError, ParityError
from runtime.loaders.tensorrt.builder import BuildSettings
from runtime.loaders.tensorrt.cache import EngineCache
from runtime.loaders.tensorrt.check import tolerances_for
from runtime.loaders.tensorrt.device import DeviceInfo
from runtime.loaders.tensorrt.prepare import prepare_engine
from tests.tensorrt import fake_trt

ORIN = DeviceInfo(gpu_name="Orin", compute_capability="8.7", l4t="36.4.0", driver="540.4.0")


def test_tolerances() -> None:
    assert tolerances_for("fp32") == ({"max_rel_to_peak": 1e-3}, {"score": 0.02})
    assert tolerances_for("fp16") == (None, {"score": 0.05})
    assert tolerances_for("int8")[1]["score"] > tolerances_for("fp16")[1]["score"]
    with pytest.raises(ValueError):
        tolerances_for("fp8")


@pytest.mark.parametrize("name", ["pcb-aoi", "squeezenet", "yolox-nano"])
def test_build_check_cache_then_hit(monkeypatch: pytest.MonkeyPatch, bundles: dict[str, Path], tmp_path: Path,
                                    name: str) -> None:
    trt, drv = fake_trt.install(monkeypatch, "10.3.0.26")
    cache = EngineCache(tmp_path / "cache")
    lines: list[str] = []
    with load_bundle(bundles[name]) as b:
        first = prepare_engine(b, cache, BuildSettings(precision="fp16"), progress=lines.append, device_info=ORIN)
        assert not first.cache_hit and first.check is not None and first.check.passed
        assert first.check.kind == "tensorrt" and first.check.samples == len(b.reference()["names"])
        assert first.key.onnx_sha256 == b.manifest.files["model.onnx"].sha256
        assert (first.key.platform, first.key.compute_capability, first.key.precision) == ("l4t-36.4.0", "8.7",
                                                                                           "fp16")
        again = prepare_engine(b, cache, BuildSettings(precision="fp16"), device_info=ORIN)
    assert again.cache_hit and again.path == first.path and trt.build_count == 1
    assert any("parity passed" in line for line in lines)
    (entry,) = cache.entries()
    assert entry.meta["parity"]["passed"] and entry.meta["bundle"].startswith(name)
    assert cache.timing_cache_path(first.key).is_file()
    assert drv.state["stack"] == [] and drv.state["retained"] == 0  # every context push popped, released


def test_engine_that_disagrees_is_not_cached(monkeypatch: pytest.MonkeyPatch, bundles: dict[str, Path],
                                             tmp_path: Path) -> None:
    trt, _ = fake_trt.install(monkeypatch, "10.3.0")
    # A planted bug: the engine's logits swapped between the two classes.
    trt.corrupt = lambda outs: {k: v[..., ::-1].copy() for k, v in outs.items()}
    cache = EngineCache(tmp_path / "cache")
    with load_bundle(bundles["pcb-aoi"]) as b, pytest.raises(ParityError, match="not cached: .*top-1"):
        prepare_engine(b, cache, BuildSettings(precision="fp16"), device_info=ORIN)
    assert cache.entries() == [] and not any((tmp_path / "cache" / "engines").iterdir())


def test_fp32_small_drift_fails_elementwise(monkeypatch: pytest.MonkeyPatch, bundles: dict[str, Path],
                                            tmp_path: Path) -> None:
    """Top-1 unchanged but scores off by 1% of the peak: fine for FP16 (task level), wrong for FP32."""
    trt, _ = fake_trt.install(monkeypatch, "10.3.0")

    def drift(outs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: (v + 0.01 * np.abs(v).max()).astype(v.dtype) for k, v in outs.items()}

    trt.corrupt = drift
    cache = EngineCache(tmp_path / "cache")
    with load_bundle(bundles["squeezenet"]) as b:
        with pytest.raises(ParityError, match="max_rel_to_peak"):
            prepare_engine(b, cache, BuildSettings(precision="fp32"), device_info=ORIN)
        ok = prepare_engine(b, cache, BuildSettings(precision="fp16"), device_info=ORIN)
    assert ok.check is not None and ok.check.passed and len(cache.entries()) == 1


def test_key_separates_precision_profile_device(monkeypatch: pytest.MonkeyPatch, bundles: dict[str, Path],
                                                tmp_path: Path) -> None:
    trt, _ = fake_trt.install(monkeypatch, "10.3.0")
    cache = EngineCache(tmp_path / "cache")
    with load_bundle(bundles["pcb-aoi"]) as b:
        a = prepare_engine(b, cache, BuildSettings(precision="fp16"), device_info=ORIN)
        c = prepare_engine(b, cache, BuildSettings(precision="fp32"), device_info=ORIN)
        d = prepare_engine(b, cache, BuildSettings(precision="fp16", max_batch=2), device_info=ORIN)
        e = prepare_engine(b, cache, BuildSettings(precision="fp16"),
                           device_info=ORIN.model_copy(update={"l4t": "36.4.3"}))
        f = prepare_engine(b, cache, BuildSettings(precision="fp16"), device_info=ORIN, rebuild=True)
    assert len({x.key.digest for x in (a, c, d, e)}) == 4 and trt.build_count == 5
    assert f.key == a.key and not f.cache_hit and d.profile.batch[2] == 2


def test_trt11_builds_from_the_fp16_onnx(monkeypatch: pytest.MonkeyPatch, bundles: dict[str, Path],
                                          tmp_path: Path) -> None:
    trt, _ = fake_trt.install(monkeypatch, "11.0.0")
    cache = EngineCache(tmp_path / "cache")
    with load_bundle(bundles["yolox-nano"]) as b:
        p = prepare_engine(b, cache, BuildSettings(precision="auto"), device_info=ORIN)
        assert p.plan.onnx_file == "model.fp16.onnx" and p.key.onnx_sha256 == b.manifest.files["model.fp16.onnx"].sha256
    assert p.check is not None and p.check.passed and p.check.stats["detections_matched"] > 0


def test_trt11_without_fp16_onnx(monkeypatch: pytest.MonkeyPatch, bundles: dict[str, Path], tmp_path: Path) -> None:
    fake_trt.install(monkeypatch, "11.0.0")
    import shutil

    from export.bundle import finish_bundle
    from runtime.bundle import read_manifest

    staging = tmp_path / "staging"
    shutil.copytree(bundles["pcb-aoi"], staging)
    (staging / "model.fp16.onnx").unlink()
    (staging / "manifest.sig").unlink()
    path, _ = finish_bundle(staging, read_manifest(bundles["pcb-aoi"]), tmp_path / "no-fp16")
    with load_bundle(path) as b:
        with pytest.raises(ConfigError, match="no model.fp16.onnx"):
            prepare_engine(b, EngineCache(tmp_path / "c"), BuildSettings(precision="fp16"), device_info=ORIN)
        p = prepare_engine(b, EngineCache(tmp_path / "c"), BuildSettings(precision="auto"), device_info=ORIN)
    assert p.plan.precision == "fp32"


def test_cli_json(monkeypatch: pytest.MonkeyPatch, bundles: dict[str, Path], keys: dict[str, Path],
                  tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fake_trt.install(monkeypatch, "10.3.0.26")
    from shadowline.cli import main

    args = ["export", "tensorrt", str(bundles["pcb-aoi"]), "--cache-dir", str(tmp_path / "c"), "--json",
            "--trust-store", str(keys["trust"]), "--workspace-mb", "256", "--max-batch", "4"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["cache_hit"] is False and out["parity"]["passed"] and out["profile"]["max"][0] == 4
    assert out["precision"] == "fp16" and out["builder_flags"] == ["FP16"]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["cache_hit"] is True
    # A trust store that holds only another key: the bundle's signer is unknown, nothing is built.
    assert main(args[:-6] + ["--trust-store", str(keys["other_private"].parent)]) == 5


def test_cli_without_tensorrt(monkeypatch: pytest.MonkeyPatch, bundles: dict[str, Path], tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    from shadowline.cli import main

    assert main(["export", "tensorrt", str(bundles["pcb-aoi"]), "--cache-dir", str(tmp_path)]) == 8
    assert "python3-libnvinfer" in capsys.readouterr().err


def test_cli_text_and_cache_budget(monkeypatch: pytest.MonkeyPatch, bundles: dict[str, Path], tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("runtime.loaders.tensorrt.prepare.detect", lambda device=0: ORIN)
    fake_trt.install(monkeypatch, "10.3.0.26")
    from shadowline.cli import main

    base = ["export", "tensorrt", "--cache-dir", str(tmp_path), "--cache-max-mb", "1"]
    assert main(base + [str(bundles["pcb-aoi"])]) == 0
    captured = capsys.readouterr()
    assert "parity passed" in captured.out and "l4t-36.4.0" in captured.out and "sm 8.7" in captured.out
    assert "[tensorrt] building fp16 engine" in captured.err  # progress on stderr
    assert main(base + ["--quiet", str(bundles["pcb-aoi"])]) == 0
    captured = capsys.readouterr()
    assert "from cache" in captured.out and captured.err == ""
    # The SqueezeNet engine (its ONNX alone is ~5 MB) exceeds the 1 MiB budget with the PCB engine: the least
    # recently used one (PCB) is evicted, the new one kept.
    assert main(base + ["--quiet", str(bundles["squeezenet"])]) == 0
    (entry,) = EngineCache(tmp_path).entries()
    assert entry.meta["bundle"].startswith("squeezenet")
