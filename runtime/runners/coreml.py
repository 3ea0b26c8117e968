"""Core ML backend: runs a bundle's `coreml/*.mlpackage` (an ML Program) with coremltools. macOS only: Core ML
prediction needs Apple's framework, so on Linux `load()` raises BackendUnavailable naming the platform.

Feeds are the preprocessed tensors every runner takes. A package whose input is a Core ML *image* carries the
scale/bias inside the program, so the tensor is turned back into 8-bit pixels with the manifest's own
normalisation (exact for pixels that came from uint8 images and a resize that rounds).

A detector's package is a pipeline for Vision (network -> decoding -> NMS). Like every other backend, the runner
returns the network's raw output, which the device decodes with runtime/processing/decode.py; so it runs the
pipeline's first model, the network, with the package's weights.
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import BackendUnavailable, BundleError
from runtime.runners.base import Runner, RunnerError, TensorMeta

COREMLTOOLS_HINT = "pip install 'shadowline[coreml]' (coremltools 9.0)"
_ARRAY_DTYPES = {65568: "float32", 65552: "float16", 65600: "float64", 131104: "int32", 131080: "int8"}
_COLOR_SPACES = {10: "GRAYSCALE", 20: "RGB", 30: "BGR", 40: "GRAYSCALE_FLOAT16"}
COMPUTE_UNITS = ("ALL", "CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE")
WEIGHTS = "Data/com.apple.CoreML/weights"  # inside a .mlpackage
log = logging.getLogger("shadowline.coreml")


@contextlib.contextmanager
def coremltools_quiet() -> Iterator[None]:
    """Keep coremltools' own output off the terminal: on Linux its import logs eight "Failed to load
    _MLModelProxy" warnings (Core ML itself is macOS-only, which the runner says in its own words) and every
    conversion draws tqdm progress bars for its graph passes. Both go to sys.stderr from Python, so they are captured
    and passed to the debug log instead of being lost. Not thread-safe (sys.stderr is process-wide): conversions run
    in the exporting process's main thread."""
    buf = io.StringIO()
    try:
        with contextlib.redirect_stderr(buf):
            yield
    finally:
        text = buf.getvalue().strip()
        if text:
            log.debug("coremltools said: %s", text)


def import_coremltools() -> Any:
    """coremltools, imported quietly, or BackendUnavailable saying what to install."""
    try:
        with coremltools_quiet():
            import coremltools as ct
    except ImportError as err:
        raise BackendUnavailable(f"coremltools is not installed: {COREMLTOOLS_HINT}") from err
    return ct


def find_package(source: Path) -> tuple[Path, Path | None]:
    """(the .mlpackage, the bundle root or None) for a bundle directory, its model.onnx, or a package path."""
    source = Path(source)
    if source.suffix == ".mlpackage":
        root = source.parent.parent if source.parent.name == "coreml" else None
        return source, root if root is not None and (root / "manifest.json").is_file() else None
    root = source.parent if source.is_file() else source
    packages = sorted((root / "coreml").glob("*.mlpackage")) if (root / "coreml").is_dir() else []
    if not packages:
        raise BundleError(f"{root}: the bundle has no coreml/*.mlpackage (export it with --coreml)")
    if len(packages) > 1:
        raise BundleError(f"{root}: several Core ML packages {[p.name for p in packages]}; give one path")
    return packages[0], root


def network_spec(spec: Any) -> Any:
    """The model whose input is the image and whose output is the raw tensor: the package itself, or the first
    model of a pipeline."""
    return spec.pipeline.models[0] if spec.WhichOneof("Type") == "pipeline" else spec


def feature_meta(feature: Any) -> TensorMeta:
    """TensorMeta from a Core ML FeatureDescription (works on Linux from the spec alone)."""
    kind = feature.type.WhichOneof("Type")
    if kind == "multiArrayType":
        arr = feature.type.multiArrayType
        shape: tuple[int | str | None, ...] = tuple(int(d) for d in arr.shape)
        if arr.WhichOneof("ShapeFlexibility") == "shapeRange":
            shape = tuple(int(r.lowerBound) if r.lowerBound == r.upperBound else "N"
                          for r in arr.shapeRange.sizeRanges)
        return TensorMeta(feature.name, shape, _ARRAY_DTYPES.get(arr.dataType, str(arr.dataType)))
    if kind == "imageType":
        img = feature.type.imageType
        space = _COLOR_SPACES.get(img.colorSpace, str(img.colorSpace))
        channels = 1 if space.startswith("GRAYSCALE") else 3
        return TensorMeta(feature.name, ("N", channels, int(img.height), int(img.width)), f"image/{space}")
    if kind == "dictionaryType":
        return TensorMeta(feature.name, ("classes",), "dict")
    return TensorMeta(feature.name, (), kind or "unknown")


def tensor_to_images(x: np.ndarray, input_spec: Any) -> list[np.ndarray]:
    """Undo the manifest's normalisation: NCHW float tensors -> RGB uint8 HWC arrays (what a PIL image holds;
    Core ML converts to BGR itself when the package's image input says BGR)."""
    if x.ndim != 4:
        raise RunnerError(f"coreml runner: image input wants an NCHW/NHWC batch, got shape {x.shape}")
    nhwc = x if input_spec.layout == "NHWC" else np.transpose(x, (0, 2, 3, 1))
    std = np.asarray(input_spec.std, dtype=np.float64)
    mean = np.asarray(input_spec.mean, dtype=np.float64)
    pixels = (nhwc.astype(np.float64) * std + mean) / input_spec.scale
    pixels = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
    if input_spec.color_order == "BGR":
        pixels = pixels[..., ::-1]
    return [np.ascontiguousarray(p) for p in pixels]


class CoreMLRunner(Runner):
    backend = "coreml"

    def __init__(self, model_path: Path | str, compute_units: str = "ALL") -> None:
        super().__init__()
        if compute_units not in COMPUTE_UNITS:
            raise RunnerError(f"coreml runner: compute_units {compute_units!r} is not one of {COMPUTE_UNITS}")
        self.source = Path(model_path)
        self.compute_units = compute_units
        self.package: Path | None = None
        self._model: Any = None
        self._spec: Any = None
        self._manifest: Any = None

    def read_spec(self) -> Any:
        """The package's spec without loading it for prediction (works on Linux)."""
        ct = import_coremltools()
        self.package, root = find_package(self.source)
        if root is not None and self._manifest is None:
            from runtime.bundle import read_manifest

            self._manifest = read_manifest(root)
        with coremltools_quiet():
            self._spec = ct.models.MLModel(str(self.package), skip_model_load=True).get_spec()
        return self._spec

    def _load(self) -> None:
        if sys.platform != "darwin":
            raise BackendUnavailable(
                f"Core ML prediction needs macOS (this is {sys.platform}); run this bundle with the onnxruntime or "
                "tensorrt backend here, or inspect the package with `shadowline export coreml-inspect`")
        ct = import_coremltools()
        spec = self.read_spec()
        assert self.package is not None
        units = getattr(ct.ComputeUnit, self.compute_units)
        with coremltools_quiet():
            if spec.WhichOneof("Type") == "pipeline":
                # pipeline stages name their weight files "{i}-weight.bin"; the network's file is in this folder
                self._model = ct.models.MLModel(network_spec(spec), weights_dir=str(self.package / WEIGHTS),
                                                compute_units=units)
            else:
                self._model = ct.models.MLModel(str(self.package), compute_units=units)

    def _core_ml_name(self, name: str) -> str:
        """The package's own feature name for a feed: the converter names its one image input "image" while every
        runner is fed under the manifest's input name."""
        names = [f.name for f in network_spec(self._spec).description.input]
        if name not in names and len(names) == 1 and self._manifest is not None and name == self._manifest.input.name:
            return names[0]
        return name

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = {a.shape[0] for a in feeds.values()}
        if len(n) != 1:
            raise RunnerError(f"coreml runner: inputs disagree on the batch size {sorted(n)}")
        batch = n.pop()
        per_sample: list[dict[str, Any]] = [{} for _ in range(batch)]
        for meta in self.input_metadata():
            arr, name = feeds[meta.name], self._core_ml_name(meta.name)
            if meta.dtype.startswith("image/"):
                if self._manifest is None:
                    raise BundleError("coreml runner: an image-input package needs its bundle manifest to map "
                                      "tensors back to pixels; give the bundle, not the bare package")
                from PIL import Image

                for i, img in enumerate(tensor_to_images(arr, self._manifest.input)):
                    per_sample[i][name] = Image.fromarray(img, "RGB")
            else:
                for i in range(batch):
                    per_sample[i][name] = arr[i : i + 1]
        tensors: dict[str, list[np.ndarray]] = {}
        dicts: dict[str, list[np.ndarray]] = {}
        for sample in per_sample:
            for name, value in self._model.predict(sample).items():
                if isinstance(value, dict):
                    dicts.setdefault(name, []).append(self._as_array(value))
                elif np.asarray(value).dtype.kind in "fiu":
                    tensors.setdefault(name, []).append(self._as_array(value))
        return self._rename({k: np.concatenate(v) for k, v in tensors.items()},
                            {k: np.concatenate(v) for k, v in dicts.items()})

    def _as_array(self, value: Any) -> np.ndarray:
        if isinstance(value, dict):
            labels = self._manifest.labels if self._manifest is not None else sorted(value)
            return np.asarray([[float(value.get(label, 0.0)) for label in labels]], dtype=np.float32)
        arr = np.asarray(value)
        return arr if arr.ndim else arr.reshape(1)

    def _rename(self, tensors: dict[str, np.ndarray], dicts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Map Core ML outputs to the manifest's output names: exact names first; else the one tensor output (the
        converter's raw output, possibly renamed); else the one probability dictionary (a `probabilities` decoder's
        only score output), as an array in label order. The predicted label string is dropped."""
        outs = {**dicts, **tensors}
        if self._manifest is None:
            return outs
        wanted = self._manifest.output.names
        if all(w in outs for w in wanted):
            return {w: outs[w] for w in wanted}
        if len(wanted) == 1:
            for group in (tensors, dicts):
                if len(group) == 1:
                    return {wanted[0]: next(iter(group.values()))}
        return outs

    def _close(self) -> None:
        self._model = None

    def input_metadata(self) -> list[TensorMeta]:
        """The package's inputs; a single input is listed under the manifest's input name (what callers feed)."""
        spec = network_spec(self._spec if self._spec is not None else self.read_spec())
        metas = [feature_meta(f) for f in spec.description.input]
        if len(metas) == 1 and self._manifest is not None:
            metas = [TensorMeta(self._manifest.input.name, metas[0].shape, metas[0].dtype)]
        return metas

    def output_metadata(self) -> list[TensorMeta]:
        spec = network_spec(self._spec if self._spec is not None else self.read_spec())
        return [feature_meta(f) for f in spec.description.output]

    def describe(self) -> dict:
        return {"backend": self.backend, "package": str(self.package or self.source),
                "compute_units": self.compute_units, "platform": sys.platform}
