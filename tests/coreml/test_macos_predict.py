"""On macOS only: Core ML's own prediction (MLModel.predict, CPU) agrees with the reference executor, for the
classifiers' probabilities and for the detector pipeline's Vision outputs (decoding and Core ML's own NMS). Skipped
elsewhere by tests/conftest.py (Core ML prediction needs macOS); never faked."""

from __future__ import annotations

import numpy as np
import pytest

from export.coreml.checks import vision_detections
from export.coreml.executor import PackageExecutor, load_package
from export.coreml.package import reference_pixels
from runtime.bundle import load_bundle
from runtime.parity import Reference, compare, match_detections

pytestmark = pytest.mark.macos


def to_pil(pixels: np.ndarray, color_order: str):
    """One CHW sample in the model's colour order -> an RGB PIL image (Core ML reorders to BGR itself)."""
    from PIL import Image

    hwc = np.clip(np.rint(pixels.transpose(1, 2, 0)), 0, 255).astype(np.uint8)
    if color_order == "BGR":
        hwc = hwc[:, :, ::-1]
    return Image.fromarray(np.ascontiguousarray(hwc), "RGB")


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("preset", ["pcb-aoi", "squeezenet"])
def test_classifier_predict_matches_executor(coreml_bundles, preset, precision):
    import coremltools as ct

    with load_bundle(coreml_bundles[(preset, precision)]) as b:
        m = b.manifest
        reference = Reference.from_arrays(b.reference())
        package = b.root / f"coreml/{m.name}.mlpackage"
        model = ct.models.MLModel(str(package), compute_units=ct.ComputeUnit.CPU_ONLY)
        executor = PackageExecutor(load_package(package))
        pixels = np.rint(reference_pixels(reference, m.input))  # the image type carries 8-bit pixels
        name = m.output.names[0]
        mine, theirs = [], []
        for i in range(len(pixels)):
            values = executor.run({"image": pixels[i:i + 1]})[0]
            out = model.predict({"image": to_pil(pixels[i], m.input.color_order)})
            probs = values["classLabel_probs"][0]
            mine.append(np.asarray([[probs[label] for label in m.labels]], np.float32))
            theirs.append(np.asarray([[out["classLabel_probs"][label] for label in m.labels]], np.float32))
            assert out["classLabel"] == values["classLabel"][0]
        ref_mine = Reference(np.zeros(1), {name: np.concatenate(mine)}, reference.names, reference.transforms)
        probabilities = m.model_copy(update={"output": m.output.model_copy(update={"decoder": "probabilities"})})
        check = compare(probabilities, ref_mine, {name: np.concatenate(theirs)}, artifact=str(package), kind="coreml",
                        precision=precision, elementwise={"max_abs": 1e-3} if precision == "fp32" else None)
        assert check.passed, check.detail


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_detector_pipeline_predict_matches_executor(coreml_bundles, precision):
    """Core ML runs the whole pipeline (its own NMS included); its Vision outputs match the executor's."""
    import coremltools as ct

    with load_bundle(coreml_bundles[("yolox-nano", precision)]) as b:
        m = b.manifest
        reference = Reference.from_arrays(b.reference())
        package = b.root / f"coreml/{m.name}.mlpackage"
        model = ct.models.MLModel(str(package), compute_units=ct.ComputeUnit.CPU_ONLY)
        executor = PackageExecutor(load_package(package))
        pixels = np.rint(reference_pixels(reference, m.input))
        tol = {"iou": 0.99, "score": 1e-3} if precision == "fp32" else {"iou": 0.9, "score": 0.05}
        threshold = m.thresholds.default
        for i in range(len(pixels)):
            last = executor.run({"image": pixels[i:i + 1]})[-1]
            out = model.predict({"image": to_pil(pixels[i], m.input.color_order)})
            assert set(out) == {"confidence", "coordinates"}
            transform = reference.transforms[i]
            mine = vision_detections(m, last["confidence"], last["coordinates"], transform)
            theirs = vision_detections(m, out["confidence"], out["coordinates"], transform)
            keep = [d for d in mine if d.score >= threshold - tol["score"]]
            got = [d for d in theirs if d.score >= threshold - tol["score"]]
            _, problems = match_detections(keep, got, threshold, tol["iou"], tol["score"])
            assert problems == [], f"{reference.names[i]}: {problems}"
