"""Bad models, labels and calibration images get clear errors, and no partial bundle is left on disk."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from export.exporter import export_model
from export.options import build_options, load_preset
from runtime.errors import ConfigError, LabelError, ModelRejected
from tests.conftest import IMAGES, MODELS


def leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir()) if out.exists() else []


def opts(preset: str, model: Path, **kw):
    return build_options(load_preset(preset, model), kw)


def test_legacy_2018_model_is_refused_naming_legacy_padding(tmp_path):
    model = MODELS / "pcb-aoi_original_2018.onnx"
    with pytest.raises(ModelRejected) as err:
        export_model(model, opts("pcb-aoi", model), tmp_path / "out")
    msg = str(err.value)
    assert "LegacyPadding" in msg and "com.microsoft" in msg and "opset 1" in msg
    assert leftovers(tmp_path / "out") == []


def test_not_onnx(tmp_path):
    fake = tmp_path / "model.onnx"
    fake.write_bytes(b"PK\x03\x04 this is a zip, not a protobuf" * 20)
    with pytest.raises(ModelRejected, match="not an ONNX model"):
        export_model(fake, opts("pcb-aoi", MODELS / "pcb-aoi_opset11.onnx"), tmp_path / "out")
    assert leftovers(tmp_path / "out") == []


def test_labels_that_do_not_fit_the_output(tmp_path):
    model = MODELS / "pcb-aoi_opset11.onnx"
    with pytest.raises(LabelError, match="3 labels given, but the model output has 2 classes"):
        export_model(model, opts("pcb-aoi", model, labels=["Defective", "Normal", "Scratch"],
                                 ignore_classes=[]), tmp_path / "out")
    assert leftovers(tmp_path / "out") == []


def test_duplicate_labels_refused_unless_deduplicated(tmp_path):
    model = MODELS / "squeezenet1.0_fp32.onnx"
    with pytest.raises(LabelError, match=r"'crane' at \[134, 517\]"):
        export_model(model, opts("squeezenet", model, dedupe_labels=False), tmp_path / "out")
    assert leftovers(tmp_path / "out") == []


def test_calibration_folder_with_corrupt_and_empty_files(tmp_path, keys):
    """Bad calibration files are skipped and reported by name in the manifest; the export still succeeds."""
    from runtime.signing import load_private_key

    calib = tmp_path / "calib"
    shutil.copytree(IMAGES / "pcb_winml", calib)
    good = (calib / "Normal_33.png").read_bytes()
    (calib / "broken.png").write_bytes(good[: len(good) // 3])
    (calib / "empty.jpg").write_bytes(b"")
    (calib / "notes.txt").write_text("not an image")
    model = MODELS / "pcb-aoi_opset11.onnx"
    messages: list[str] = []
    path, manifest, _ = export_model(model, opts("pcb-aoi", model, calibration=str(calib)), tmp_path / "out",
                                     load_private_key(keys["private"]), progress=messages.append)
    skipped = manifest.extras["calibration_skipped"]
    assert len(skipped) == 3
    assert any("broken.png" in s and "truncated" in s for s in skipped)
    assert any("empty.jpg" in s and "empty file" in s for s in skipped)
    assert any("notes.txt" in s and "not a recognised image" in s for s in skipped)
    assert sorted(manifest.extras["calibration_images"]) == sorted(p.name for p in (IMAGES / "pcb_winml").iterdir())
    assert sum("skipped" in m for m in messages) == 3
    assert leftovers(tmp_path / "out") == ["pcb-aoi-v1.0"]


def test_calibration_folder_with_only_bad_images_fails_cleanly(tmp_path):
    calib = tmp_path / "calib"
    calib.mkdir()
    (calib / "empty.png").write_bytes(b"")
    (calib / "junk.jpg").write_bytes(b"\xff\xd8\xff garbage")
    model = MODELS / "pcb-aoi_opset11.onnx"
    with pytest.raises(ConfigError, match="no usable image"):
        export_model(model, opts("pcb-aoi", model, calibration=str(calib)), tmp_path / "out")
    assert leftovers(tmp_path / "out") == []  # the staging directory is gone too


def test_existing_bundle_is_not_overwritten_without_force(tmp_path):
    model = MODELS / "pcb-aoi_opset11.onnx"
    o = opts("pcb-aoi", model, validation=None)
    export_model(model, o, tmp_path / "out")
    with pytest.raises(ConfigError, match="exists already"):
        export_model(model, o, tmp_path / "out")
    path, _, _ = export_model(model, o, tmp_path / "out", force=True)
    assert leftovers(tmp_path / "out") == ["pcb-aoi-v1.0"]


def test_unknown_option_in_preset_names_the_key(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("name: x\ntask: classify\nresise: stretch\n")
    with pytest.raises(ConfigError, match="resise"):
        build_options(load_preset(str(preset), None), {})


def test_tar_export(tmp_path, keys):
    from runtime.bundle import load_bundle
    from runtime.signing import TrustStore, load_private_key

    model = MODELS / "pcb-aoi_opset11.onnx"
    path, _, _ = export_model(model, opts("pcb-aoi", model, validation=None), tmp_path / "out",
                              load_private_key(keys["private"]), as_tar=True)
    assert path.name == "pcb-aoi-v1.0.tar" and leftovers(tmp_path / "out") == ["pcb-aoi-v1.0.tar"]
    with load_bundle(path, TrustStore.load(keys["trust"])) as b:
        assert b.manifest.bundle_id == "pcb-aoi-v1.0"
