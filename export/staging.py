"""A staging folder that never outlives a failed or stopped export, whatever stops it.

SIGINT already raises KeyboardInterrupt, but SIGTERM and SIGHUP end the process without unwinding, which left the
hidden staging folder behind. While an export runs, all three raise `Interrupted` instead, so the cleanup below runs;
a second signal during that cleanup is ignored rather than allowed to cut it short.
"""

from __future__ import annotations

import shutil
import signal
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from runtime.errors import Interrupted

SIGNALS = tuple(s for s in (getattr(signal, n, None) for n in ("SIGINT", "SIGTERM", "SIGHUP")) if s is not None)


@contextmanager
def signals_raise() -> Iterator[None]:
    """Within the block, SIGINT/SIGTERM/SIGHUP raise Interrupted (main thread only: Python delivers signals there;
    elsewhere the block runs unchanged)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def handler(signum: int, _frame: FrameType | None) -> None:
        if received:  # already unwinding: let the cleanup finish
            return
        received.append(signum)
        raise Interrupted(signum)

    previous = {s: signal.signal(s, handler) for s in SIGNALS}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextmanager
def staging_dir(out_dir: Path, bundle_id: str) -> Iterator[Path]:
    """A fresh hidden folder beside the destination; removed when the block raises anything (a signal included).
    On success the block has moved it into place (or the caller removes what is left)."""
    with signals_raise():
        # The name is chosen before the folder exists, so a signal at any point after mkdir finds it to remove.
        staging = Path(out_dir) / f".{bundle_id}.staging-{uuid.uuid4().hex[:12]}"
        try:
            staging.mkdir(mode=0o700)
            yield staging
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
