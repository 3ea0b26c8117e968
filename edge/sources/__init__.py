"""Where frames come from (a watched folder, an OpenCV capture, POST /v1/infer) and the bounded queue between the
sources and the inference worker."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Outcome:
    """What became of a frame, handed back to its source once the record is committed."""

    prediction_id: str | None
    decision: str  # pass | flag | error
    error: str | None = None
    record: dict[str, Any] | None = None
    candidate: dict[str, Any] | None = None


@dataclass
class Frame:
    source: str  # folder:<file> | capture:<name>#<n> | http
    data: bytes | None = None  # encoded image bytes (folder, http)
    image: np.ndarray | None = None  # already decoded BGR (capture)
    suffix: str = ".jpg"
    key: str | None = None  # identity that survives a restart (folder files): at most one record per key
    on_done: Callable[[Outcome], None] | None = None
    enqueued_at: float = field(default_factory=time.monotonic)


__all__ = ["Frame", "Outcome"]
