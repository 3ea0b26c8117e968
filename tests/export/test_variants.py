"""Choosing a model variant on the device: an explicit precision runs its variant or is refused by name; `auto`
runs the fastest variant that passes parity on this device; every prediction records the variant that ran."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from edge.pipeline import build_pipeline, resolver_for
from export.bundle import finish_bundle
from fleet.protocol import ReleaseSpec
from runtime.bundle import MANIFEST, SIGNATURE, load_bundle, read_manifest
from runtime.errors import ConfigError
from runtime.predictor import BundleModel
from runtime.processing.image import read_image
from runtime.runners import create_runner
from runtime.signing import TrustStore, load_private_key
from runtime.variants import choose_variant, usable, variant_precision
from tests.conftest import IMAGES
from tests.export import onnx_models

PCB_IMAGES = sorted((IMAGES / "pcb_winml").iterdir())


def ort(path: Path):
    return create_runner("onnxruntime", path, threads=1)


def test_usable_variants_are_the_ones_that_passed_export_parity(bundles):
    manifest = read_manifest(bundles["pcb-aoi"])
    ok, why = usable(manifest)
    assert [v.name for v in ok] == ["fp32", "fp16"]
    assert why["int8"] == "the bundle has no model.int8.onnx"
    failed = manifest.model_copy(update={"parity": [c.model_copy(update={"passed": False})
                                                    for c in manifest.parity]})
    assert [v.name for v in usable(failed)[0]] == ["fp32"]
    assert "no passing parity check" in usable(failed)[1]["fp16"]


def test_explicit_precision_runs_that_variant_and_records_it(bundles):
    with load_bundle(bundles["pcb-aoi"]) as b:
        model = BundleModel(b, precision="fp16").load()
        try:
            assert model.runner.describe()["model"].endswith("model.fp16.onnx")
            out = model.predict([read_image(PCB_IMAGES[0])])[0]
            assert out.variant == "fp16" and out.as_dict()["variant"] == "fp16"
        finally:
            model.close()
        with pytest.raises(ConfigError, match=r"no int8 variant to run \(int8-cpu: the bundle has no "
                                              r"model.int8.cpu.onnx; int8: the bundle has no model.int8.onnx\)"):
            BundleModel(b, precision="int8")
        assert BundleModel(b).variant == "fp32"


@pytest.mark.parametrize("timings,expected", [({"fp32": 5.0, "fp16": 2.0}, "fp16"),
                                              ({"fp32": 1.0, "fp16": 2.0}, "fp32")])
def test_auto_runs_the_fastest_by_the_given_timings(bundles, timings, expected):
    with load_bundle(bundles["pcb-aoi"]) as b:
        choice = choose_variant(b, "auto", ort, timings=timings)
        try:
            assert choice.variant.name == expected and choice.median_ms == timings and choice.rejected == {}
            assert choice.runner.is_loaded
        finally:
            choice.runner.close()


def test_auto_measures_on_this_device_when_no_timings_are_given(bundles):
    with load_bundle(bundles["squeezenet"]) as b:
        model = BundleModel(b, precision="auto", threads=1).load()
        try:
            assert model.choice is not None and set(model.choice.median_ms) == {"fp32", "fp16"}
            assert all(ms > 0 for ms in model.choice.median_ms.values())
            fastest = min(model.choice.median_ms, key=model.choice.median_ms.__getitem__)
            assert model.variant == fastest == model.choice.variant.name
            assert model.predict([read_image(IMAGES / "photos" / "chelsea.png")])[0].variant == fastest
        finally:
            model.close()


@pytest.fixture
def lying_fp16(bundles, keys, tmp_path) -> Path:
    """A signed bundle whose model.fp16.onnx was swapped after export for a model that gives one score: its
    manifest still says the FP16 check passed, as a bundle altered before signing would."""
    staging = tmp_path / "staging"
    shutil.copytree(bundles["pcb-aoi"], staging)
    for name in (MANIFEST, SIGNATURE):
        (staging / name).unlink()
    onnx_models.one_score_pcb(staging / "model.fp16.onnx")
    manifest = read_manifest(bundles["pcb-aoi"])
    return finish_bundle(staging, manifest, tmp_path / "pcb-aoi-v1.0", load_private_key(keys["private"]))[0]


def test_auto_never_runs_a_variant_that_fails_parity_on_the_device(lying_fp16):
    with load_bundle(lying_fp16) as b:
        choice = choose_variant(b, "auto", ort, timings={"fp32": 9.0, "fp16": 1.0})
        try:
            assert choice.variant.name == "fp32"
            assert choice.rejected["fp16"] == ("disagrees with the reference on this device: output 'loss' has "
                                               "shape [4, 1], the reference [4, 2]")
        finally:
            choice.runner.close()


def test_every_prediction_record_names_its_variant(bundles, keys):
    release = {"name": "pcb", "revision": 1, "mode": "shadow",
               "stages": [{"role": "screen", "bundle": str(bundles["pcb-aoi"]), "candidate_classes": ["Defective"],
                           "threshold": 0.5, "precision": "fp16"}]}
    pipeline = build_pipeline(ReleaseSpec.model_validate(release), None, resolver_for(None),
                              TrustStore.load(keys["trust"]), runner_options={"threads": 1})
    try:
        decision = pipeline.run(read_image(PCB_IMAGES[0])).active
        assert [s.to_protocol().variant for s in decision.stages] == ["fp16"]
    finally:
        pipeline.close()


def test_variant_precision_of_recorded_names():
    assert [variant_precision(n) for n in ("fp32", "fp16", "int8-cpu", "int8", "tensorrt-fp16", "odd")] == \
        ["fp32", "fp16", "int8", "int8", "fp16", "fp32"]
