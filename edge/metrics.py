"""The daemon's counters and latency histograms, rendered as Prometheus text for /metrics."""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict

# Milliseconds: from a fast classifier on a Jetson (~1 ms) to a detector on a busy CPU (~1 s).
BUCKETS_MS = (1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)


class Histogram:
    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS_MS) + 1)
        self.sum = 0.0
        self.n = 0
        self.recent: list[float] = []  # last values, for medians in /v1/status

    def observe(self, v: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS_MS, v)] += 1
        self.sum += v
        self.n += 1
        self.recent.append(v)
        if len(self.recent) > 1000:
            del self.recent[:500]

    def median(self) -> float | None:
        if not self.recent:
            return None
        s = sorted(self.recent)
        return s[len(s) // 2]


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counters: dict[tuple[str, tuple[tuple[str, str], ...]], float] = defaultdict(float)
        self.hists: dict[str, Histogram] = defaultdict(Histogram)
        self.gauges: dict[str, float] = {}

    def inc(self, name: str, by: float = 1, **labels: str) -> None:
        with self._lock:
            self.counters[(name, tuple(sorted(labels.items())))] += by

    def observe(self, stage: str, ms: float) -> None:
        with self._lock:
            self.hists[stage].observe(ms)

    def value(self, name: str, **labels: str) -> float:
        with self._lock:
            if labels:
                return self.counters.get((name, tuple(sorted(labels.items()))), 0.0)
            return sum(v for (n, _), v in self.counters.items() if n == name)

    def medians(self) -> dict[str, float | None]:
        with self._lock:
            return {k: h.median() for k, h in self.hists.items()}

    def render(self, gauges: dict[str, float]) -> str:
        """Prometheus text exposition format 0.0.4."""
        out: list[str] = []
        with self._lock:
            names = sorted({n for n, _ in self.counters})
            for name in names:
                out.append(f"# TYPE shadowline_{name} counter")
                for (n, labels), v in sorted(self.counters.items()):
                    if n == name:
                        out.append(f"shadowline_{name}{_labels(labels)} {v:g}")
            for name, v in sorted(gauges.items()):
                out.append(f"# TYPE shadowline_{name} gauge")
                out.append(f"shadowline_{name} {v:g}")
            if self.hists:
                out.append("# TYPE shadowline_latency_ms histogram")
            for stage, h in sorted(self.hists.items()):
                cum = 0
                for le, c in zip(list(BUCKETS_MS) + ["+Inf"], h.counts):
                    cum += c
                    out.append(f'shadowline_latency_ms_bucket{{stage="{stage}",le="{le}"}} {cum}')
                out.append(f'shadowline_latency_ms_sum{{stage="{stage}"}} {h.sum:.3f}')
                out.append(f'shadowline_latency_ms_count{{stage="{stage}"}} {h.n}')
        return "\n".join(out) + "\n"


def _labels(labels: tuple[tuple[str, str], ...]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels) + "}"


def _escape(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
