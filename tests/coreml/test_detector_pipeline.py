"""Issue 14.5: a Core ML detector is a pipeline Vision reads directly (network -> decoding -> NMS, outputs
`confidence` and `coordinates`), and the reference executor checks its Vision outputs against the ONNX Runtime
detections; boxes in the wrong convention are refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from export.coreml.checks import check_detections, tolerance
from export.coreml.detector import decoding_model, nms_model, raw_layout
from export.coreml.executor import Executor, PackageExecutor, load_package
from export.coreml.nms import NmsParams, run_nms
from export.coreml.package import build_and_check, reference_pixels, save_package
from runtime.bundle import load_bundle
from runtime.errors import ConversionError, ParityError
from runtime.parity import Reference

pytest.importorskip("coremltools")


@pytest.fixture(scope="module")
def yolox(coreml_bundles) -> tuple:
    with load_bundle(coreml_bundles[("yolox-nano", "fp32")]) as b:
        return b.root, b.manifest, Reference.from_arrays(b.reference())


def vision_outputs(manifest, raw: np.ndarray, workdir: Path, bugs=frozenset()) -> list[tuple]:
    """The decoding model (saved, read back, evaluated by the executor) and the NMS model on raw network outputs."""
    decoding = decoding_model(manifest, "output", (1, *raw.shape[1:]), bugs)
    save_package(decoding, workdir / "decoding.mlpackage")
    program = load_package(workdir / "decoding.mlpackage").network.program
    nms = NmsParams.from_spec(nms_model(manifest, raw.shape[1], 6).get_spec())
    out = []
    for i in range(len(raw)):
        values = Executor(program).run({"output": raw[i:i + 1]})
        result = run_nms(nms, values)
        out.append((result["confidence"], result["coordinates"]))
    return out


def test_pipeline_runs_stage_by_stage(yolox):
    """The saved package read back: three stages wired by name; the optional threshold inputs override the NMS
    defaults at run time, as an app can through Vision's featureProvider."""
    root, manifest, reference = yolox
    package = load_package(root / manifest.extras["coreml"]["package"])
    assert [s.kind for s in package.stages] == ["program", "program", "nms"]
    nms = package.stages[2].nms
    assert nms is not None and nms.labels == manifest.labels and nms.per_class is False  # preset: class-agnostic
    pixels = reference_pixels(reference, manifest.input)[:1]
    ex = PackageExecutor(package)
    default = ex.run({"image": pixels})[-1]
    strict = ex.run({"image": pixels, "confidenceThreshold": 0.5, "iouThreshold": 0.3})[-1]
    assert len(default["confidence"]) > len(strict["confidence"]) > 0
    assert (strict["confidence"].max(axis=1) >= 0.5).all()
    coords = default["coordinates"]
    assert ((coords[:, :2] >= -0.1) & (coords[:, :2] <= 1.1)).all()  # centres in the image, normalised
    # one class per box: the row's sum is the box's score (Vision reads the sum as "an object is here")
    np.testing.assert_allclose(default["confidence"].sum(axis=1), default["confidence"].max(axis=1))


def test_decoding_matches_the_device_decoder(yolox, tmp_path):
    """Decoding + NMS on ONNX Runtime's own raw output: the same detections as runtime/processing/decode.py."""
    _, manifest, reference = yolox
    raw = reference.outputs[manifest.output.names[0]]
    stats, problems = check_detections(manifest, reference, vision_outputs(manifest, raw, tmp_path),
                                       tolerance("fp32", raw))
    assert problems == []
    assert stats["vision_detections_matched"] == stats["vision_detections_reference"] > 0


@pytest.mark.parametrize("bug", ["box_corners", "box_bottom_left", "box_pixels"])
def test_wrong_box_convention_is_refused(yolox, tmp_path, bug):
    """x1y1x2y2 instead of centre/size, y from the bottom (Vision's boundingBox convention, not the model's), or
    pixels instead of 0..1: every detection then lands elsewhere and the check refuses it."""
    _, manifest, reference = yolox
    raw = reference.outputs[manifest.output.names[0]]
    stats, problems = check_detections(manifest, reference, vision_outputs(manifest, raw, tmp_path,
                                                                           frozenset({bug})), tolerance("fp32", raw))
    assert stats["vision_detections_matched"] < stats["vision_detections_reference"]
    assert any("Vision output" in p and "unmatched" in p for p in problems)


def test_wrong_box_convention_fails_the_export(yolox, tmp_path, monkeypatch):
    """End to end: converted, saved, read back, refused by the check, and the exporter writes nothing."""
    root, manifest, reference = yolox
    shutil.copy(root / "model.onnx", tmp_path / "model.onnx")
    check, _, _ = build_and_check(tmp_path, manifest, reference, "fp32", bugs=frozenset({"box_corners"}))
    assert not check.passed
    assert check.stats["detections_matched"] == check.stats["detections_reference"]  # the network is right
    assert check.stats["vision_detections_matched"] < check.stats["vision_detections_reference"]
    assert "Vision output" in check.detail

    import export.coreml.package as package
    from tests.conftest import export_preset

    original = package.build_and_check
    monkeypatch.setattr(package, "build_and_check",
                        lambda *a, **kw: original(*a, **{**kw, "bugs": frozenset({"box_bottom_left"})}))
    out = tmp_path / "out"
    with pytest.raises(ParityError, match="Vision output"):
        export_preset("yolox-nano", out, None, coreml=True)
    assert not list(out.iterdir())


def test_raw_layout_refusals(yolox):
    _, manifest, _ = yolox
    assert raw_layout(manifest, (1, 3549, 85)) == (3549, 80)
    with pytest.raises(ConversionError, match=r"does not fit yolox with 80 labels"):
        raw_layout(manifest, (1, 3549, 84))
    with pytest.raises(ConversionError, match="static"):
        raw_layout(manifest, (2, 3549, 85))
    other = manifest.model_copy(update={"output": manifest.output.model_copy(update={"decoder": "softmax"})})
    with pytest.raises(ConversionError, match="no Core ML decoding model"):
        raw_layout(other, (1, 3549, 85))
