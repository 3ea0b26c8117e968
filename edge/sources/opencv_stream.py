"""A camera, stream or video file opened with OpenCV (its FFmpeg backend for RTSP/HTTP and files, V4L2 for a
camera index), with open and read timeouts so that a stream that stalls is noticed and reopened."""

from __future__ import annotations

import os
import threading

import cv2
import numpy as np

from edge.sources.stream import StreamError

# OpenCV's FFmpeg backend takes its demuxer options from this variable when a capture is opened ("key;value|...");
# it is process-wide, so it is set and restored around each open under a lock.
_FFMPEG_OPTIONS = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
_env_lock = threading.Lock()


class OpenCVStream:
    """grab() reads (and decodes) the next frame, retrieve() converts the grabbed frame to BGR."""

    def __init__(self, url: str | int, *, transport: str = "tcp", open_timeout_s: float = 10.0,
                 read_timeout_s: float = 10.0) -> None:
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(open_timeout_s * 1000),
                  cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(read_timeout_s * 1000)]
        self.error: str | None = None
        if isinstance(url, int):
            self.cap = cv2.VideoCapture(url)
        else:
            with _env_lock:
                old = os.environ.get(_FFMPEG_OPTIONS)
                if url.lower().startswith("rtsp"):
                    os.environ[_FFMPEG_OPTIONS] = f"rtsp_transport;{transport}"
                try:
                    self.cap = cv2.VideoCapture(url, cv2.CAP_FFMPEG, params)
                finally:
                    if old is None:
                        os.environ.pop(_FFMPEG_OPTIONS, None)
                    else:
                        os.environ[_FFMPEG_OPTIONS] = old
        if not self.cap.isOpened():
            self.cap.release()
            raise StreamError(f"OpenCV cannot open {url!r}")
        fps = self.cap.get(cv2.CAP_PROP_FPS)
        self.fps: float | None = fps if fps and fps > 0 else None

    def grab(self) -> bool:
        if self.cap.grab():
            return True
        self.error = "the stream ended or no frame arrived within the read timeout"
        return False

    def retrieve(self) -> np.ndarray | None:
        ok, img = self.cap.retrieve()
        return img if ok and img is not None else None

    def close(self) -> None:
        self.cap.release()
