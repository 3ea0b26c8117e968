"""The bounded queue between the sources and the inference worker, with its depth measured.

Backpressure (docs/daemon.md): the folder watcher blocks when the queue is full (files wait safely on disk), a live
capture drops its oldest queued frame (a stale frame is worth less than a fresh one; drops are counted), and
POST /v1/infer answers 503 with Retry-After instead of queueing without bound.
"""

from __future__ import annotations

import collections
import threading
import time

from edge.sources import Frame


class FrameQueue:
    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._items: collections.deque[Frame] = collections.deque()
        self._cond = threading.Condition()
        self.high_water = 0
        self.dropped = 0  # frames dropped by drop_oldest
        self.rejected = 0  # put_nowait refusals (HTTP 503)
        self.enqueued = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def depth(self) -> int:
        return len(self._items)

    def _add(self, frame: Frame) -> None:
        frame.enqueued_at = time.monotonic()
        self._items.append(frame)
        self.enqueued += 1
        self.high_water = max(self.high_water, len(self._items))
        self._cond.notify_all()

    def put(self, frame: Frame, stop: threading.Event, poll_s: float = 0.1) -> bool:
        """Block until there is room (or `stop` is set: returns False and the frame is not queued)."""
        with self._cond:
            while len(self._items) >= self.max_size:
                if stop.is_set():
                    return False
                self._cond.wait(poll_s)
            self._add(frame)
            return True

    def put_nowait(self, frame: Frame) -> bool:
        with self._cond:
            if len(self._items) >= self.max_size:
                self.rejected += 1
                return False
            self._add(frame)
            return True

    def put_drop_oldest(self, frame: Frame) -> Frame | None:
        """Queue `frame`; when the queue is full, drop the oldest queued live frame (one with `on_drop`) and return
        it. Frames that wait for their outcome (folder files, POST /v1/infer) are never dropped: when only those
        fill the queue, `frame` itself is the one dropped."""
        with self._cond:
            dropped = None
            if len(self._items) >= self.max_size:
                dropped = next((f for f in self._items if f.on_drop is not None), frame)
                if dropped is not frame:
                    self._items.remove(dropped)
                self.dropped += 1
            if dropped is not frame:
                self._add(frame)
        if dropped is not None and dropped.on_drop is not None:
            dropped.on_drop()
        return dropped

    def get(self, timeout: float) -> Frame | None:
        with self._cond:
            if not self._items:
                self._cond.wait(timeout)
            if not self._items:
                return None
            frame = self._items.popleft()
            self._cond.notify_all()
            return frame
