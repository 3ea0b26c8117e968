"""A bundle whose decoder cannot read its model's output (as an earlier exporter signed them: a text detector's
probability map declared a YOLOX detector) never reaches a frame: the predictor, `edge predict`, `edge
validate-config` and the device's activation check refuse it with the shape rule's message."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from export.bundle import finish_bundle, npz_bytes
from export.model_check import check_model
from export.reference import build_reference
from runtime.bundle import load_bundle
from runtime.errors import ModelRejected
from runtime.manifest import BatchInfo, Manifest, Provenance, Thresholds
from runtime.predictor import BundleModel
from runtime.processing.spec import InputSpec, OutputSpec
from runtime.runners.onnxrt import OnnxRuntimeRunner
from runtime.signing import load_private_key
from tests.conftest import IMAGES, ROOT
from tests.export import onnx_models

MESSAGE = "output 'prob_map' has shape [2, 1, 96, 96]; decoder 'yolox' (task detect) expects [N, 189, 6]"


@pytest.fixture(scope="module")
def undecodable(tmp_path_factory, keys) -> Path:
    """A signed bundle of the probability-map model whose manifest says YOLOX detector, made without the exporter
    (which refuses it), the way a bundle from before the shape rule looks."""
    work = tmp_path_factory.mktemp("undecodable")
    model = onnx_models.probability_map(work / "db.onnx")
    info = check_model(model)
    spec = InputSpec(name="image", shape=["N", 3, 96, 96], color_order="RGB", resize="stretch", scale=1 / 255)
    staging = work / "staging"
    staging.mkdir()
    shutil.copyfile(model, staging / "model.onnx")
    with OnnxRuntimeRunner(model) as runner:
        reference, _ = build_reference(IMAGES / "photos", spec, runner, 2, 2, 50_000_000)
    (staging / "reference.npz").write_bytes(npz_bytes(reference.to_arrays()))
    manifest = Manifest(name="text-det", version="1.0", task="detect", labels=["text"], input=spec,
                        output=OutputSpec(names=[info.outputs[0][0]], decoder="yolox"),
                        batch=BatchInfo(dynamic=True, max=2), thresholds=Thresholds(), files={},
                        provenance=Provenance(source_model="db.onnx", source_model_sha256="0" * 64,
                                              shadowline_version="0.0", onnx_version="", onnxruntime_version="",
                                              python_version="", created_at=""))
    return finish_bundle(staging, manifest, work / "text-det-v1.0", load_private_key(keys["private"]))[0]


def shadowline(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shadowline.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)


def test_predictor_refuses_it(undecodable, keys):
    from runtime.signing import TrustStore

    with load_bundle(undecodable, TrustStore.load(keys["trust"])) as b:
        with pytest.raises(ModelRejected, match=r"per-pixel map"):
            BundleModel(b)


def test_edge_predict_refuses_it_in_one_line(undecodable):
    r = shadowline("edge", "predict", str(undecodable), str(IMAGES / "photos" / "chelsea.png"))
    assert r.returncode == ModelRejected.exit_code, r.stderr
    assert MESSAGE in r.stderr and "Traceback" not in r.stderr + r.stdout


def test_validate_config_refuses_it(undecodable, keys, tmp_path):
    from tests.edge.conftest import write_config

    release = {"name": "text", "revision": 1, "mode": "shadow",
               "stages": [{"role": "verify", "bundle": str(undecodable)}]}
    cfg = write_config(tmp_path, keys, release)
    r = shadowline("edge", "validate-config", str(cfg))
    assert r.returncode == ModelRejected.exit_code, r.stdout + r.stderr
    assert MESSAGE in r.stderr and "OK" not in r.stdout


def test_activation_check_refuses_it(undecodable):
    from edge.agent.check import prepare

    with pytest.raises(ModelRejected, match=r"expects \[N, 189, 6\]"):
        prepare(undecodable, "onnxruntime")


def test_activation_check_reads_the_devices_own_output_shape(bundles, keys, tmp_path):
    """The check judges the shape this device's model really returns, not only the one recorded at export: here
    the model file was swapped (and the bundle re-signed) for one that outputs a single score."""
    from edge.agent.check import check, prepare
    from runtime.bundle import MANIFEST, SIGNATURE, read_manifest

    staging = tmp_path / "staging"
    shutil.copytree(bundles["pcb-aoi"], staging)
    for name in (MANIFEST, SIGNATURE):
        (staging / name).unlink()
    (staging / "model.fp16.onnx").unlink()
    onnx_models.one_score_pcb(staging / "model.onnx")
    manifest = read_manifest(bundles["pcb-aoi"]).model_copy(update={"parity": []})
    swapped = finish_bundle(staging, manifest, tmp_path / "pcb-aoi-v1.0", load_private_key(keys["private"]))[0]
    model = prepare(swapped, "onnxruntime")
    try:
        with pytest.raises(ModelRejected, match=r"2 labels given, but the model output has 1 classes"):
            check(model, None, [])
    finally:
        model.close()
        model.bundle.close()
