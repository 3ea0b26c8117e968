"""A loaded bundle: images in, per-class scores or detections out, through any runner."""

from __future__ import annotations

import time
from collections.abc import ItemsView, Iterator, Mapping, ValuesView
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from runtime.bundle import Bundle
from runtime.manifest import Thresholds
from runtime.processing.decode import Detection, decode_classification, decode_detections
from runtime.processing.preprocess import Transform, preprocess
from runtime.processing.shapes import check_bundle_output
from runtime.runners import create_runner
from runtime.runners.base import Runner
from runtime.variants import BY_NAME, Choice, candidates, choose_variant


class ScoreMap(Mapping[str, float]):
    """One frame's per-class scores: a read-only mapping over the model's labels (a tuple shared by every frame) and
    the frame's score vector. Building a dict per frame cost 110 us for an ImageNet classifier's 1000 classes (the
    daemon's inference thread, holding the GIL); here the labels are iterated as they are, a score is looked up by
    its label's position, and a dict is made only if a caller asks for every item."""

    __slots__ = ("labels", "vector", "_index", "_dict")

    def __init__(self, labels: tuple[str, ...], vector: np.ndarray, index: Mapping[str, int] | None = None) -> None:
        if len(labels) != len(vector):
            raise ValueError(f"{len(labels)} labels for {len(vector)} scores")
        self.labels, self.vector = labels, vector
        self._index = index
        self._dict: dict[str, float] | None = None

    def _positions(self) -> Mapping[str, int]:
        if self._index is None:
            self._index = {k: i for i, k in enumerate(self.labels)}
        return self._index

    def __getitem__(self, label: str) -> float:
        return float(self.vector[self._positions()[label]])

    def __iter__(self) -> Iterator[str]:
        return iter(self.labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __contains__(self, label: object) -> bool:
        return label in self._positions()

    def as_dict(self) -> dict[str, float]:
        if self._dict is None:
            self._dict = dict(zip(self.labels, self.vector.tolist()))
        return self._dict

    def items(self) -> ItemsView[str, float]:
        return self.as_dict().items()

    def values(self) -> ValuesView[float]:
        return self.as_dict().values()

    def __eq__(self, other: object) -> bool:
        return self.as_dict() == (other.as_dict() if isinstance(other, ScoreMap) else other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"ScoreMap({self.as_dict()!r})"


@dataclass
class ModelOutput:
    scores: Mapping[str, float] | None = None  # classify
    detections: list[Detection] = field(default_factory=list)  # detect
    preprocess_ms: float = 0.0
    infer_ms: float = 0.0
    # classify: the same scores as a float vector in label order, for code that works on all classes at once
    vector: np.ndarray | None = field(default=None, repr=False, compare=False)
    variant: str = ""  # the model variant that ran (runtime.variants), recorded with every prediction

    def top(self) -> tuple[str, float]:
        if self.scores is not None and self.vector is not None and len(self.vector) == len(self.scores):
            i = int(np.argmax(self.vector))  # the first maximum, as max() over the dict gives
            if isinstance(self.scores, ScoreMap):
                return self.scores.labels[i], self.scores[self.scores.labels[i]]
            label = next(iter(self.scores)) if i == 0 else list(self.scores)[i]
            return label, self.scores[label]
        if self.scores is not None:
            label = max(self.scores, key=self.scores.__getitem__)
            return label, self.scores[label]
        if self.detections:
            d = max(self.detections, key=lambda d: d.score)
            return d.label, d.score
        return "", 0.0

    def hits(self, thresholds: Thresholds, classes: list[str] | None = None) -> list[tuple[str, float]]:
        """(class, score) pairs at or above their class threshold; `classes` limits which may count."""
        found: dict[str, float] = {}
        pairs = self.scores.items() if self.scores is not None else ((d.label, d.score) for d in self.detections)
        for label, score in pairs:
            if label in thresholds.ignore or (classes is not None and label not in classes):
                continue
            if score >= thresholds.for_class(label):
                found[label] = max(found.get(label, 0.0), score)
        return sorted(found.items(), key=lambda kv: -kv[1])

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"preprocess_ms": round(self.preprocess_ms, 3), "infer_ms": round(self.infer_ms, 3),
                             "variant": self.variant}
        if self.scores is not None:
            d["scores"] = {k: round(v, 6) for k, v in self.scores.items()}
        else:
            d["detections"] = [x.as_dict() for x in self.detections]
        return d


class BundleModel:
    """Holds a bundle and its runner; `predict` takes BGR uint8 images.

    `precision` picks the model variant (runtime.variants): None or "fp32" runs model.onnx as before; "fp16"/"int8"
    run that variant; "auto" runs the fastest variant that passes parity on this device, chosen at `load()`. For
    TensorRT the precision goes to the engine loader. `variant` names what runs; every output carries it."""

    def __init__(self, bundle: Bundle, backend: str = "onnxruntime", runner: Runner | None = None,
                 precision: str | None = None, timings: Mapping[str, float] | None = None,
                 **runner_options: Any) -> None:
        self.bundle = bundle
        self.manifest = bundle.manifest
        check_bundle_output(bundle)  # a bundle no decoder can read never reaches a frame
        self.backend, self.precision, self.timings = backend, precision, timings
        self.choice: Choice | None = None
        self.variant = "fp32"
        if backend == "tensorrt" and precision is not None:
            runner_options["precision"] = precision
        self._make_runner = lambda path: create_runner(backend, path, **runner_options)
        if runner is None and backend == "onnxruntime" and precision not in (None, "fp32", "auto"):
            self.variant = candidates(self.manifest, precision)[0].name
        self.runner = runner or self._make_runner(self.bundle.path(BY_NAME[self.variant].file))
        # identifies this model's preprocessing: two models with the same key take the same input tensor
        self.input_key = self.manifest.input.model_dump_json()
        self._labels = tuple(self.manifest.labels)  # shared by every frame's ScoreMap
        self._label_index = {k: i for i, k in enumerate(self._labels)}

    def load(self) -> BundleModel:
        if self.backend == "onnxruntime" and self.precision == "auto" and self.choice is None:
            self.choice = choose_variant(self.bundle, "auto", self._make_runner, self.timings)
            self.runner, self.variant = self.choice.runner, self.choice.variant.name
        self.runner.load()
        if self.backend == "tensorrt":
            self.variant = f"tensorrt-{self.runner.describe().get('precision', self.precision or 'auto')}"
        return self

    def close(self) -> None:
        self.runner.close()

    @property
    def max_batch(self) -> int:
        return self.manifest.batch.max if self.manifest.batch.dynamic else 1

    def prepare(self, image: np.ndarray) -> Prepared:
        """Preprocess one BGR image for this model (thread-safe: the daemon's decode workers call it)."""
        t0 = time.perf_counter()
        x, transform = preprocess(image, self.manifest.input)
        return Prepared(x, transform, (time.perf_counter() - t0) * 1000)

    def predict(self, images: list[np.ndarray]) -> list[ModelOutput]:
        return self.predict_prepared([self.prepare(im) for im in images])

    def predict_prepared(self, items: list[Prepared]) -> list[ModelOutput]:
        """Run preprocessed inputs, in chunks of the model's largest batch."""
        m = self.manifest
        results: list[ModelOutput] = []
        for i in range(0, len(items), self.max_batch):
            chunk = items[i : i + self.max_batch]
            x = chunk[0].tensor[None] if len(chunk) == 1 else np.stack([p.tensor for p in chunk])
            t1 = time.perf_counter()
            raw = self.runner.infer({m.input.name: x})[m.output.names[0]]
            inf_ms = (time.perf_counter() - t1) * 1000 / len(chunk)
            if m.task == "classify":
                scores = decode_classification(raw, m.output.decoder).astype(np.float64)
                results += [ModelOutput(scores=ScoreMap(self._labels, s, self._label_index), preprocess_ms=p.ms,
                                        infer_ms=inf_ms, vector=s, variant=self.variant)
                            for s, p in zip(scores, chunk)]
            else:
                dets = decode_detections(raw, (m.input.height, m.input.width), m.output, m.labels,
                                         [p.transform for p in chunk])
                results += [ModelOutput(detections=d, preprocess_ms=p.ms, infer_ms=inf_ms, variant=self.variant)
                            for d, p in zip(dets, chunk)]
        return results


@dataclass
class Prepared:
    """One image preprocessed for a model: its input tensor (no batch dimension) and the way back to the image."""

    tensor: np.ndarray
    transform: Transform
    ms: float = 0.0
