"""INT8 variants behind a parity gate: calibrated on half the calibration images, checked on the other half, written
as a Q/DQ model TensorRT builds strongly typed and (where faster, or when asked) an ONNX Runtime CPU model; refused
by name when they disagree; chosen and recorded on the device like every variant."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from export.exporter import export_model
from export.int8 import CPU_FILE, MIN_CPU_SPEEDUP, TENSORRT_FILE, tensorrt_problems
from export.options import build_options, load_preset
from runtime.bundle import load_bundle
from runtime.errors import ConfigError, ParityError
from runtime.predictor import BundleModel
from runtime.processing.image import read_image
from runtime.variants import choose_variant
from tests.conftest import IMAGES, MODELS

PCB = MODELS / "pcb-aoi_opset11.onnx"


def pcb_options(**kw):
    return build_options(load_preset("pcb-aoi", PCB), {"int8": True, "validation": None, **kw})


@pytest.fixture(scope="module")
def int8_bundle(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("int8")
    return export_model(PCB, pcb_options(int8_cpu="always", fp16=True), out)[0]


def test_both_variants_are_written_checked_on_held_out_images_and_recorded(int8_bundle):
    with load_bundle(int8_bundle) as b:
        m = b.manifest
        checks = {c.artifact: c for c in m.parity if c.kind == "onnx-int8"}
        assert set(checks) == {TENSORRT_FILE, CPU_FILE} and {TENSORRT_FILE, CPU_FILE} <= set(m.files)
        info = m.extras["int8"]
        calibrated, held = info["calibration_images"], info["held_out_images"]
        assert sorted(calibrated + held) == sorted(m.extras["calibration_images"]) and not set(calibrated) & set(held)
        for c in checks.values():
            assert c.passed and c.precision == "int8" and c.samples == len(held) == 2
            assert c.stats["top1_agree"] == 2 and c.stats["max_abs_score"] <= c.tolerances["score"] == 0.1
        assert info["upgraded_from_opset"] == 11 and info["opset"] == 13  # per-channel Q/DQ needs opset 13
        assert info["cpu"]["file"] == CPU_FILE and info["cpu"]["speedup"] > 0


def test_tensorrt_variant_is_signed_int8_with_zero_points_0_and_per_channel_weights(int8_bundle):
    with load_bundle(int8_bundle) as b:
        assert tensorrt_problems(b.path(TENSORRT_FILE)) == []
        model = onnx.load(str(b.path(TENSORRT_FILE)))
        init = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
        assert qdq and all(init[n.input[2]].dtype == np.int8 and not init[n.input[2]].any() for n in qdq)
        per_channel = [n for n in qdq if init[n.input[1]].size > 1]
        assert per_channel and all(any(a.name == "axis" for a in n.attribute) for n in per_channel)
        # the CPU variant is the other kind (unsigned activations): the TensorRT rule must be able to say so
        assert any("zero point is not INT8 0" in p for p in tensorrt_problems(b.path(CPU_FILE)))


@pytest.mark.parametrize("version", ["10.3.0.26", "11.0.0"])
def test_tensorrt_builds_the_qdq_model_strongly_typed(monkeypatch, int8_bundle, tmp_path, version):
    from runtime.loaders.tensorrt.builder import BuildSettings
    from runtime.loaders.tensorrt.cache import EngineCache
    from runtime.loaders.tensorrt.device import DeviceInfo
    from runtime.loaders.tensorrt.prepare import prepare_engine
    from tests.tensorrt import fake_trt

    trt, _ = fake_trt.install(monkeypatch, version)
    device = DeviceInfo(gpu_name="Orin", compute_capability="8.7", l4t="36.4.0", driver="540.4.0")
    with load_bundle(int8_bundle) as b:
        prepared = prepare_engine(b, EngineCache(tmp_path / "cache"), BuildSettings(precision="int8"),
                                  device_info=device)
    assert prepared.plan.onnx_file == TENSORRT_FILE and prepared.plan.strongly_typed
    assert prepared.plan.builder_flags == ()  # no INT8 flag, no calibrator: the Q/DQ nodes say it all
    assert ("parse_from_file", TENSORRT_FILE) in trt.calls
    assert prepared.check is not None and prepared.check.passed and prepared.check.precision == "int8"


def test_device_runs_the_int8_variant_and_records_it(int8_bundle):
    image = read_image(IMAGES / "pcb_winml" / "Defective_02.png")
    with load_bundle(int8_bundle) as b:
        model = BundleModel(b, precision="int8").load()
        try:
            assert model.variant == "int8-cpu"  # the CPU kernels' variant before the Q/DQ model on ONNX Runtime
            out = model.predict([image])[0]
            assert out.variant == "int8-cpu" and out.top()[0] == "Defective"
        finally:
            model.close()
        choice = choose_variant(b, "auto", _ort,
                                timings={"fp32": 10.0, "fp16": 12.0, "int8-cpu": 3.0, "int8": 25.0})
        try:
            assert choice.variant.name == "int8-cpu" and choice.rejected == {}
        finally:
            choice.runner.close()


def _ort(path: Path):
    from runtime.runners import create_runner

    return create_runner("onnxruntime", path, threads=1)


def test_activation_check_judges_an_int8_variant_at_int8_tolerance(int8_bundle):
    from edge.agent.check import check

    with load_bundle(int8_bundle) as b:
        model = BundleModel(b, precision="int8").load()
        try:
            result = check(model, None, [])
            assert result.parity.passed and result.parity.precision == "int8" and result.parity.level == "task"
        finally:
            model.close()


def test_cpu_variant_decision_follows_the_measurement(tmp_path):
    path, manifest, _ = export_model(PCB, pcb_options(), tmp_path / "auto")
    cpu = manifest.extras["int8"]["cpu"]
    assert cpu["mode"] == "auto" and cpu["fp32_ms"] > 0 and cpu["int8_ms"] > 0
    if cpu["file"]:
        assert cpu["speedup"] >= MIN_CPU_SPEEDUP and (path / CPU_FILE).is_file()
    else:
        assert cpu["speedup"] < MIN_CPU_SPEEDUP and "not written" in cpu["reason"] and not (path / CPU_FILE).exists()
    path, manifest, _ = export_model(PCB, pcb_options(int8_cpu="never"), tmp_path / "never")
    assert manifest.extras["int8"]["cpu"]["file"] is None and not (path / CPU_FILE).exists()
    assert TENSORRT_FILE in manifest.files


def test_int8_that_fails_parity_is_refused_by_name_and_leaves_nothing(tmp_path):
    """YOLOX-Nano does not survive post-training INT8 at task level (its depthwise stem amplifies input rounding):
    the export names the artifact and the images, and writes no bundle."""
    model = MODELS / "yolox_nano.onnx"
    opts = build_options(load_preset("yolox-nano", model), {"int8": True, "max_calibration": 4})
    with pytest.raises(ParityError, match=rf"{TENSORRT_FILE} disagrees with the FP32 reference on the held-out "
                                          r"images: .*unmatched"):
        export_model(model, opts, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_int8_needs_two_calibration_images(tmp_path):
    calib = tmp_path / "one"
    calib.mkdir()
    (calib / "a.png").write_bytes((IMAGES / "pcb_winml" / "Normal_33.png").read_bytes())
    with pytest.raises(ConfigError, match="at least 2 calibration images"):
        export_model(PCB, pcb_options(calibration=str(calib)), tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []
