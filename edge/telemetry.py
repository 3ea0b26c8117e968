"""Windowed metrics records for the fleet: every `metrics.window_s` the daemon writes one
fleet.protocol.MetricsRecord into its outbox (the agent sends it), with the queue depth the fleet's queue_growing
rule reads, what was dropped, rejected, failed or degraded in the window, per-stage latency percentiles, memory, CPU,
and temperatures and power where the platform has them."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from edge.health import Health
from edge.metrics import Metrics
from edge.store import Store
from fleet.protocol import MetricsRecord, ReleaseSpec

log = logging.getLogger("shadowline.edge.telemetry")


@dataclass
class Counts:
    """Cumulative counts read at a window's edges; the record carries their differences."""

    frames: float
    dropped: float
    rejected: float
    errors: float
    degraded: float


class MetricsReporter:
    def __init__(self, device_id: str, store: Store, metrics: Metrics, health: Health, window_s: float,
                 sample_s: float, depth: Callable[[], tuple[int, int, int]], counts: Callable[[], Counts],
                 release: Callable[[], ReleaseSpec | None], stop: threading.Event) -> None:
        """`depth()` returns (queue depth, queue capacity, frames in flight); `counts()` the cumulative counts."""
        self.device_id, self.store, self.metrics, self.health = device_id, store, metrics, health
        self.window_s, self.sample_s = window_s, min(sample_s, window_s)
        self.depth, self.counts, self.release, self.stop_event = depth, counts, release, stop
        self.thread = threading.Thread(target=self._run, name="metrics-window", daemon=True)
        self.sent = 0

    def start(self) -> MetricsReporter:
        self.thread.start()
        return self

    def _run(self) -> None:
        last = self.counts()
        self.metrics.take_window()
        t0 = time.monotonic()
        peak = 0
        while not self.stop_event.wait(self.sample_s):
            peak = max(peak, self.depth()[0])
            now = time.monotonic()
            if now - t0 < self.window_s - 1e-3:
                continue
            try:
                last = self.emit(last, now - t0, peak)
            except Exception:  # a full disk must not stop the sampling; the next window tries again
                log.exception("metrics record could not be written")
            t0, peak = now, 0

    def emit(self, last: Counts, elapsed: float, peak: int) -> Counts:
        """Write one record for the window since `last`; returns the counts that start the next window."""
        depth, capacity, in_flight = self.depth()
        cur = self.counts()
        frames = cur.frames - last.frames
        values: dict[str, float] = {
            "queue_depth": float(depth), "queue_depth_max": float(max(peak, depth)), "queue_capacity": float(capacity),
            "in_flight": float(in_flight), "frames": frames, "frames_per_s": round(frames / elapsed, 3),
            "dropped": cur.dropped - last.dropped, "rejected": cur.rejected - last.rejected,
            "errors": cur.errors - last.errors, "degraded": cur.degraded - last.degraded}
        for stage, (p50, p95) in self.metrics.take_window().items():
            values[f"latency_ms_p50:{stage}"] = round(p50, 3)
            values[f"latency_ms_p95:{stage}"] = round(p95, 3)
        values.update(self.health.reading())
        rel = self.release()
        self.store.add_metrics(MetricsRecord(device=self.device_id, release=rel.name if rel else "",
                                             revision=rel.revision if rel else 0, window_s=round(elapsed, 3),
                                             values=values))
        self.sent += 1
        return cur
