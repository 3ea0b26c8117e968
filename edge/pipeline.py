"""The decision pipeline built from a release: stage `screen` on every frame with one aggressive threshold on its
candidate classes, stage `verify` only on candidates with class-specific thresholds, then pass or flag with the
classes and scores that caused it. A candidate release runs in shadow on the same frames; `PipelineSlot.swap`
replaces the whole pipeline between two frames."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge.predictor import BundleModel, ModelOutput
from export.bundle import Bundle, load_bundle
from export.manifest import Thresholds
from export.signing import TrustStore
from fleet.protocol import ReleaseSpec, StageOutput, StageSpec
from shadowline.errors import BundleError, ConfigError, ShadowlineError


@dataclass(frozen=True)
class StageRule:
    """What counts as a hit in one stage: `classes` (None = every class not ignored) at `thresholds`."""

    role: str
    classes: list[str] | None
    thresholds: Thresholds

    @classmethod
    def from_spec(cls, spec: StageSpec, labels: list[str], defaults: Thresholds) -> StageRule:
        unknown = [c for c in (spec.candidate_classes or []) + [k for k in (spec.thresholds or {}) if k != "default"]
                   if c not in labels]
        if unknown:
            raise ConfigError(f"stage {spec.role} ({spec.bundle}): classes {unknown} are not labels of the bundle")
        if spec.threshold is not None:
            # The screen's one aggressive threshold applies to its candidate classes only.
            return cls(spec.role, spec.candidate_classes, Thresholds(default=spec.threshold, ignore=defaults.ignore))
        if spec.thresholds is not None:
            t = dict(spec.thresholds)
            for k, v in t.items():
                if not 0.0 <= v <= 1.0:
                    raise ConfigError(f"stage {spec.role} ({spec.bundle}): threshold {k}={v} is outside 0..1")
            default = t.pop("default", defaults.default)
            return cls(spec.role, spec.candidate_classes,
                       Thresholds(default=default, per_class=t, ignore=defaults.ignore))
        return cls(spec.role, spec.candidate_classes, defaults)

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"default": self.thresholds.default, **self.thresholds.per_class}
        if self.classes is not None:
            d["classes"] = list(self.classes)
        return d

    def near(self, out: ModelOutput, band: float) -> bool:
        """A score of a counted class lies within ±band×threshold of its threshold (the uncertain frames worth reviewing)."""
        pairs = out.scores.items() if out.scores is not None else ((d.label, d.score) for d in out.detections)
        for label, score in pairs:
            if label in self.thresholds.ignore or (self.classes is not None and label not in self.classes):
                continue
            t = self.thresholds.for_class(label)
            # Relative band: an aggressive screen threshold of 0.1 must not make every near-zero score "near".
            if abs(score - t) <= band * t:
                return True
        return False


@dataclass
class StageResult:
    role: str
    bundle: str
    output: ModelOutput
    hits: list[tuple[str, float]]
    latency_ms: float

    def to_protocol(self) -> StageOutput:
        d = self.output.as_dict()
        return StageOutput(role=self.role, bundle=self.bundle, scores=d.get("scores"), detections=d.get("detections"),
                           hits=[(c, round(s, 6)) for c, s in self.hits], latency_ms=round(self.latency_ms, 3))


@dataclass
class Decision:
    """The outcome of one release on one frame."""

    release: str
    revision: int
    mode: str
    decision: str  # pass | flag
    flagged: list[tuple[str, float]]
    stages: list[StageResult]
    models: dict[str, str]
    thresholds: dict[str, Any]
    near_threshold: bool = False

    @property
    def top(self) -> tuple[str | None, float | None]:
        if not self.stages:
            return None, None
        label, score = self.stages[-1].output.top()
        return (label or None), (score if label else None)

    @property
    def latency_ms(self) -> dict[str, float]:
        d = {s.role: round(s.latency_ms, 3) for s in self.stages}
        d["total"] = round(sum(s.latency_ms for s in self.stages), 3)
        return d


@dataclass
class FrameResult:
    active: Decision
    candidate: Decision | None = None

    @property
    def disagree(self) -> bool:
        if self.candidate is None:
            return False
        a, c = self.active, self.candidate
        return a.decision != c.decision or {k for k, _ in a.flagged} != {k for k, _ in c.flagged}


class Cascade:
    """One release: its stages with their loaded models and rules."""

    def __init__(self, spec: ReleaseSpec, stages: list[tuple[StageSpec, BundleModel, StageRule]], band: float = 0.1):
        roles = [s.role for s, _, _ in stages]
        if roles not in (["screen"], ["verify"], ["screen", "verify"]):
            raise ConfigError(f"release {spec.ref}: stages must be [screen], [verify] or [screen, verify], got {roles}")
        self.spec, self.stages, self.band = spec, stages, band

    @property
    def models(self) -> dict[str, str]:
        return {s.role: m.manifest.bundle_id for s, m, _ in self.stages}

    @property
    def thresholds(self) -> dict[str, Any]:
        return {s.role: r.as_dict() for s, _, r in self.stages}

    def run(self, image: np.ndarray) -> Decision:
        results: list[StageResult] = []
        near = False
        for spec, model, rule in self.stages:
            t0 = time.perf_counter()
            out = model.predict([image])[0]
            hits = out.hits(rule.thresholds, rule.classes)
            results.append(StageResult(spec.role, model.manifest.bundle_id, out, hits,
                                       (time.perf_counter() - t0) * 1000))
            near = near or rule.near(out, self.band)
            if not hits:
                break  # a screen that finds no candidate ends the cascade: verify never sees the frame
        last = results[-1]
        flag = bool(last.hits) and len(results) == len(self.stages)
        return Decision(self.spec.name, self.spec.revision, self.spec.mode, "flag" if flag else "pass",
                        list(last.hits) if flag else [], results, self.models, self.thresholds, near)

    def describe(self) -> dict[str, Any]:
        return {"release": self.spec.ref, "mode": self.spec.mode, "models": self.models,
                "thresholds": self.thresholds, "runners": [m.runner.describe() for _, m, _ in self.stages]}


class Pipeline:
    """The active release plus an optional candidate run in shadow on the same frames."""

    def __init__(self, active: Cascade, candidate: Cascade | None = None, bundles: list[Bundle] | None = None,
                 models: list[BundleModel] | None = None) -> None:
        self.active, self.candidate = active, candidate
        self._bundles, self._models = bundles or [], models or []

    def run(self, image: np.ndarray) -> FrameResult:
        return FrameResult(self.active.run(image), self.candidate.run(image) if self.candidate else None)

    def close(self) -> None:
        for m in self._models:
            m.close()
        for b in self._bundles:
            b.close()

    def describe(self) -> dict[str, Any]:
        return {"active": self.active.describe(), "candidate": self.candidate.describe() if self.candidate else None}


BundleResolver = Callable[[str], Path]


def resolver_for(bundles_dir: Path | None, mapping: dict[str, Path] | None = None) -> BundleResolver:
    """Find a stage's bundle: an explicit mapping (from the agent), a path, or `<bundles_dir>/<id>[.tar]`."""

    def resolve(ref: str) -> Path:
        if mapping and ref in mapping:
            return Path(mapping[ref])
        candidates = [Path(ref)]
        if bundles_dir is not None:
            candidates += [bundles_dir / ref, bundles_dir / f"{ref}.tar"]
        for c in candidates:
            if c.exists():
                return c
        raise BundleError(f"bundle {ref!r} not found (looked at {', '.join(str(c) for c in candidates)})")

    return resolve


def build_pipeline(active: ReleaseSpec, candidate: ReleaseSpec | None, resolve: BundleResolver,
                   trust: TrustStore | None, backend: str = "onnxruntime", runner_options: dict | None = None,
                   band: float = 0.1) -> Pipeline:
    """Load and verify every bundle, load the runners, check the rules; nothing is half-built on failure."""
    bundles: dict[Path, Bundle] = {}
    models: dict[Path, BundleModel] = {}
    try:
        def cascade(spec: ReleaseSpec) -> Cascade:
            stages = []
            for st in spec.stages:
                path = resolve(st.bundle).resolve()
                if path not in bundles:
                    bundles[path] = load_bundle(path, trust)
                    models[path] = BundleModel(bundles[path], backend, **(runner_options or {})).load()
                m = models[path]
                stages.append((st, m, StageRule.from_spec(st, m.manifest.labels, m.manifest.thresholds)))
            return Cascade(spec, stages, band)

        a = cascade(active)
        c = cascade(candidate.model_copy(update={"mode": "shadow"})) if candidate else None
    except BaseException as err:
        for m in models.values():
            m.close()
        for b in bundles.values():
            b.close()
        if isinstance(err, ShadowlineError) or not isinstance(err, Exception):
            raise
        raise BundleError(f"release {active.ref}: cannot build the pipeline ({err})") from err
    return Pipeline(a, c, list(bundles.values()), list(models.values()))


class PipelineSlot:
    """Holds the current pipeline. The worker uses it for one frame at a time; `swap` waits for the frame in
    flight, so a frame never sees half of two releases."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pipeline: Pipeline | None = None
        self.swaps = 0

    @contextmanager
    def use(self) -> Iterator[Pipeline | None]:
        with self._lock:
            yield self._pipeline

    @property
    def current(self) -> Pipeline | None:
        return self._pipeline

    def swap(self, new: Pipeline | None) -> Pipeline | None:
        with self._lock:
            old, self._pipeline = self._pipeline, new
            self.swaps += 1
        return old
