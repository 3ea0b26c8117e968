"""The capture reader's accounting when a live stream outruns inference: a full queue drops the oldest live frame
(never a folder file waiting for its outcome) and the books still close. A real RTSP stream into the daemon's real
queue; the consumer is the test, so that the queue is full for a known while."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from edge.config import CaptureSource
from edge.sources import Frame, Outcome
from edge.sources.capture import CaptureReader
from edge.sources.queue import FrameQueue
from tests.cameras.conftest import RtspServer


def test_drops_are_counted_and_folder_frames_kept(rtsp_server: Callable[..., RtspServer]):
    server = rtsp_server(frames=30, fps=30)
    q = FrameQueue(4)
    folder_done: list[Outcome] = []
    waiting = Frame("folder:board.png", data=b"x", on_done=folder_done.append)
    assert q.put_nowait(waiting)
    stop = threading.Event()
    cfg = CaptureSource(url=server.url, name="cam", reconnect_s=600, read_timeout_s=3)
    reader = CaptureReader(cfg, q, stop).start()
    try:
        deadline = time.monotonic() + 60
        while reader.snapshot().disconnects < 1:  # nobody takes frames until the 30-frame session has ended
            assert time.monotonic() < deadline, reader.snapshot()
            time.sleep(0.05)
        while not server.sent:  # the server reports its ended session on its stdout, read by another thread
            assert time.monotonic() < deadline, "the RTSP server never reported the ended session"
            time.sleep(0.05)
        c = reader.snapshot()
        assert c.received == 30 and server.sent == [30]
        assert c.enqueued == 30 and c.dropped == 30 - 3  # 3 live frames fit beside the folder file
        taken = []
        while (f := q.get(0.01)) is not None:
            taken.append(f)
        assert taken[0] is waiting  # the folder file was never dropped
        live = taken[1:]
        assert [f.source for f in live] == [f"capture:cam#{n}" for n in (27, 28, 29)]  # the freshest frames
        for i, f in enumerate(live):
            assert f.on_done is not None and f.image is not None and f.image.shape == (480, 640, 3)
            f.on_done(Outcome(f"p{i}", "pass") if i else Outcome(None, "retry", "disk full"))
        c = reader.snapshot()
        assert (c.committed, c.lost) == (2, 1)
        assert c.received == c.skipped + c.decoded + c.decode_errors
        assert c.decoded == c.enqueued + c.abandoned
        assert c.enqueued == c.committed + c.dropped + c.lost
    finally:
        stop.set()
        reader.thread.join(10)
    assert reader.finished.is_set() and not folder_done
