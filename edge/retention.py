"""Which images are kept for review, and the disk budget they live in.

Kept: flagged frames, degraded frames (flagged for review because a stage fell behind or failed), frames with a score within a band around a threshold, candidate disagreements, a sampled
percentage of the rest, and (pinned, evicted last) everything an inspector touched. Over budget the oldest
unpinned images go first; every eviction is counted."""

from __future__ import annotations

import json
import os
import random
import threading
import time
from pathlib import Path

from edge.config import RetentionConfig
from edge.pipeline import FrameResult
from edge.store import Store

RESYNC_S = 10.0  # seconds between reads of the kept images' total from the store on the commit path


class Retention:
    def __init__(self, cfg: RetentionConfig, store: Store, rng: random.Random | None = None) -> None:
        self.cfg, self.store = cfg, store
        self.dir = Path(cfg.dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        # The kept images' total as the frame path last knew it: the bytes of each commit are added here, and the
        # store's SUM (which costs more with every image kept, and ran after every commit that kept one) is read
        # again at most every RESYNC_S seconds and by every enforce().
        self._used: int | None = None
        self._synced = 0.0
        self._day_dir: Path | None = None  # the day's folder, made once (not one mkdir per kept image)

    @property
    def budget_bytes(self) -> int:
        return int(self.cfg.budget_mb * 1024 * 1024)

    def reasons(self, result: FrameResult | None, error: bool = False) -> list[str]:
        """Why this frame's image should be kept (empty: not kept)."""
        why: list[str] = []
        if result is None:
            return ["error"] if error and self.cfg.errors else []
        if result.active.degraded:
            why.append("degraded")  # flagged for review because a stage could not decide: the inspector needs it
        if self.cfg.flagged and (result.active.decision == "flag"
                                 or (result.candidate is not None and result.candidate.decision == "flag")):
            why.append("flagged")
        if result.active.near_threshold or (result.candidate is not None and result.candidate.near_threshold):
            why.append("near_threshold")
        if self.cfg.disagreements and result.disagree:
            why.append("disagreement")
        if not why and self.cfg.sample_pct > 0 and self._rng.random() * 100 < self.cfg.sample_pct:
            why.append("sampled")
        return why

    def save(self, prediction_id: str, data: bytes, suffix: str,
             origin: tuple[Path, int, int] | None = None) -> tuple[Path, int]:
        """Keep the image before its record commits; a crash leaves at worst an orphan file, which `sweep_orphans`
        removes. `origin` (the file `data` was read from, with its size and mtime_ns then): the kept image is a hard
        link of that file when it is still the same file (same size and mtime), which writes no bytes; otherwise
        (another file system, no hard links there, the file gone or changed) the bytes are written."""
        day_dir = self.dir / time.strftime("%Y%m%d")
        if day_dir != self._day_dir:
            day_dir.mkdir(parents=True, exist_ok=True)
            self._day_dir = day_dir
        path = day_dir / f"{prediction_id}{suffix.lower() or '.img'}"
        if origin is not None and self._link(origin, path, len(data)):
            return path, len(data)
        # Temp name + rename without fsync: the record's commit is not fsynced either (synchronous=NORMAL), and an
        # fsync per kept image would cost the worker ~15 ms a frame on an SD card or eMMC.
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            tmp.write_bytes(data)
        except FileNotFoundError:  # the day's folder was removed since it was made (by hand, by a cleanup)
            day_dir.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(data)
        os.replace(tmp, path)
        return path, len(data)

    @staticmethod
    def _link(origin: tuple[Path, int, int], path: Path, size: int) -> bool:
        """Hard-link `origin` to `path` if it is still the file whose `size` bytes were read (a link costs a tenth
        of the CPU of writing a copy, and no bytes to write back to disk)."""
        src, src_size, mtime_ns = origin
        if src_size != size:
            return False
        try:
            os.link(src, path)
        except OSError:  # EXDEV, EPERM (no hard links on this file system, protected_hardlinks), gone, exists
            return False
        try:
            st = os.stat(path)
        except OSError:
            return False
        if (st.st_size, st.st_mtime_ns) == (size, mtime_ns):
            return True
        path.unlink(missing_ok=True)  # replaced or rewritten since it was read: keep the bytes that were decided
        return False

    def used_bytes(self) -> int:
        return int(self.store.query("SELECT COALESCE(SUM(size), 0) FROM kept_images")[0][0])

    def note_kept(self, size: int) -> bool:
        """Count `size` bytes of images whose records were just committed; True when the kept images may be over
        the budget (then call `enforce`). Reads the store's total again every RESYNC_S seconds, so images kept by
        another writer of the store are counted within that time."""
        with self._lock:
            now = time.monotonic()
            if self._used is None or now - self._synced >= RESYNC_S:
                self._used, self._synced = self.used_bytes(), now  # the committed images are in the SUM already
            else:
                self._used += size
            return self._used > self.budget_bytes

    def enforce(self) -> int:
        """Evict oldest images until under budget (unpinned first). Returns how many were evicted."""
        with self._lock:
            used, budget = self.used_bytes(), self.budget_bytes
            self._used, self._synced = used, time.monotonic()
            if used <= budget:
                return 0
            evicted = 0
            rows = self.store.query("SELECT prediction_id, path, size FROM kept_images "
                                    "ORDER BY pinned ASC, created_at ASC")
            for r in rows:
                if used <= budget:
                    break
                Path(r["path"]).unlink(missing_ok=True)
                with self.store.tx() as c:
                    c.execute("DELETE FROM kept_images WHERE prediction_id = ?", (r["prediction_id"],))
                    c.execute("UPDATE predictions SET image_path = NULL WHERE id = ?", (r["prediction_id"],))
                    self.store.bump("retention_evicted", 1, c)
                    self.store.bump("retention_evicted_bytes", int(r["size"]), c)
                used -= int(r["size"])
                evicted += 1
            self._used = used
            return evicted

    def sweep_orphans(self) -> int:
        """Remove image files with no committed record (written just before a crash)."""
        known = {r["path"] for r in self.store.query("SELECT path FROM kept_images")}
        removed = 0
        for p in self.dir.rglob("*"):
            if p.is_file() and str(p) not in known:
                p.unlink(missing_ok=True)
                removed += 1
        return removed

    def stats(self) -> dict:
        n = int(self.store.query("SELECT COUNT(*) FROM kept_images")[0][0])
        by_reason: dict[str, int] = {}
        for r in self.store.query("SELECT reasons FROM kept_images"):
            for reason in json.loads(r["reasons"]):
                by_reason[reason] = by_reason.get(reason, 0) + 1
        return {"kept": n, "bytes": self.used_bytes(), "budget_bytes": self.budget_bytes, "by_reason": by_reason,
                "evicted": self.store.counter("retention_evicted"),
                "evicted_bytes": self.store.counter("retention_evicted_bytes")}
