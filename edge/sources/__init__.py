"""Where frames come from (a watched folder, an OpenCV capture, POST /v1/infer) and the bounded queue between the
sources and the frame path."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from fleet.protocol import PredictionRecord

# What became of a frame, as its source is told:
#   pass / flag  the decision is committed (a degraded frame is a flag, with its reason in the record)
#   error        the frame could not be decided (a bad image, a model that failed on it): committed as such
#   retry        nothing was committed (the store failed); the source keeps the frame and may offer it again
OutcomeKind = Literal["pass", "flag", "error", "retry"]


@dataclass
class Outcome:
    """What became of a frame, handed back to its source once the record is committed (or could not be)."""

    prediction_id: str | None
    decision: OutcomeKind
    error: str | None = None
    active: PredictionRecord | None = None
    candidate_record: PredictionRecord | None = None

    @property
    def record(self) -> dict[str, Any] | None:
        return self.active.model_dump(mode="json") if self.active is not None else None

    @property
    def candidate(self) -> dict[str, Any] | None:
        return self.candidate_record.model_dump(mode="json") if self.candidate_record is not None else None


@dataclass
class Frame:
    source: str  # folder:<file> | capture:<name>#<n> | http
    data: bytes | None = None  # encoded image bytes (folder, http)
    image: np.ndarray | None = None  # already decoded BGR (capture)
    suffix: str = ".jpg"
    key: str | None = None  # identity that survives a restart (folder files): at most one record per key
    # the file `data` was read from and its (size, mtime_ns) then (folder files): a kept image is a hard link of it
    origin: tuple[Path, int, int] | None = None
    on_done: Callable[[Outcome], None] | None = None
    # set on live frames (captures): a full queue may drop the frame in favour of a fresher one, and says so here
    on_drop: Callable[[], None] | None = None
    enqueued_at: float = field(default_factory=time.monotonic)


__all__ = ["Frame", "Outcome", "OutcomeKind"]
