"""The decision pipeline built from a release: stage `screen` on every frame with one aggressive threshold on its
candidate classes, stage `verify` only on candidates with class-specific thresholds, then pass or flag with the
classes and scores that caused it. A candidate release runs in shadow on the same frames; `PipelineSlot.swap`
replaces the whole pipeline between two frames.

Frames go through in small batches (`run_many`): the daemon has already preprocessed each frame for the first stage
(`Pipeline.prepare`, in a lane or on a decode worker), stage 1 runs frame by frame (or batched where the model has a
dynamic batch), and stage 2 runs once over the candidates that waited together. A verify stage that stalls or fails does
not hold the line: past `verify_timeout_s` its frames are flagged for review with the reason (`degraded`)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from fleet.protocol import ReleaseSpec, StageOutput, StageSpec
from runtime.bundle import Bundle, load_bundle
from runtime.errors import BundleError, ConfigError, ShadowlineError
from runtime.manifest import Thresholds
from runtime.predictor import BundleModel, ModelOutput, Prepared, ScoreMap
from runtime.signing import TrustStore


@dataclass
class StageRule:
    """What counts as a hit in one stage: `classes` (None = every class not ignored) at `thresholds`."""

    role: str
    classes: list[str] | None
    thresholds: Thresholds
    _vectors: tuple[tuple[str, ...], np.ndarray, np.ndarray] | None = field(default=None, repr=False, compare=False)

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

    def counts(self, label: str) -> bool:
        return label not in self.thresholds.ignore and (self.classes is None or label in self.classes)

    def _arrays(self, labels: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
        if self._vectors is None or (self._vectors[0] is not labels and self._vectors[0] != labels):
            thr = np.array([self.thresholds.for_class(x) for x in labels], dtype=np.float64)
            mask = np.array([self.counts(x) for x in labels], dtype=bool)
            self._vectors = (labels, thr, mask)
        return self._vectors[1], self._vectors[2]

    def evaluate(self, out: ModelOutput, band: float) -> tuple[list[tuple[str, float]], bool]:
        """(hits: counted classes at or over their threshold, best first; near: a counted class scored within
        ±band×threshold of its threshold, the uncertain frames worth reviewing)."""
        if out.scores is not None:
            # Vectorised: an ImageNet classifier has 1000 classes, and this runs on every frame.
            labels = out.scores.labels if isinstance(out.scores, ScoreMap) else tuple(out.scores)
            s = out.vector if out.vector is not None and len(out.vector) == len(labels) else \
                np.fromiter(out.scores.values(), dtype=np.float64, count=len(labels))
            thr, mask = self._arrays(labels)
            idx = np.nonzero(mask & (s >= thr))[0]
            hits = sorted(((labels[i], float(s[i])) for i in idx), key=lambda kv: -kv[1])
            near = bool(np.any(mask & (np.abs(s - thr) <= band * thr)))
            return hits, near
        found: dict[str, float] = {}
        near = False
        for d in out.detections:
            if not self.counts(d.label):
                continue
            t = self.thresholds.for_class(d.label)
            if d.score >= t:
                found[d.label] = max(found.get(d.label, 0.0), d.score)
            # Relative band: an aggressive screen threshold of 0.1 must not make every near-zero score "near".
            near = near or abs(d.score - t) <= band * t
        return sorted(found.items(), key=lambda kv: -kv[1]), near


# A classifier with more labels than this records its counted classes plus the top few, not every score: 1000
# ImageNet scores would make each record ~25 kB in the store, the outbox and every MQTT batch.
FULL_SCORES_MAX = 20
TOP_K = 5


@dataclass
class StageResult:
    role: str
    bundle: str
    output: ModelOutput
    hits: list[tuple[str, float]]
    latency_ms: float
    rule: StageRule | None = None

    def recorded_scores(self) -> dict[str, float] | None:
        scores = self.output.scores
        if scores is None:
            return None
        if len(scores) <= FULL_SCORES_MAX:
            return {k: round(v, 6) for k, v in scores.items()}
        v = self.output.vector
        if v is not None and len(v) == len(scores):
            labels = scores.labels if isinstance(scores, ScoreMap) else list(scores)
            keep = {labels[i] for i in np.argpartition(-v, TOP_K)[:TOP_K]}
        else:
            keep = set(sorted(scores, key=scores.__getitem__, reverse=True)[:TOP_K])
        if self.rule is not None and self.rule.classes is not None:
            keep |= set(self.rule.classes)
        keep |= {c for c, _ in self.hits}
        return {k: round(scores[k], 6) for k in sorted(keep, key=scores.__getitem__, reverse=True)}

    def to_protocol(self) -> StageOutput:
        dets = [d.as_dict() for d in self.output.detections] if self.output.scores is None else None
        return StageOutput(role=self.role, bundle=self.bundle, scores=self.recorded_scores(), detections=dets,
                           hits=[(c, round(s, 6)) for c, s in self.hits], latency_ms=round(self.latency_ms, 3),
                           variant=self.output.variant or None)


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
    degraded: str | None = None  # the verify stage timed out, is stalled or failed: flagged for review

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
    candidate_error: str | None = None  # the candidate failed on this frame; the active decision stands

    @property
    def disagree(self) -> bool:
        if self.candidate is None:
            return False
        a, c = self.active, self.candidate
        return a.decision != c.decision or {k for k, _ in a.flagged} != {k for k, _ in c.flagged}


@dataclass
class FrameInput:
    """A decoded frame and its input tensors, prepared per model preprocessing (`BundleModel.input_key`)."""

    image: np.ndarray
    prepared: dict[str, Prepared] = field(default_factory=dict)

    def for_model(self, model: BundleModel) -> Prepared:
        p = self.prepared.get(model.input_key)
        if p is None:
            p = self.prepared[model.input_key] = model.prepare(self.image)
        return p


T = TypeVar("T")


class StageGuard:
    """Runs a stage's model calls on one thread of their own, with a deadline. A call past `timeout_s` leaves the
    frames it was given degraded ("verify_timeout"); while it is still running, later frames are degraded at once
    ("verify_stalled") instead of queueing behind it; an exception degrades them ("verify_failed")."""

    def __init__(self, timeout_s: float, name: str) -> None:
        self.timeout_s = timeout_s
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=name)
        self._stuck: Future | None = None

    @property
    def stalled(self) -> bool:
        """A call past its deadline is still running."""
        return self._stuck is not None and not self._stuck.done()

    def call(self, fn: Callable[[], T]) -> tuple[T | None, str | None]:
        """(fn's result, None), or (None, reason) when the stage is degraded."""
        if self._stuck is not None:
            if not self._stuck.done():
                return None, "verify_stalled"
            self._stuck = None
        fut = self._pool.submit(fn)
        try:
            return fut.result(self.timeout_s), None
        except FutureTimeout:
            self._stuck = fut
            return None, "verify_timeout"
        except Exception as err:  # the model failed on these frames: flagged for review, never passed
            return None, f"verify_failed: {type(err).__name__}: {err}"

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class Cascade:
    """One release: its stages with their loaded models and rules."""

    def __init__(self, spec: ReleaseSpec, stages: list[tuple[StageSpec, BundleModel, StageRule]], band: float = 0.1,
                 verify_timeout_s: float | None = None):
        roles = [s.role for s, _, _ in stages]
        if roles not in (["screen"], ["verify"], ["screen", "verify"]):
            raise ConfigError(f"release {spec.ref}: stages must be [screen], [verify] or [screen, verify], got {roles}")
        self.spec, self.stages, self.band = spec, stages, band
        self.guard = StageGuard(verify_timeout_s, f"verify:{spec.ref}") if verify_timeout_s else None
        # every decision carries these; built once (the stages and rules do not change), shared, never mutated
        self._models: dict[str, str] = {s.role: m.manifest.bundle_id for s, m, _ in self.stages}
        self._thresholds: dict[str, Any] = {s.role: r.as_dict() for s, _, r in self.stages}

    @property
    def models(self) -> dict[str, str]:
        return self._models

    @property
    def thresholds(self) -> dict[str, Any]:
        return self._thresholds

    @property
    def first_model(self) -> BundleModel:
        return self.stages[0][1]

    def run(self, image: np.ndarray) -> Decision:
        return self.run_many([FrameInput(image)])[0]

    def _predict(self, model: BundleModel, frames: list[FrameInput]) -> tuple[list[ModelOutput], list[float]]:
        """Outputs and per-frame stage latency (its preprocessing, wherever it ran, plus its share of the run)."""
        prepared = [f.for_model(model) for f in frames]
        t0 = time.perf_counter()
        outs = model.predict_prepared(prepared)
        share = (time.perf_counter() - t0) * 1000 / len(frames)
        return outs, [p.ms + share for p in prepared]

    def run_many(self, frames: list[FrameInput]) -> list[Decision]:
        """Decide a batch of frames; stage 2 runs once over the candidates among them."""
        results: list[list[StageResult]] = [[] for _ in frames]
        near = [False] * len(frames)
        degraded: dict[int, str] = {}
        pending = list(range(len(frames)))
        for spec, model, rule in self.stages:
            if not pending:
                break
            batch = [frames[i] for i in pending]
            if spec.role == "verify" and self.guard is not None:
                got, why = self.guard.call(lambda m=model, b=batch: self._predict(m, b))  # type: ignore[misc]
                if got is None:
                    for i in pending:
                        degraded[i] = why or "verify_failed"
                    break
                t_outs, lat = got
            else:
                t_outs, lat = self._predict(model, batch)
            nxt = []
            for i, out, ms in zip(pending, t_outs, lat):
                hits, is_near = rule.evaluate(out, self.band)
                results[i].append(StageResult(spec.role, model.manifest.bundle_id, out, hits, ms, rule))
                near[i] = near[i] or is_near
                if hits:
                    nxt.append(i)  # a screen that finds no candidate ends the cascade: verify never sees the frame
            pending = nxt
        decisions: list[Decision] = []
        for i, stages in enumerate(results):
            if i in degraded:
                decisions.append(Decision(self.spec.name, self.spec.revision, self.spec.mode, "flag", [], stages,
                                    self.models, self.thresholds, near[i], degraded[i]))
                continue
            last = stages[-1]
            flag = bool(last.hits) and len(stages) == len(self.stages)
            decisions.append(Decision(self.spec.name, self.spec.revision, self.spec.mode, "flag" if flag else "pass",
                                      list(last.hits) if flag else [], stages, self.models, self.thresholds, near[i]))
        return decisions

    def close(self) -> None:
        if self.guard is not None:
            self.guard.close()

    def describe(self) -> dict[str, Any]:
        return {"release": self.spec.ref, "mode": self.spec.mode, "models": self.models,
                "thresholds": self.thresholds, "runners": [m.runner.describe() for _, m, _ in self.stages]}


class Pipeline:
    """The active release plus an optional candidate run in shadow on the same frames."""

    def __init__(self, active: Cascade, candidate: Cascade | None = None, bundles: list[Bundle] | None = None,
                 models: list[BundleModel] | None = None, paths: dict[str, Path] | None = None) -> None:
        self.active, self.candidate = active, candidate
        self._bundles, self._models = bundles or [], models or []
        self.paths = paths or {}  # stage bundle ref -> resolved bundle path (what the standby is matched on)

    def prepare(self, image: np.ndarray) -> FrameInput:
        """Preprocess for the first stage of both releases (a lane or a decode worker calls this, before inference)."""
        frame = FrameInput(image)
        for c in (self.active, self.candidate):
            if c is not None:
                frame.for_model(c.first_model)
        return frame

    def run(self, image: np.ndarray) -> FrameResult:
        return self.run_many([FrameInput(image)])[0]

    def run_many(self, frames: list[FrameInput]) -> list[FrameResult]:
        results = [FrameResult(d) for d in self.active.run_many(frames)]
        if self.candidate is not None:
            try:
                for r, c in zip(results, self.candidate.run_many(frames)):
                    r.candidate = c
            except Exception as err:  # a challenger in shadow must never cost the champion its frame
                why = f"candidate {self.candidate.spec.ref} failed: {type(err).__name__}: {err}"
                for r in results:
                    r.candidate, r.candidate_error = None, why
        return results

    def matches(self, active: ReleaseSpec, candidate: ReleaseSpec | None, paths: dict[str, Path]) -> bool:
        """This pipeline is exactly `active` (+ `candidate`) on the same bundle files."""
        want_cand = candidate.model_copy(update={"mode": "shadow"}) if candidate else None
        have_cand = self.candidate.spec if self.candidate else None
        return self.active.spec == active and have_cand == want_cand and self.paths == paths

    def close(self) -> None:
        for c in (self.active, self.candidate):
            if c is not None:
                c.close()
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


def resolve_paths(active: ReleaseSpec, candidate: ReleaseSpec | None, resolve: BundleResolver) -> dict[str, Path]:
    """Every stage's bundle ref -> its bundle path (raises BundleError when one cannot be found)."""
    return {st.bundle: resolve(st.bundle).resolve() for r in (active, candidate) if r for st in r.stages}


def build_pipeline(active: ReleaseSpec, candidate: ReleaseSpec | None, resolve: BundleResolver,
                   trust: TrustStore | None, backend: str = "onnxruntime", runner_options: dict | None = None,
                   band: float = 0.1, verify_timeout_s: float | None = None) -> Pipeline:
    """Load and verify every bundle, load the runners, check the rules; nothing is half-built on failure."""
    bundles: dict[Path, Bundle] = {}
    models: dict[tuple[Path, str | None], BundleModel] = {}
    paths: dict[str, Path] = {}
    try:
        def cascade(spec: ReleaseSpec) -> Cascade:
            stages = []
            for st in spec.stages:
                path = paths[st.bundle] = resolve(st.bundle).resolve()
                if path not in bundles:
                    bundles[path] = load_bundle(path, trust)
                # The release's precision for this stage wins over the device's runner setting (TensorRT's).
                options = dict(runner_options or {})
                precision = st.precision or options.pop("precision", None)
                options.pop("precision", None)
                if (path, precision) not in models:
                    models[path, precision] = BundleModel(bundles[path], backend, precision=precision,
                                                          **options).load()
                m = models[path, precision]
                stages.append((st, m, StageRule.from_spec(st, m.manifest.labels, m.manifest.thresholds)))
            return Cascade(spec, stages, band, verify_timeout_s)

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
    return Pipeline(a, c, list(bundles.values()), list(models.values()), paths)


class PipelineSlot:
    """Holds the current pipeline. The inference threads use it one batch at a time, several at once (shared);
    `swap` waits for every batch in flight and goes before any batch that has not started, so a frame never sees
    half of two releases and every batch that starts after a swap sees the new pipeline."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._pipeline: Pipeline | None = None
        self._users = 0  # batches in flight
        self.swaps = 0
        self.waiting = 0  # swaps waiting for the batches in flight

    @contextmanager
    def use(self) -> Iterator[Pipeline | None]:
        with self._cond:
            while self.waiting:
                self._cond.wait()
            self._users += 1
            pipeline = self._pipeline
        try:
            yield pipeline
        finally:
            with self._cond:
                self._users -= 1
                if not self._users:
                    self._cond.notify_all()

    @property
    def current(self) -> Pipeline | None:
        return self._pipeline

    def swap(self, new: Pipeline | None) -> Pipeline | None:
        with self._cond:
            self.waiting += 1
            try:
                while self._users:
                    self._cond.wait()
                old, self._pipeline = self._pipeline, new
                self.swaps += 1
            finally:
                self.waiting -= 1
                self._cond.notify_all()
        return old
