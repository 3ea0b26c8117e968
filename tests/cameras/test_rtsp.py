"""RTSP end to end: a real RTSP server (GStreamer's, on loopback) streams a real PCB image as live H.264 video to a
real daemon process (`shadowline edge run`), decoded by OpenCV's FFmpeg or by a GStreamer pipeline; every frame
the server sent is counted through the daemon's accounting into committed records, and a server restart is
followed by a reconnect."""

from __future__ import annotations

import math
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.cameras.conftest import RtspServer
from tests.conftest import until
from tests.edge.conftest import DaemonProcess, pcb_release, write_config

BACKENDS = ["opencv", "gstreamer"]


def capture(d: DaemonProcess, name: str = "cam") -> dict[str, Any]:
    return d.get("/v1/status")["captures"][name]


def capture_records(d: DaemonProcess, name: str = "cam") -> list[dict[str, Any]]:
    recs = d.get("/v1/predictions", params={"limit": 1000, "role": "active"})
    return [r for r in recs if r["source"].startswith(f"capture:{name}#")]


def settled(d: DaemonProcess) -> dict[str, Any] | None:
    """The capture's counts once nothing is queued or in flight (so the accounting must close exactly)."""
    st = d.get("/v1/status")
    c = st["captures"]["cam"]
    if st["queue"]["depth"] == 0 and st["queue"]["in_flight"] == 0 and \
            c["enqueued"] == c["committed"] + c["dropped"] + c["lost"]:
        return c
    return None


def assert_accounting_closes(c: dict[str, Any]) -> None:
    assert c["received"] == c["skipped"] + c["decoded"] + c["decode_errors"], c
    assert c["decoded"] == c["enqueued"] + c["abandoned"], c
    assert c["enqueued"] == c["committed"] + c["dropped"] + c["lost"], c


def source(url: str, backend: str, **extra: Any) -> dict[str, Any]:
    return {"type": "capture", "name": "cam", "url": url, "backend": backend, "every_n": 2, "read_timeout_s": 3,
            "open_timeout_s": 5, **extra}


def metric(text: str, family: str, source_name: str = "cam") -> float:
    line = next(ln for ln in text.splitlines() if ln.startswith(f'{family}{{source="{source_name}"}}'))
    return float(line.rsplit(" ", 1)[1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_frame_the_server_sent_is_counted_to_a_committed_record(
        tmp_path: Path, bundles, keys, daemons, rtsp_server: Callable[..., RtspServer], backend: str):
    server = rtsp_server(frames=40, fps=20)  # one session: 40 frames, then end of stream
    cfg = write_config(tmp_path, keys, pcb_release(bundles), queue={"max_size": 64, "capture_policy": "block"},
                       sources=[source(server.url, backend, reconnect_s=600)])
    d = daemons(cfg)
    c = until(lambda: (x := capture(d))["disconnects"] == 1 and x, 90, "the stream to end")
    until(lambda: server.sent, 10, "the server's report of the ended session")  # read from its stdout by a thread
    assert server.sent == [40]  # the server's own count of the frames its encoder made for the session
    c = until(lambda: settled(d), 60, "the queue to drain")
    assert c["received"] == 40 and c["opens"] == 1 and c["reconnects"] == 0
    assert c["skipped"] == 20 and c["decoded"] == 20 and c["committed"] == 20 and c["dropped"] == 0
    assert_accounting_closes(c)
    recs = capture_records(d)
    assert len(recs) == 20
    # one record per sampled frame (every_n 2: frames 0, 2, ..., 38), decided on the real board image
    assert sorted(int(r["source"].rsplit("#", 1)[1]) for r in recs) == list(range(0, 40, 2))
    assert {r["decision"] for r in recs} <= {"pass", "flag"} and all(r["top_label"] for r in recs)
    text = httpx.get(d.url + "/metrics", timeout=30).text
    assert metric(text, "shadowline_capture_frames_received_total") == 40
    assert metric(text, "shadowline_capture_frames_committed_total") == 20
    assert metric(text, "shadowline_capture_connected") == 0
    if shutil.which("promtool"):
        r = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("backend", BACKENDS)
def test_server_restart_is_followed_by_a_reconnect(
        tmp_path: Path, bundles, keys, daemons, rtsp_server: Callable[..., RtspServer], backend: str):
    server = rtsp_server(frames=0, fps=10)  # endless
    cfg = write_config(tmp_path, keys, pcb_release(bundles), queue={"max_size": 64, "capture_policy": "block"},
                       sources=[source(server.url, backend, reconnect_s=0.5)])
    d = daemons(cfg)
    first = until(lambda: (x := capture(d))["committed"] >= 5 and x, 90, "frames of the first session")
    assert first["connected"] and first["opens"] == 1
    server.stop()
    until(lambda: capture(d)["disconnects"] == 1, 30, "the daemon to notice the server went away")
    down = until(lambda: (x := capture(d))["open_failures"] >= 1 and x, 30, "a failed reopen while it is down")
    assert not down["connected"]
    server.start()  # the same port, a new server process
    until(lambda: (x := capture(d))["reconnects"] == 1 and x["committed"] >= down["committed"] + 5, 90,
          "frames after the reconnect")
    server.stop()  # end the second session too, so nothing is in flight when the books are closed
    until(lambda: capture(d)["disconnects"] == 2, 30, "the second disconnect")
    c = until(lambda: settled(d), 60, "the queue to drain")
    assert_accounting_closes(c)
    assert c["received"] <= sum(server.sent)  # frames encoded as the server stopped may never have left it
    assert c["opens"] == 2 and c["dropped"] == 0 and c["lost"] == 0
    recs = capture_records(d)
    assert len(recs) == c["committed"]
    numbers = sorted(int(r["source"].rsplit("#", 1)[1]) for r in recs)
    assert numbers == sorted(set(numbers)) and numbers[-1] >= first["received"] + 4  # frames of both sessions
    assert math.isclose(len(recs), c["decoded"])
