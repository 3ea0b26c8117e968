"""CoreMLRunner: refused with a clear message off macOS; package discovery, spec metadata and the tensor->pixel
mapping checked here on real Core ML packages; prediction itself in the `macos` test."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from runtime.bundle import read_manifest
from runtime.errors import BackendUnavailable, BundleError
from runtime.runners.base import RunnerError, TensorMeta
from runtime.runners.coreml import CoreMLRunner, find_package, tensor_to_images

ct = pytest.importorskip("coremltools")


def _image_package(path: Path) -> Path:
    from coremltools.converters.mil import Builder as mb

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 3, 8, 8))])
    def prog(image):  # type: ignore[no-untyped-def]
        return mb.mul(x=mb.reduce_mean(x=image, axes=[2, 3], keep_dims=False), y=np.float32(2.0), name="var_12")

    model = ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS16,
                       inputs=[ct.ImageType(name="image", shape=(1, 3, 8, 8), color_layout=ct.colorlayout.BGR,
                                            scale=1 / 255.0)],
                       outputs=[ct.TensorType(name="var_12", dtype=np.float32)])
    model.save(str(path))
    return path


def _tensor_package(path: Path) -> Path:
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import get_new_symbol

    @mb.program(input_specs=[mb.TensorSpec(shape=(get_new_symbol(), 3, 8, 8))])
    def prog(x):  # type: ignore[no-untyped-def]
        return mb.reduce_max(x=x, axes=[1, 2, 3], keep_dims=False, name="score")

    model = ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS16,
                       inputs=[ct.TensorType(name="x", shape=(ct.RangeDim(1, 8), 3, 8, 8), dtype=np.float32)],
                       outputs=[ct.TensorType(name="score", dtype=np.float32)])
    model.save(str(path))
    return path


@pytest.fixture(scope="module")
def bundle_with_coreml(bundles: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cm") / "pcb-aoi-v1.0"
    shutil.copytree(bundles["pcb-aoi"], root)
    (root / "coreml").mkdir()
    _image_package(root / "coreml" / "pcb-aoi.mlpackage")
    return root


@pytest.fixture(scope="module")
def coreml_exports(coreml_bundles) -> dict[str, Path]:
    """pcb-aoi and yolox-nano exported with --coreml (FP32) by the real exporter (once per run: the Core ML tests
    use the same exports)."""
    pytest.importorskip("export.coreml")
    return {p: coreml_bundles[(p, "fp32")] for p in ("pcb-aoi", "yolox-nano")}


def test_detector_pipeline_lists_its_network(coreml_exports: dict[str, Path]) -> None:
    """A detector's package is a Vision pipeline; the runner describes (and on a Mac runs) its network stage."""
    r = CoreMLRunner(coreml_exports["yolox-nano"])
    assert r.read_spec().WhichOneof("Type") == "pipeline"
    assert r.input_metadata() == [TensorMeta("images", ("N", 3, 416, 416), "image/BGR")]
    assert r.output_metadata() == [TensorMeta("output", (1, 3549, 85), "float32")]
    assert r._core_ml_name("images") == "image"


@pytest.mark.skipif(sys.platform == "darwin", reason="checks the refusal on other platforms")
def test_refused_off_macos_with_a_clear_message(bundle_with_coreml: Path) -> None:
    r = CoreMLRunner(bundle_with_coreml / "model.onnx")
    with pytest.raises(BackendUnavailable, match=f"Core ML prediction needs macOS \\(this is {sys.platform}\\)"):
        r.load()
    assert not r.is_loaded
    with pytest.raises(RunnerError, match="before load"):
        r.infer({"data": np.zeros((1, 3, 8, 8), np.float32)})


def test_spec_metadata_on_any_platform(bundle_with_coreml: Path, tmp_path: Path) -> None:
    r = CoreMLRunner(bundle_with_coreml)
    # The package calls its input "image"; callers feed the manifest's input name ("data"), so that is listed.
    assert r.input_metadata() == [TensorMeta("data", ("N", 3, 8, 8), "image/BGR")]
    assert r._core_ml_name("data") == "image"
    assert r.output_metadata() == [TensorMeta("var_12", (1, 3), "float32")]
    assert r.package == bundle_with_coreml / "coreml" / "pcb-aoi.mlpackage"
    flexible = CoreMLRunner(_tensor_package(tmp_path / "t.mlpackage"))
    assert flexible.input_metadata() == [TensorMeta("x", ("N", 3, 8, 8), "float32")]
    assert flexible.describe()["package"].endswith("t.mlpackage")


def test_find_package(bundle_with_coreml: Path, bundles: dict[str, Path], tmp_path: Path) -> None:
    pkg = bundle_with_coreml / "coreml" / "pcb-aoi.mlpackage"
    assert find_package(bundle_with_coreml / "model.onnx") == (pkg, bundle_with_coreml)
    assert find_package(pkg) == (pkg, bundle_with_coreml)
    with pytest.raises(BundleError, match="export it with --coreml"):
        find_package(bundles["squeezenet"])
    two = tmp_path / "b"
    shutil.copytree(bundle_with_coreml, two)
    shutil.copytree(pkg, two / "coreml" / "second.mlpackage")
    with pytest.raises(BundleError, match="several Core ML packages"):
        find_package(two)


def test_output_renamed_to_the_manifest_name(bundle_with_coreml: Path) -> None:
    r = CoreMLRunner(bundle_with_coreml)
    r.read_spec()
    out = r._rename({"var_12": np.ones((1, 2), np.float32)}, {})
    assert list(out) == ["loss"]  # the manifest's output name for the PCB model
    # A classifier package: probability dictionary plus the raw tensor under a renamed feature: the tensor wins.
    both = r._rename({"loss_1": np.full((1, 2), 3.0, np.float32)}, {"probabilities": np.ones((1, 2), np.float32)})
    assert list(both) == ["loss"] and both["loss"][0, 0] == 3.0
    only_probs = r._rename({}, {"probabilities": np.ones((1, 2), np.float32)})
    assert list(only_probs) == ["loss"]
    labels = read_manifest(bundle_with_coreml).labels
    scores = {label: (i + 1) / 10 for i, label in enumerate(labels)}
    probs = r._as_array(dict(reversed(scores.items())))  # a classifier's probability dictionary, any order
    assert probs.tolist() == [[np.float32(scores[label]) for label in labels]]


@pytest.mark.parametrize("order", ["RGB", "BGR"])
def test_tensor_back_to_pixels(bundles: dict[str, Path], order: str) -> None:
    spec = read_manifest(bundles["squeezenet"]).input.model_copy(update={"color_order": order})
    rgb = np.random.default_rng(0).integers(0, 256, size=(2, 224, 224, 3), dtype=np.uint8)
    model_order = rgb if order == "RGB" else rgb[..., ::-1]
    x = (model_order.astype(np.float32) * spec.scale - np.float32(spec.mean)) / np.float32(spec.std)
    images = tensor_to_images(np.transpose(x, (0, 3, 1, 2)), spec)
    assert len(images) == 2 and images[0].dtype == np.uint8 and images[0].shape == (224, 224, 3)
    np.testing.assert_array_equal(np.stack(images), rgb)
    with pytest.raises(RunnerError, match="NCHW"):
        tensor_to_images(x[0], spec)


def test_bad_compute_units() -> None:
    with pytest.raises(RunnerError, match="compute_units"):
        CoreMLRunner("x", compute_units="GPU")


@pytest.mark.macos
@pytest.mark.parametrize("preset", ["pcb-aoi", "yolox-nano"])
def test_predict_matches_reference_on_macos(coreml_exports: dict[str, Path], preset: str) -> None:
    """On a Mac: the exported Core ML package (of a detector: its pipeline's network stage), run by the runner,
    agrees with reference.npz."""
    from export.reference import run_batched
    from runtime.bundle import load_bundle
    from runtime.parity import Reference, compare

    with load_bundle(coreml_exports[preset]) as b, CoreMLRunner(b.model_path) as r:
        ref = Reference.from_arrays(b.reference())
        outs = run_batched(r, b.manifest.input.name, ref.inputs, 1)
        check = compare(b.manifest, ref, outs, artifact="coreml", kind="coreml", precision="fp32")
        assert check.passed, check.detail
        assert r.describe()["platform"] == "darwin"


class _ExecutorModel:
    """Stands in for macOS Core ML prediction (which cannot run here): evaluates the saved package with the Core ML
    exporter's numpy reference executor, taking PIL images as Core ML does (RGB pixels, converted to the package's
    colour layout) and returning one label and one probability dictionary per sample, like MLModel.predict."""

    def __init__(self, package: Path | None = None, spec: object = None, weights_dir: str | None = None) -> None:
        from coremltools.converters.mil.frontend.milproto.load import load

        from export.coreml.executor import Executor, load_program

        if package is not None:
            spec, prog = load_program(package)
        else:  # a model given as a spec (the network of a detector pipeline) with its weights folder
            prog = load(spec, spec.specificationVersion, file_weights_dir=weights_dir)  # type: ignore[attr-defined]
        self.executor = Executor(prog)
        self.bgr = spec.description.input[0].type.imageType.colorSpace == 30  # type: ignore[attr-defined]

    def predict(self, sample: dict) -> dict:
        feeds = {}
        for name, image in sample.items():
            px = np.asarray(image, dtype=np.float32)
            px = px[..., ::-1] if self.bgr else px
            feeds[name] = np.ascontiguousarray(np.transpose(px, (2, 0, 1))[None])
        out = self.executor.outputs(self.executor.run(feeds))
        return {k: (v[0] if isinstance(v, list) else v) for k, v in out.items()}


# YOLOX on two images only: the numpy executor takes ~4 s per 416x416 image.
@pytest.mark.parametrize("preset,samples", [("pcb-aoi", None), ("yolox-nano", 2)])
def test_runner_on_exported_packages_with_a_reference_executor(coreml_exports: dict[str, Path],
                                                               monkeypatch: pytest.MonkeyPatch, preset: str,
                                                               samples: int | None) -> None:
    """The runner's own work on Linux, with packages from the real Core ML exporter: the manifest input name fed
    to the package's "image" input, tensors turned back into pixels, outputs mapped to the manifest's names; of a
    detector's Vision pipeline, the network stage (raw output, decoded by the device like any backend's)."""
    from export.reference import run_batched
    from runtime.bundle import load_bundle
    from runtime.parity import Reference, compare

    path = coreml_exports[preset]
    monkeypatch.setattr(sys, "platform", "darwin")
    real_mlmodel = ct.models.MLModel

    def mlmodel(model: object, skip_model_load: bool = False, weights_dir: str | None = None, **kw: object):
        if skip_model_load:
            return real_mlmodel(model, skip_model_load=True)
        if isinstance(model, str):
            return _ExecutorModel(Path(model))
        return _ExecutorModel(spec=model, weights_dir=weights_dir)

    monkeypatch.setattr(ct.models, "MLModel", mlmodel)
    with load_bundle(path) as b, CoreMLRunner(b.model_path) as r:
        assert [m.name for m in r.input_metadata()] == [b.manifest.input.name]
        full = Reference.from_arrays(b.reference())
        n = samples or len(full.names)
        ref = Reference(full.inputs[:n], {k: v[:n] for k, v in full.outputs.items()}, full.names[:n],
                        full.transforms[:n])
        outs = run_batched(r, b.manifest.input.name, ref.inputs, 2 if b.manifest.batch.dynamic else 1)
        assert list(outs) == b.manifest.output.names
        elementwise = {"max_abs": 1e-4} if b.manifest.task == "classify" else {"max_rel_to_peak": 1e-3}
        check = compare(b.manifest, ref, outs, artifact="coreml", kind="coreml", precision="fp32",
                        elementwise=elementwise)
    assert check.passed, check.detail
    if b.manifest.task == "detect":
        assert check.stats["detections_matched"] == check.stats["detections_reference"] > 0
