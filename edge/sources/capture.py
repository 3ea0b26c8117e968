"""A capture source: a camera, an RTSP/HTTP stream or a video file, decoded by OpenCV or by a GStreamer pipeline,
sampled at a configured rate, reopened when it fails, with every frame accounted for.

Accounting (CaptureCounts, in /metrics and /v1/status): every frame the stream delivers is `received`; it is then
`skipped` by the sampler, or converted (`decoded`, or a `decode_errors`); a decoded frame is `enqueued` (or
`abandoned` when the daemon stops before there is room); an enqueued frame is `committed` once its record is, or
`dropped` when a fresher frame took its place in a full queue (`capture_policy: drop_oldest`), or `lost` when the
store failed. So, at any time:
    received = skipped + decoded + decode_errors
    decoded  = enqueued + abandoned
    enqueued = committed + dropped + lost + (frames still queued or in inference)
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from edge.config import CaptureSource
from edge.sources import Frame, Outcome
from edge.sources.queue import FrameQueue
from edge.sources.stream import StreamError, VideoStream

log = logging.getLogger("shadowline.edge.capture")


class Sampler:
    """Decides which frames to keep: `sample_fps` against the stream's own clock (video position for files,
    wall clock for live streams), or one frame in `every_n`."""

    def __init__(self, sample_fps: float | None, every_n: int) -> None:
        self.period = 1.0 / sample_fps if sample_fps else None
        self.every_n = every_n
        self.next_t: float | None = None
        self.n = 0

    def take(self, t: float) -> bool:
        self.n += 1
        if self.period is None:
            return (self.n - 1) % self.every_n == 0
        if self.next_t is None or t + 1e-9 >= self.next_t:
            self.next_t = (t if self.next_t is None else self.next_t) + self.period
            if self.next_t <= t:  # after a gap (stall, reconnect) do not burst to catch up
                self.next_t = t + self.period
            return True
        return False


@dataclass
class CaptureCounts:
    """One capture source's frame accounting (see the module docstring) and its connection history."""

    received: int = 0
    skipped: int = 0
    decoded: int = 0
    decode_errors: int = 0
    enqueued: int = 0
    abandoned: int = 0
    committed: int = 0
    dropped: int = 0
    lost: int = 0
    opens: int = 0  # successful opens; every one after the first is a reconnect
    open_failures: int = 0
    disconnects: int = 0  # a stream that was open and ended or failed

    @property
    def reconnects(self) -> int:
        return max(self.opens - 1, 0)

    def as_dict(self) -> dict[str, int]:
        return {**asdict(self), "reconnects": self.reconnects}


def open_stream(cfg: CaptureSource) -> VideoStream:
    """Open the source with its backend; StreamError when it cannot be opened now."""
    if cfg.backend == "gstreamer":
        from edge.sources.gstreamer import GStreamerStream, pipeline

        argv = pipeline(str(cfg.url), decoder=cfg.decoder, codec=cfg.codec, transport=cfg.transport,
                        latency_ms=cfg.latency_ms)
        return GStreamerStream(argv, cfg.open_timeout_s, cfg.read_timeout_s)
    from edge.sources.opencv_stream import OpenCVStream

    url: str | int = cfg.url
    if isinstance(url, str) and url.isdigit():
        url = int(url)  # "0" in YAML quotes is still a camera index
    return OpenCVStream(url, transport=cfg.transport, open_timeout_s=cfg.open_timeout_s,
                        read_timeout_s=cfg.read_timeout_s)


def check_source(cfg: CaptureSource) -> None:
    """Fail at start-up (BackendUnavailable) when the source's backend cannot run on this device at all."""
    if cfg.backend == "gstreamer":
        from edge.sources.gstreamer import require_elements

        require_elements(cfg.decoder, cfg.codec)


class CaptureReader:
    def __init__(self, cfg: CaptureSource, queue: FrameQueue, stop: threading.Event, block: bool = False) -> None:
        self.cfg, self.queue, self.stop, self.block = cfg, queue, stop, block
        self.name = cfg.name or str(cfg.url)
        self.is_file = isinstance(cfg.url, str) and "://" not in cfg.url and Path(cfg.url).is_file()
        self.counts = CaptureCounts()
        self.connected = False
        self.last_frame_at: float | None = None  # wall clock of the last frame received
        self.last_error: str | None = None
        self._lock = threading.Lock()  # counts are also updated from the frame path's thread (outcomes, drops)
        self.finished = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"capture:{self.name}", daemon=True)

    def start(self) -> CaptureReader:
        check_source(self.cfg)
        self.thread.start()
        return self

    def _count(self, field: str) -> None:
        with self._lock:
            setattr(self.counts, field, getattr(self.counts, field) + 1)

    def snapshot(self) -> CaptureCounts:
        with self._lock:
            return CaptureCounts(**asdict(self.counts))

    def _settled(self, out: Outcome) -> None:
        self._count("lost" if out.decision == "retry" else "committed")

    def _run(self) -> None:
        try:
            while not self.stop.is_set():
                try:
                    stream = open_stream(self.cfg)
                except StreamError as err:
                    self._count("open_failures")
                    self.last_error = str(err)
                    log.warning("capture %s cannot be opened (%s); retrying in %.1fs", self.name, err,
                                self.cfg.reconnect_s)
                    self.stop.wait(self.cfg.reconnect_s)
                    continue
                self._count("opens")
                self.connected = True
                if self.counts.opens > 1:
                    log.info("capture %s reconnected", self.name)
                try:
                    self._read(stream)
                finally:
                    self.connected = False
                    stream.close()
                if self.stop.is_set() or (self.is_file and not self.cfg.loop):
                    break
                if not self.is_file:
                    self._count("disconnects")
                    self.last_error = stream.error
                    log.warning("capture %s lost (%s); reconnecting in %.1fs", self.name, stream.error,
                                self.cfg.reconnect_s)
                    self.stop.wait(self.cfg.reconnect_s)
        finally:
            self.finished.set()

    def _read(self, stream: VideoStream) -> None:
        sampler = Sampler(self.cfg.sample_fps, self.cfg.every_n)
        t0 = time.monotonic()
        # A file's clock is its frame index over its frame rate (POS_MSEC differs between backends).
        fps = stream.fps or 0.0
        index = 0
        while not self.stop.is_set():
            if not stream.grab():
                return
            self._count("received")
            self.last_frame_at = time.time()
            index += 1
            t = (index - 1) / fps if self.is_file and fps > 0 else time.monotonic() - t0
            if not sampler.take(t):
                self._count("skipped")
                continue
            img = stream.retrieve()
            if img is None:
                self._count("decode_errors")
                continue
            self._count("decoded")
            n = self.counts.received - 1
            frame = Frame(source=f"capture:{self.name}#{n}", image=img, suffix=".jpg", on_done=self._settled)
            # counted before the put: the frame path may settle the frame before put() returns
            self._count("enqueued")
            if self.block or self.is_file:
                # A file has no real-time clock: wait for room rather than drop frames of the recording.
                if not self.queue.put(frame, self.stop):
                    with self._lock:
                        self.counts.enqueued -= 1
                        self.counts.abandoned += 1
                    return
            else:
                frame.on_drop = lambda: self._count("dropped")
                self.queue.put_drop_oldest(frame)
