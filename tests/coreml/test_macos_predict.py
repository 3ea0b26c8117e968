"""On macOS only: Core ML's own prediction (MLModel.predict, CPU) agrees with the reference executor. Skipped
elsewhere by tests/conftest.py (Core ML prediction needs macOS); never faked."""

from __future__ import annotations

import numpy as np
import pytest

from export.coreml.executor import Executor, load_program
from export.coreml.package import reference_pixels
from runtime.bundle import load_bundle
from runtime.parity import Reference, compare

pytestmark = pytest.mark.macos


def to_pil(pixels: np.ndarray, color_order: str):
    """One CHW sample in the model's colour order -> an RGB PIL image (Core ML reorders to BGR itself)."""
    from PIL import Image

    hwc = np.clip(np.rint(pixels.transpose(1, 2, 0)), 0, 255).astype(np.uint8)
    if color_order == "BGR":
        hwc = hwc[:, :, ::-1]
    return Image.fromarray(np.ascontiguousarray(hwc), "RGB")


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("preset", ["pcb-aoi", "squeezenet", "yolox-nano"])
def test_predict_matches_executor(coreml_bundles, preset, precision):
    import coremltools as ct

    with load_bundle(coreml_bundles[(preset, precision)]) as b:
        m = b.manifest
        reference = Reference.from_arrays(b.reference())
        package = b.root / f"coreml/{m.name}.mlpackage"
        model = ct.models.MLModel(str(package), compute_units=ct.ComputeUnit.CPU_ONLY)
        _, prog = load_program(package)
        executor = Executor(prog)
        pixels = np.rint(reference_pixels(reference, m.input))  # the image type carries 8-bit pixels
        name = m.output.names[0]
        mine, theirs = [], []
        for i in range(len(pixels)):
            values = executor.run({"image": pixels[i:i + 1]})
            out = model.predict({"image": to_pil(pixels[i], m.input.color_order)})
            if m.task == "classify":
                mine.append(np.asarray(values["probabilities"], np.float32).reshape(1, -1))
                probs = out["classLabel_probs"]
                theirs.append(np.asarray([[probs[label] for label in m.labels]], np.float32))
                assert out["classLabel"] == values["classLabel"][0]
            else:
                mine.append(np.asarray(values["output"], np.float32))
                theirs.append(np.asarray(out["output"], np.float32))
        ref_mine = Reference(np.zeros(1), {name: np.concatenate(mine).reshape(
            (-1, *reference.outputs[name].shape[1:]))}, reference.names, reference.transforms)
        got = np.concatenate(theirs)
        elementwise = ({"max_abs": 1e-3} if m.task == "classify" else {"max_rel_to_peak": 1e-2}) \
            if precision == "fp32" else None
        check = compare(m, ref_mine, {name: got}, artifact=str(package), kind="coreml", precision=precision,
                        elementwise=elementwise)
        assert check.passed, check.detail
