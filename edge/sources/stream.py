"""What the capture source needs of a video stream, whichever library decodes it (edge.sources.opencv_stream,
edge.sources.gstreamer): grab() receives the next frame, retrieve() turns the grabbed frame into a BGR image. The
two are apart so that frames the sampler skips are never converted, and so that the accounting can tell a frame
received from a frame decoded."""

from __future__ import annotations

from typing import Protocol

import numpy as np


class StreamError(Exception):
    """The stream cannot be opened or read any further (ended, lost, or sent something unreadable)."""


class VideoStream(Protocol):
    error: str | None  # why the last grab() failed

    @property
    def fps(self) -> float | None:
        """The stream's nominal frame rate, when it says."""

    def grab(self) -> bool: ...

    def retrieve(self) -> np.ndarray | None: ...

    def close(self) -> None: ...
