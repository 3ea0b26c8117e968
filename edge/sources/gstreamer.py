"""A camera stream decoded by a GStreamer pipeline in its own process (`gst-launch-1.0`), its frames read from the
process's stdout as a stream of binary PPM images: the way to use a Jetson's hardware decoder (`nvv4l2decoder`),
and a software-decoded alternative to OpenCV's FFmpeg elsewhere.

A process rather than GStreamer's Python bindings: the device's venv needs no PyGObject, a crashed or hung
pipeline is killed and restarted without taking the daemon with it, and what runs can be pasted into a shell to
debug (its command line is logged). PPM rather than raw video or Y4M: every frame says its own width and height, so
the reader needs no caps negotiation and follows a change of resolution; and `pnmenc` writes rows without the
decoder's padding, which `y4menc` (GStreamer 1.20/1.22) copies into the stream as if it were picture (a padded
640x480 I420 frame from avdec_h264 came out 3840 bytes too long).
"""

from __future__ import annotations

import logging
import os
import select
import shlex
import shutil
import subprocess
import threading
import time
from collections import deque
from pathlib import Path
from urllib.parse import urlparse

import cv2
import numpy as np

from edge.sources.stream import StreamError
from runtime.errors import BackendUnavailable, ConfigError

log = logging.getLogger("shadowline.edge.gstreamer")

GST_LAUNCH = "gst-launch-1.0"
GST_INSPECT = "gst-inspect-1.0"

# decoder -> (element per codec, conversion to packed RGB in system memory)
_DECODERS: dict[str, tuple[dict[str, str], str]] = {
    "software": ({"h264": "avdec_h264", "h265": "avdec_h265"}, "videoconvert"),
    # nvvidconv copies the decoder's NVMM buffers to system memory as BGRx on the VIC; only the last step from
    # 4 to 3 bytes per pixel runs on the CPU
    "nvv4l2decoder": ({"h264": "nvv4l2decoder", "h265": "nvv4l2decoder"},
                      "nvvidconv ! video/x-raw,format=BGRx ! videoconvert"),
}
_DEPAY = {"h264": "rtph264depay ! h264parse", "h265": "rtph265depay ! h265parse"}


def pipeline(url: str, *, decoder: str = "software", codec: str = "h264", transport: str = "tcp",
             latency_ms: int = 200) -> list[str]:
    """The gst-launch-1.0 argv that decodes `url` to a stream of PPM images on stdout.

    RTSP URLs get an explicit chain (depayloader, parser, the chosen decoder); anything else (a file path, an HTTP
    URL) goes through `uridecodebin`, which only software decoding supports here, played at its own rate (`sync`)
    so that sampling by the wall clock means what it means for a live stream."""
    if decoder not in _DECODERS:
        raise ConfigError(f"decoder {decoder!r}: expected one of {sorted(_DECODERS)}")
    elements, convert = _DECODERS[decoder]
    if codec not in elements:
        raise ConfigError(f"codec {codec!r}: expected one of {sorted(elements)}")
    scheme = urlparse(url).scheme.lower()
    if scheme in ("rtsp", "rtsps", "rtspt"):
        protocols = "tcp" if transport == "tcp" else "udp"
        src = (f"rtspsrc location={_quote(url)} protocols={protocols} latency={latency_ms} ! "
               f"{_DEPAY[codec]} ! {elements[codec]}")
        sync = "false"
    else:
        if decoder != "software":
            raise ConfigError(f"decoder {decoder!r} needs an rtsp:// URL (for {url!r} use decoder: software)")
        uri = url if scheme else Path(url).resolve().as_uri()
        src = f"uridecodebin uri={_quote(uri)}"
        sync = "true"
    desc = f"{src} ! {convert} ! video/x-raw,format=RGB ! pnmenc ! fdsink fd=1 sync={sync}"
    return [GST_LAUNCH, "-q", "-e", *shlex.split(desc)]


def _quote(value: str) -> str:
    # gst-launch's own parser takes a double-quoted property value; shlex.split above removes the outer quotes
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"' if any(c in value for c in ' !"\\') else value


def require_elements(decoder: str, codec: str) -> None:
    """BackendUnavailable naming what to install when gst-launch-1.0 or the pipeline's elements are missing."""
    if shutil.which(GST_LAUNCH) is None:
        raise BackendUnavailable(f"backend gstreamer: {GST_LAUNCH} is not installed (Debian/Ubuntu: apt install "
                                 "gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good "
                                 "gstreamer1.0-plugins-bad gstreamer1.0-libav)")
    elements, convert = _DECODERS[decoder]
    for name in (elements[codec], *(e.strip().split(" ")[0] for e in convert.split("!") if "/" not in e),
                 "pnmenc", "rtspsrc"):
        r = subprocess.run([GST_INSPECT, "--exists", name], capture_output=True)
        if r.returncode != 0:
            where = ("it is part of NVIDIA's L4T GStreamer plugins (JetPack; in a container, run it with "
                     "--runtime nvidia)" if name.startswith("nv") else "install the GStreamer plugin that has it")
            raise BackendUnavailable(f"backend gstreamer: the element {name!r} is not available: {where}")


class PPMReader:
    """Reads a stream of binary PPM images (P6, 8 bits) from a file descriptor, one frame per call, each within a
    timeout (a live stream that stalls is as lost as one that ends)."""

    def __init__(self, fd: int, timeout_s: float) -> None:
        self.fd, self.timeout_s = fd, timeout_s
        self.width = self.height = 0
        self._buf = bytearray()

    def _fill(self, n: int, deadline: float) -> None:
        while len(self._buf) < n:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                raise StreamError(f"no frame for {self.timeout_s:g}s")
            chunk = os.read(self.fd, max(n - len(self._buf), 1 << 16))
            if not chunk:
                raise StreamError("the stream ended")
            self._buf += chunk

    def _header(self, deadline: float) -> int:
        """Parse `P6 <width> <height> <maxval>` and one whitespace (comments allowed); returns its length."""
        tokens: list[bytes] = []
        i = 0
        while len(tokens) < 4:
            while i >= len(self._buf):
                if len(self._buf) > 1024:
                    raise StreamError("not a PPM stream (no header in the first 1 KiB)")
                self._fill(len(self._buf) + 1, deadline)
            c = self._buf[i:i + 1]
            if c == b"#":
                while self._buf[i:i + 1] != b"\n":
                    i += 1
                    if i >= len(self._buf):
                        self._fill(len(self._buf) + 1, deadline)
            elif c.isspace():
                i += 1
            else:
                j = i
                while True:
                    if j >= len(self._buf):
                        self._fill(len(self._buf) + 1, deadline)
                    if self._buf[j:j + 1].isspace():
                        break
                    j += 1
                tokens.append(bytes(self._buf[i:j]))
                i = j
                if tokens[0] != b"P6":
                    raise StreamError(f"not a binary PPM frame (starts with {bytes(self._buf[:16])!r})")
        try:
            width, height, maxval = (int(t) for t in tokens[1:])
        except ValueError as err:
            raise StreamError(f"bad PPM header {b' '.join(tokens)!r}") from err
        if width <= 0 or height <= 0 or maxval != 255:
            raise StreamError(f"PPM frame {width}x{height}, maxval {maxval}: expected 8-bit RGB")
        self.width, self.height = width, height
        return i + 1  # the single whitespace after maxval

    def frame(self) -> bytes:
        """The next frame's packed RGB bytes (width x height x 3)."""
        deadline = time.monotonic() + self.timeout_s
        start = self._header(deadline)
        size = self.width * self.height * 3
        self._fill(start + size, deadline)
        data = bytes(self._buf[start:start + size])
        del self._buf[: start + size]
        return data


def rgb_to_bgr(data: bytes, width: int, height: int) -> np.ndarray:
    return cv2.cvtColor(np.frombuffer(data, np.uint8).reshape(height, width, 3), cv2.COLOR_RGB2BGR)


class GStreamerStream:
    """One run of the pipeline: grab() reads the next frame, retrieve() converts the grabbed frame to BGR."""

    def __init__(self, argv: list[str], open_timeout_s: float, read_timeout_s: float) -> None:
        self.argv = argv
        log.info("starting %s", shlex.join(argv))
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, start_new_session=True)
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._stderr: deque[str] = deque(maxlen=20)
        self._drain = threading.Thread(target=self._read_stderr, name="gst-stderr", daemon=True)
        self._drain.start()
        self.reader = PPMReader(self.proc.stdout.fileno(), open_timeout_s)
        self._grabbed: bytes | None = None
        self.error: str | None = None
        # opened = the first frame arrived: a server that is down or a wrong URL fails here, within the open timeout
        try:
            self._first: bytes | None = self.reader.frame()
        except StreamError as err:
            self.error = self._why(err)
            self.close()
            raise StreamError(self.error) from err
        self.reader.timeout_s = read_timeout_s

    @property
    def fps(self) -> float | None:
        return None  # PPM frames carry no rate; live streams are sampled by the wall clock

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        with self.proc.stderr:
            for raw in self.proc.stderr:
                self._stderr.append(raw.decode("utf-8", "replace").rstrip())

    def _why(self, err: StreamError) -> str:
        if self.proc.poll() is None:
            return str(err)
        self._drain.join(1)
        tail = " | ".join(ln for ln in self._stderr if ln)[-500:]
        return f"{err}; gst-launch-1.0 exited with {self.proc.returncode}" + (f": {tail}" if tail else "")

    def grab(self) -> bool:
        if self._first is not None:
            self._grabbed, self._first = self._first, None
            return True
        try:
            self._grabbed = self.reader.frame()
            return True
        except StreamError as err:
            self.error = self._why(err)
            self._grabbed = None
            return False

    def retrieve(self) -> np.ndarray | None:
        if self._grabbed is None:
            return None
        return rgb_to_bgr(self._grabbed, self.reader.width, self.reader.height)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        self._drain.join(2)  # stderr reaches its end once the process is gone; the drain thread closes nothing
