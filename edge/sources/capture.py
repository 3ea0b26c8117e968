"""An OpenCV capture (camera index, RTSP/HTTP URL or video file) sampled at a configured rate."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from edge.config import CaptureSource
from edge.sources import Frame
from edge.sources.queue import FrameQueue

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


class CaptureReader:
    def __init__(self, cfg: CaptureSource, queue: FrameQueue, stop: threading.Event, block: bool = False) -> None:
        self.cfg, self.queue, self.stop, self.block = cfg, queue, stop, block
        self.name = cfg.name or str(cfg.url)
        self.is_file = isinstance(cfg.url, str) and Path(cfg.url).is_file()
        self.frames_read = 0
        self.frames_queued = 0
        self.errors = 0
        self.finished = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"capture:{self.name}", daemon=True)

    def start(self) -> CaptureReader:
        self.thread.start()
        return self

    def _open(self):
        import cv2

        cap = cv2.VideoCapture(self.cfg.url)
        if not cap.isOpened():
            cap.release()
            return None
        return cap

    def _run(self) -> None:
        import cv2

        while not self.stop.is_set():
            cap = self._open()
            if cap is None:
                self.errors += 1
                log.warning("capture %s cannot be opened; retrying in %.1fs", self.name, self.cfg.reconnect_s)
                self.stop.wait(self.cfg.reconnect_s)
                continue
            sampler = Sampler(self.cfg.sample_fps, self.cfg.every_n)
            t0 = time.monotonic()
            # A file's clock is its frame index over its frame rate (POS_MSEC differs between OpenCV backends).
            fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
            index = 0
            try:
                while not self.stop.is_set():
                    ok, img = cap.read()
                    if not ok or img is None:
                        break
                    self.frames_read += 1
                    index += 1
                    t = (index - 1) / fps if self.is_file and fps > 0 else time.monotonic() - t0
                    if not sampler.take(t):
                        continue
                    frame = Frame(source=f"capture:{self.name}#{self.frames_read - 1}", image=img, suffix=".jpg")
                    if self.block or self.is_file:
                        # A file has no real-time clock: wait for room rather than drop frames of the recording.
                        if not self.queue.put(frame, self.stop):
                            break
                    else:
                        self.queue.put_drop_oldest(frame)
                    self.frames_queued += 1
            finally:
                cap.release()
            if self.is_file and not self.cfg.loop:
                break
            if not self.is_file:
                self.errors += 1
                log.warning("capture %s ended; reconnecting in %.1fs", self.name, self.cfg.reconnect_s)
                self.stop.wait(self.cfg.reconnect_s)
        self.finished.set()
