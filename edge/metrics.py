"""The daemon's metrics: prometheus_client counters and histograms (one registry per daemon, in base units, HELP on
every family, `promtool check metrics` clean), gauges read from the daemon's state at scrape time, the build and
release info metrics, and the recent latency samples that /v1/status medians and the windowed metrics records for
the fleet are computed from.

prometheus_client is imported by the first frame counted, the first scrape or the first reading of a counter, not
with this module: its import (its exposition module pulls in http.server and wsgiref) took 15 ms of the daemon's
start, before anything is counted. The collectors registered before that are registered then."""

from __future__ import annotations

import platform
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from runtime.stats import percentile

if TYPE_CHECKING:
    from prometheus_client.core import Metric


class Collector(Protocol):
    """What the registry scrapes (prometheus_client's collector protocol: `collect` yields metric families)."""

    def collect(self) -> Iterator[Metric]: ...

# Seconds: from a fast classifier on a Jetson (~1 ms) to a detector on a busy CPU (~1 s) and a stalled stage.
BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
RECENT = 1000  # latency samples kept per stage for the medians in /v1/status

# short name (as the daemon counts) -> (family name without _total, HELP, label names)
COUNTERS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "frames_total": ("shadowline_frames", "Frames decided and committed, by source (folder, capture, http).",
                     ("source",)),
    "decisions_total": ("shadowline_decisions", "Active-release decisions committed (pass, flag, error).",
                        ("decision",)),
    "flags_total": ("shadowline_flags", "Flagged frames by the class that caused the flag.", ("class",)),
    "errors_total": ("shadowline_errors", "Frames that could not be decided or committed, by reason (image, "
                     "inference, candidate, store).", ("reason",)),
    "degraded_total": ("shadowline_degraded_frames", "Frames flagged for review because a stage fell behind or "
                       "failed (verify_timeout, verify_stalled, verify_failed); never passed.", ("reason",)),
    "candidate_decisions_total": ("shadowline_candidate_decisions", "Candidate-release (shadow) decisions.",
                                  ("decision",)),
    "candidate_disagreements_total": ("shadowline_candidate_disagreements",
                                      "Frames where the candidate release decided differently.", ()),
}


@dataclass
class StageSamples:
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=RECENT))
    window: list[float] = field(default_factory=list)


@dataclass
class _Prometheus:
    registry: Any  # prometheus_client.CollectorRegistry
    counters: dict[str, Any]  # short name -> prometheus_client.Counter
    latency: Any  # prometheus_client.Histogram


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stages: dict[str, StageSamples] = {}
        self._prom: _Prometheus | None = None  # built at first use (see the module's docstring)
        self._prom_lock = threading.Lock()
        self._pending: list[Collector] = []  # collectors added before that
        # (counter, labels) -> the labelled child: prometheus_client's labels() checks and locks on every call, and
        # the commit thread counts and observes about seven times per frame
        self._children: dict[tuple[str, tuple[tuple[str, str], ...]], Any] = {}

    def _p(self) -> _Prometheus:
        p = self._prom
        if p is not None:
            return p
        with self._prom_lock:
            if self._prom is None:
                from prometheus_client import CollectorRegistry, Counter, Histogram
                from prometheus_client.process_collector import ProcessCollector

                registry = CollectorRegistry()
                counters = {short: Counter(name, doc, labels, registry=registry)
                            for short, (name, doc, labels) in COUNTERS.items()}
                latency = Histogram("shadowline_stage_latency_seconds",
                                    "Time per frame in each stage: decode, screen, verify, candidate_*, total (decode "
                                    "and every stage), queue_wait (queued and decoded ahead, before inference).",
                                    ("stage",), buckets=BUCKETS_S, registry=registry)
                ProcessCollector(registry=registry)  # process_resident_memory_bytes, process_cpu_seconds_total, ...
                for c in self._pending:
                    registry.register(c)
                self._pending = []
                self._prom = _Prometheus(registry, counters, latency)
            return self._prom

    def inc(self, name: str, by: float = 1, labels: dict[str, str] | None = None, **kw: str) -> None:
        """Add `by` to a counter (COUNTERS); labels as keywords, or as `labels` for names like `class`."""
        both = {**(labels or {}), **kw}
        key = (name, tuple(both.items()))
        child = self._children.get(key)
        if child is None:
            c = self._p().counters[name]
            child = self._children[key] = c.labels(**both) if both else c
        child.inc(by)

    def observe(self, stage: str, ms: float) -> None:
        key = ("", (("stage", stage),))
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._p().latency.labels(stage=stage)
        child.observe(ms / 1000)
        with self._lock:
            s = self._stages.get(stage)
            if s is None:
                s = self._stages[stage] = StageSamples()
            s.recent.append(ms)
            s.window.append(ms)

    def value(self, name: str, **labels: str) -> float:
        """A counter's value for these labels, or its sum over all labels."""
        want = f"{COUNTERS[name][0]}_total"
        if self._prom is None:
            return 0.0  # nothing counted yet (and no reason to load prometheus_client to say so)
        return sum(s.value for family in self._prom.counters[name].collect() for s in family.samples
                   if s.name == want and all(s.labels.get(k) == v for k, v in labels.items()))

    def medians(self) -> dict[str, float | None]:
        with self._lock:
            return {k: percentile(s.recent, 50) if s.recent else None for k, s in self._stages.items()}

    def take_window(self) -> dict[str, tuple[float, float]]:
        """Per stage (P50, P95) in ms of the samples since the last call; starts the next window."""
        with self._lock:
            out = {k: (percentile(s.window, 50), percentile(s.window, 95)) for k, s in self._stages.items() if s.window}
            for s in self._stages.values():
                s.window = []
        return out

    def add_collector(self, collector: Collector) -> None:
        with self._prom_lock:
            if self._prom is None:
                self._pending.append(collector)
                return
        self._prom.registry.register(collector)

    def render(self) -> bytes:
        """The Prometheus text exposition of everything registered."""
        from prometheus_client import generate_latest

        return generate_latest(self._p().registry)


def content_type() -> str:
    """The exposition's media type (prometheus_client's CONTENT_TYPE_LATEST), for GET /metrics."""
    from prometheus_client import CONTENT_TYPE_LATEST

    return CONTENT_TYPE_LATEST


@dataclass
class StateReading:
    """What the daemon's state says at scrape time (see StateCollector)."""

    gauges: Mapping[str, tuple[float, str]]  # family -> (value, HELP)
    counters: Mapping[str, tuple[float, str]]  # family without _total -> (value, HELP)
    releases: list[dict[str, str]]  # one shadowline_release_info series per stage of the active and candidate


class StateCollector:
    """Gauges and counters kept elsewhere (queue, retention, actions, pipeline slot) and the info metrics, read when
    Prometheus scrapes rather than copied on every frame."""

    def __init__(self, read: Callable[[], StateReading], version: str) -> None:
        self.read, self.version = read, version

    def collect(self) -> Iterator[Metric]:
        import onnxruntime
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily

        build = InfoMetricFamily("shadowline_build", "What this daemon runs: Shadowline, Python and ONNX Runtime "
                                 "versions.")
        build.add_metric([], {"version": self.version, "python": platform.python_version(),
                              "onnxruntime": onnxruntime.__version__})
        yield build
        r = self.read()
        rel = InfoMetricFamily("shadowline_release", "The release running: one series per stage of the active and "
                               "candidate releases (release ref, mode, stage, bundle id and version).",
                               labels=("role", "release", "mode", "stage", "bundle", "version"))
        for labels in r.releases:
            rel.add_metric([labels[k] for k in ("role", "release", "mode", "stage", "bundle", "version")], {})
        yield rel
        for name, (v, doc) in sorted(r.gauges.items()):
            g = GaugeMetricFamily(name, doc)
            g.add_metric([], v)
            yield g
        for name, (v, doc) in sorted(r.counters.items()):
            c = CounterMetricFamily(name, doc)
            c.add_metric([], v)
            yield c
