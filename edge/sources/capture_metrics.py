"""The capture sources' frame accounting (edge.sources.capture.CaptureCounts) on the daemon's /metrics, read from
the readers when Prometheus scrapes: one counter family per step a frame goes through, labelled by source name."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from edge.sources.capture import CaptureReader

if TYPE_CHECKING:
    from prometheus_client.core import Metric

# CaptureCounts field -> (family without _total, HELP)
FAMILIES: dict[str, tuple[str, str]] = {
    "received": ("shadowline_capture_frames_received", "Frames a capture source's stream delivered."),
    "skipped": ("shadowline_capture_frames_skipped", "Received frames left out by sampling (sample_fps, every_n)."),
    "decoded": ("shadowline_capture_frames_decoded", "Sampled frames converted to an image."),
    "decode_errors": ("shadowline_capture_decode_errors", "Sampled frames that could not be converted."),
    "enqueued": ("shadowline_capture_frames_enqueued", "Decoded frames put in the inference queue."),
    "abandoned": ("shadowline_capture_frames_abandoned", "Decoded frames not queued because the daemon stopped."),
    "committed": ("shadowline_capture_frames_committed", "Queued frames whose records were committed."),
    "dropped": ("shadowline_capture_frames_dropped", "Queued frames dropped for a fresher one (full queue, "
                                                     "capture_policy drop_oldest)."),
    "lost": ("shadowline_capture_frames_lost", "Queued frames whose records could not be committed (store)."),
    "reconnects": ("shadowline_capture_reconnects", "Times a capture source's stream was opened again after the "
                                                    "first open."),
    "open_failures": ("shadowline_capture_open_failures", "Attempts to open a capture source's stream that failed."),
}


class CaptureCollector:
    """A collector (edge.metrics.Collector): prometheus_client is imported when it is scraped."""

    def __init__(self, readers: Callable[[], Sequence[CaptureReader]]) -> None:
        self.readers = readers

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        readers = list(self.readers())
        counts = [(r.name, r.snapshot().as_dict()) for r in readers]
        for field, (name, doc) in FAMILIES.items():
            fam = CounterMetricFamily(name, doc, labels=("source",))
            for source, c in counts:
                fam.add_metric([source], c[field])
            yield fam
        up = GaugeMetricFamily("shadowline_capture_connected", "1 while a capture source's stream is open.",
                               labels=("source",))
        last = GaugeMetricFamily("shadowline_capture_last_frame_timestamp_seconds",
                                 "Unix time of the last frame a capture source received.", labels=("source",))
        for r in readers:
            up.add_metric([r.name], int(r.connected))
            if r.last_frame_at is not None:
                last.add_metric([r.name], r.last_frame_at)
        yield up
        yield last
