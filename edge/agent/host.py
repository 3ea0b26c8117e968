"""What the agent needs from the daemon that hosts it. The daemon implements this; tests may use a light host."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from fleet.protocol import ReleaseSpec


class AgentHost(Protocol):
    device_id: str

    @property
    def db_path(self) -> Path:
        """The daemon's SQLite database (WAL), which holds the outbox table (edge.outbox)."""

    def activate(self, release: ReleaseSpec, candidate: ReleaseSpec | None, bundles: dict[str, Path]) -> None:
        """Build the pipeline for `release` (+ `candidate` in shadow) from verified bundle directories (bundle id ->
        path), then swap it in atomically between two frames. Raises (ShadowlineError) and keeps the current
        pipeline if anything fails."""

    def current(self) -> tuple[ReleaseSpec | None, ReleaseSpec | None]:
        """The active release and the candidate, if any."""

    def recent_images(self, limit: int) -> list[Path]:
        """Recently processed images still on disk, for the activation smoke run."""

    def status(self) -> dict:
        """Health summary for the reported state (frames, errors, queue depth, backends)."""
