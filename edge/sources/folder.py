"""A watched folder: each new file is processed once, then moved to done/ (or failed/ with a .reason.txt).

Exactly once across kill -9: a file's key (name, size, mtime) is stored with its prediction record in the same
transaction. A file still in the folder whose key is already committed was processed just before a crash and is
only moved, never processed again; a file without a committed record is processed (again) from scratch.
"""

from __future__ import annotations

import logging
import os
import queue as queue_mod
import threading
import time
from collections.abc import Callable
from pathlib import Path

from edge.config import FolderSource
from edge.health import name_os_thread
from edge.sources import Frame, Outcome
from edge.sources.inotify import DirectoryEvents
from edge.sources.queue import FrameQueue
from runtime.fsio import atomic_write_text

log = logging.getLogger("shadowline.edge.folder")


def file_key(path: Path, st: os.stat_result) -> str:
    return f"folder:{path.name}:{st.st_size}:{st.st_mtime_ns}"


class FolderWatcher:
    def __init__(self, cfg: FolderSource, queue: FrameQueue, committed: Callable[[str], str | None],
                 stop: threading.Event) -> None:
        """`committed(key)` returns the decision of an already committed frame with that key, or None."""
        self.cfg, self.queue, self.committed, self.stop = cfg, queue, committed, stop
        self.path = Path(cfg.path)
        self.done = Path(cfg.done_dir or self.path / "done")
        self.failed = Path(cfg.failed_dir or self.path / "failed")
        for d in (self.path, self.done, self.failed):
            d.mkdir(parents=True, exist_ok=True)
        self._inflight: set[str] = set()
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name=f"folder:{self.path.name}", daemon=True)
        # Moves happen on their own thread so that the inference worker never waits on the file system.
        self._finished: queue_mod.Queue[tuple[Path, Outcome] | None] = queue_mod.Queue()
        self.mover = threading.Thread(target=self._move_loop, name=f"folder-mover:{self.path.name}", daemon=True)
        self.moved_done = 0
        self.moved_failed = 0
        self.recovered = 0

    def _done_callback(self, path: Path) -> Callable[[Outcome], None]:
        """What the processor calls once the frame read from `path` is settled: hand the move to the mover thread."""
        def done(out: Outcome) -> None:
            self._finished.put((path, out))
        return done

    def start(self) -> FolderWatcher:
        self.thread.start()
        self.mover.start()
        return self

    def _candidates(self) -> list[Path]:
        try:
            entries = sorted(os.scandir(self.path), key=lambda e: e.name)
        except OSError as err:
            log.error("cannot list %s: %s", self.path, err)
            return []
        # Writers put files in under a hidden or temporary name and rename them when complete.
        return [Path(e.path) for e in entries if e.is_file(follow_symlinks=False) and not e.name.startswith(".")
                and not e.name.endswith((".tmp", ".part", ".partial", ".crdownload"))]

    def scan_once(self) -> int:
        """Queue every settled new file once; returns how many were queued."""
        queued = 0
        now = time.time()
        for p in self._candidates():
            if self.stop.is_set():
                break
            with self._lock:
                if p.name in self._inflight:
                    continue
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            if now - st.st_mtime < self.cfg.settle_s:
                continue
            key = file_key(p, st)
            decision = self.committed(key)
            if decision is not None:
                self.recovered += 1
                self._move(p, decision, None)
                continue
            try:
                data = p.read_bytes()
            except OSError as err:
                log.warning("cannot read %s: %s (retrying next scan)", p, err)
                continue
            with self._lock:
                self._inflight.add(p.name)
            frame = Frame(source=f"folder:{p.name}", data=data, suffix=p.suffix, key=key,
                          on_done=self._done_callback(p), origin=(p, st.st_size, st.st_mtime_ns))
            if not self.queue.put(frame, self.stop):
                with self._lock:
                    self._inflight.discard(p.name)
                break
            queued += 1
        return queued

    def _finish(self, path: Path, out: Outcome) -> None:
        try:
            if out.decision != "retry":  # "retry": nothing was committed; the file stays for the next scan
                self._move(path, out.decision, out.error)
        finally:
            with self._lock:
                self._inflight.discard(path.name)

    def _move_loop(self) -> None:
        name_os_thread("folder-mover")
        while True:
            item = self._finished.get()
            if item is None:
                return
            try:
                self._finish(*item)
            except Exception:  # the file stays; its committed key makes the next scan move it
                log.exception("cannot move %s", item[0])

    def close(self) -> None:
        """Finish pending moves (called after the worker stopped)."""
        self._finished.put(None)
        self.mover.join(10)

    def _move(self, path: Path, decision: str, error: str | None) -> None:
        dest_dir = self.failed if decision == "error" else self.done
        dest = dest_dir / path.name
        if dest.exists():  # the same name came in again later: keep both
            dest = dest_dir / f"{path.stem}.{time.time_ns()}{path.suffix}"
        try:
            if error is not None:
                atomic_write_text(dest.with_name(dest.name + ".reason.txt"), error + "\n")
            # No fsync: the record's commit is not fsynced either (WAL, synchronous=NORMAL). After a power loss a
            # file that reappears in the folder is recognised by its committed key, or processed if that was lost.
            os.replace(path, dest)
        except FileNotFoundError:
            return
        if decision == "error":
            self.moved_failed += 1
        else:
            self.moved_done += 1

    def _run(self) -> None:
        # A file renamed or written into the folder wakes the next scan at once (inotify); `poll_s` still bounds
        # the wait, for files not yet settled and where inotify is missing.
        name_os_thread("folder")  # top -H and the throughput benchmark tell the watcher's CPU apart
        events = DirectoryEvents.open(self.path)
        try:
            while not self.stop.is_set():
                try:
                    self.scan_once()
                except Exception:  # a watcher that dies silently loses the folder: log and keep scanning
                    log.exception("folder scan failed")
                if events is not None:
                    events.wait(self.cfg.poll_s, self.stop)
                else:
                    self.stop.wait(self.cfg.poll_s)
        finally:
            if events is not None:
                events.close()
