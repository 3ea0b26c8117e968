"""The three shipped models, exported through the real exporter with --coreml in both precisions, agree with ONNX
Runtime on every shipped image; the package is hashed, signed and inspectable."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from runtime.bundle import load_bundle
from runtime.errors import BundleError
from runtime.signing import TrustStore
from tests.conftest import IMAGES, PRESETS

CASES = [(p, prec) for prec in ("fp32", "fp16") for p in PRESETS]


def coreml_check(manifest):
    checks = [c for c in manifest.parity if c.kind == "coreml"]
    assert len(checks) == 1
    return checks[0]


@pytest.mark.parametrize("preset,precision", CASES)
def test_parity_recorded_and_passed(coreml_bundles, preset, precision):
    with load_bundle(coreml_bundles[(preset, precision)]) as b:
        m = b.manifest
        check = coreml_check(m)
        assert check.passed, check.detail
        assert check.precision == precision
        assert check.artifact == f"coreml/{m.name}.mlpackage"
        assert check.artifact + "/Manifest.json" in m.files  # hashed like every file
        stats = check.stats
        n_images = len(list((IMAGES / ("pcb_winml" if preset == "pcb-aoi" else "photos")).iterdir()))
        assert check.samples == n_images
        if m.task == "classify":
            assert stats["top1_agree"] == stats["top1_of"] == n_images
            assert stats["class_label_agree"] == n_images
            assert stats["probs_max_abs"] <= check.tolerances["probabilities_max_abs"]
        else:
            assert stats["detections_matched"] == stats["detections_reference"] > 0
            # the pipeline's Vision outputs (decoding + NMS) against the device decoder on ONNX Runtime's output
            assert stats["vision_detections_matched"] == stats["vision_detections_reference"] > 0
        if precision == "fp32":
            limit = check.tolerances["max_abs"] if m.task == "classify" else check.tolerances["max_rel_to_peak"]
            assert stats["max_abs" if m.task == "classify" else "max_rel_to_peak"] <= limit
            assert limit == (1e-4 if m.task == "classify" else 1e-3)
        extras = m.extras["coreml"]
        assert all(f["passed"] for f in extras["description_checks"])
        assert extras["precision"] == precision


def test_pcb_matches_ground_truth(coreml_bundles, expected):
    """PCB 4/4: the Core ML package's predicted labels are the file-name labels (via the recorded agreement with
    the reference, whose decisions are checked here against the names)."""
    with load_bundle(coreml_bundles[("pcb-aoi", "fp16")]) as b:
        ref = b.reference()
        scores = ref["output." + b.manifest.output.names[0]]
        names = [str(n) for n in ref["names"]]
        predicted = [b.manifest.labels[int(i)] for i in scores.argmax(1)]
        assert predicted == [n.split("_")[0] for n in names]
        assert coreml_check(b.manifest).stats["class_label_agree"] == 4


def test_description_of_image_input_and_outputs(coreml_bundles):
    with load_bundle(coreml_bundles[("squeezenet", "fp32")]) as b:
        ex = b.manifest.extras["coreml"]
        assert ex["inputs"][0] | {"description": ""} == {"name": "image", "type": "imageType", "width": 224,
                                                          "height": 224, "color": "BGR", "description": ""}
        assert [o["name"] for o in ex["outputs"]] == ["classLabel", "classLabel_probs"]
        assert ex["batch"] == {"flexible": False, "min": 1, "max": 1}
    with load_bundle(coreml_bundles[("pcb-aoi", "fp32")]) as b:
        assert b.manifest.extras["coreml"]["batch"] == {"flexible": True, "min": 1, "max": b.manifest.batch.max}
    with load_bundle(coreml_bundles[("yolox-nano", "fp32")]) as b:
        ex = b.manifest.extras["coreml"]
        assert [(o["name"], o["shape"], o["dtype"]) for o in ex["outputs"]] == [
            ("confidence", ["0..", 80], "FLOAT32"), ("coordinates", ["0..", 4], "FLOAT32")]
        assert [i["name"] for i in ex["inputs"]] == ["image", "iouThreshold", "confidenceThreshold"]
        assert ex["stages"] == ["network", "decoding", "nms"]


def test_signed_and_tamper_evident(coreml_bundles, keys, tmp_path):
    src = coreml_bundles[("pcb-aoi", "fp32")]
    with load_bundle(src, TrustStore.load(keys["trust"])) as b:
        assert b.signer
    copy = tmp_path / src.name
    shutil.copytree(src, copy)
    weights = next((copy / "coreml").rglob("weight.bin"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="weight.bin"):
        load_bundle(copy, TrustStore.load(keys["trust"]))


def test_coreml_inspect_cli(coreml_bundles, keys):
    from shadowline.cli import cli as main

    bundle = str(coreml_bundles[("squeezenet", "fp16")])
    result = CliRunner().invoke(main, ["export", "coreml-inspect", bundle, "--trust-store", str(keys["trust"])])
    assert result.exit_code == 0, result.output
    assert "input  image: imageType 224x224 BGR" in result.output
    assert "labels tench, Tinca tinca, goldfish" in result.output and "(1000 in all)" in result.output
    assert "parity fp16 task: pass" in result.output
    result = CliRunner().invoke(main, ["export", "coreml-inspect", bundle, "--json"])
    info = json.loads(result.output)
    pkg = info["packages"][0]
    assert len(pkg["labels"]) == 1000 == len(set(pkg["labels"]))  # "crane" twice in the file, renamed
    assert pkg["metadata"]["license"] == "MIT" and pkg["metadata"]["version"] == "1.0"
    assert json.loads(pkg["metadata"]["shadowline.labels"]) == pkg["labels"]
    assert pkg["parity"][0]["passed"]


def test_coreml_inspect_without_package(tmp_path, keys):
    from shadowline.cli import cli as main
    from tests.conftest import export_preset

    bundle = export_preset("pcb-aoi", tmp_path, None)
    result = CliRunner().invoke(main, ["export", "coreml-inspect", str(bundle)])
    assert result.exit_code != 0
    assert "no Core ML package" in result.output + str(result.exception)


def test_help_text():
    from export.coreml.cli import coreml_inspect_command

    assert coreml_inspect_command.help and "Core ML" in coreml_inspect_command.help


def test_docs_exist():
    doc = Path(__file__).resolve().parents[2] / "docs" / "ios.md"
    text = doc.read_text()
    for needle in ("coreml-inspect", "VNCoreMLRequest", "not compiled", "threshold", "classLabel_probs",
                   "VNRecognizedObjectObservation", "coordinates", "--author"):
        assert needle in text
