"""Linux inotify on one directory, through ctypes: the folder watcher sleeps until a file is renamed into (or
closed after writing in) its folder instead of for a whole `poll_s`, so a new file is picked up at once. What the
watcher does on waking is unchanged (it scans the folder); where inotify is missing or refused (another OS, the
watch limit reached) the watcher polls as before."""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import select
import threading
import time
from pathlib import Path

log = logging.getLogger("shadowline.edge.folder")

IN_CLOSE_WRITE = 0x00000008
IN_MOVED_TO = 0x00000080
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
STOP_CHECK_S = 0.1  # a stop is noticed within this while waiting (the watcher's stop is an Event set elsewhere)


class DirectoryEvents:
    """Wakes `wait` when a file is renamed into or closed after writing in `path` (not its subfolders)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    @classmethod
    def open(cls, path: Path) -> DirectoryEvents | None:
        """None where inotify cannot be used (then poll)."""
        if platform.system() != "Linux":
            return None
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
            if fd < 0:
                raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
            if libc.inotify_add_watch(fd, os.fsencode(path), IN_CLOSE_WRITE | IN_MOVED_TO) < 0:
                err = ctypes.get_errno()
                os.close(fd)
                raise OSError(err, os.strerror(err))
        except (OSError, AttributeError) as err:
            log.info("no inotify on %s (%s): polling it every poll_s", path, err)
            return None
        return cls(fd)

    def wait(self, timeout: float, stop: threading.Event) -> bool:
        """Wait up to `timeout` for an event (True) or until `stop` is set; consumes the pending events."""
        deadline = time.monotonic() + timeout
        while not stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            ready, _, _ = select.select([self.fd], [], [], min(left, STOP_CHECK_S))
            if ready:
                self._drain()
                return True
        return False

    def _drain(self) -> None:
        try:
            while os.read(self.fd, 65536):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass
