"""A real RTSP server process (tests/cameras/rtsp_server.py under the system python3, GStreamer's RTSP server)
that a test can stop and start again on the same port."""

from __future__ import annotations

import queue
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.edge.conftest import daemons  # noqa: F401  (real daemon processes, shared with tests/edge)

HERE = Path(__file__).resolve().parent
REALDATA = HERE.parents[1].parent / "shared" / "realdata"
BOARD = REALDATA / "images" / "pcb_winml" / "Defective_02.png"
SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's python3-gi is built for it (scripts/install.sh installs both)


class RtspServer:
    def __init__(self, image: Path, frames: int = 0, fps: int = 10) -> None:
        self.port = free_port()
        self.image, self.frames, self.fps = image, frames, fps
        self.url = f"rtsp://127.0.0.1:{self.port}/cam"
        self.proc: subprocess.Popen | None = None
        self.lines: queue.Queue[str] = queue.Queue()
        self.sent: list[int] = []  # per ended session, in order: frames the server's encoder made for it

    def start(self) -> RtspServer:
        self.lines = queue.Queue()  # this process's lines only (a restart starts a new process)
        self.proc = subprocess.Popen(
            [SYSTEM_PYTHON, str(HERE / "rtsp_server.py"), "--port", str(self.port), "--image", str(self.image),
             "--frames", str(self.frames), "--fps", str(self.fps)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        threading.Thread(target=self._read, args=(self.proc, self.lines), daemon=True).start()
        try:
            line = self.lines.get(timeout=30)
        except queue.Empty:
            line = "(nothing within 30 s)"
        if line != "ready":
            self.proc.kill()
            _, err = self.proc.communicate(timeout=10)
            self.proc = None
            raise RuntimeError(f"RTSP server did not start ({line!r}): {err[-2000:]} -- run scripts/install.sh")
        return self

    def _read(self, proc: subprocess.Popen, lines: queue.Queue[str]) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.strip()
            if line.startswith("session "):
                self.sent.append(int(line.split()[-1]))
            lines.put(line)
        lines.put("")  # the process ended

    def stop(self) -> None:
        """SIGTERM; the server reports its open sessions' frame counts before it exits."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@pytest.fixture
def rtsp_server() -> Iterator[Callable[..., RtspServer]]:
    started: list[RtspServer] = []

    def start(image: Path = BOARD, frames: int = 0, fps: int = 10) -> RtspServer:
        s = RtspServer(image, frames, fps).start()
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()
