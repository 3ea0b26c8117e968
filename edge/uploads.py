"""Inspectors' images to the fleet: the kept images of overridden and near-threshold cases (the cases
`uploads.cases` names) are uploaded over HTTP(S) to the fleet's `PUT /api/images/{sha256}` with the device token,
within a bandwidth and a disk budget.

- Spool: an image to upload is linked (or copied) from the kept images into `uploads.spool_dir` when its case is
  known (near-threshold at commit, an override when the inspector's verdict arrives), so that retention may evict
  its own copy without losing the upload. The spool holds at most `disk_budget_mb`: over it, the lowest-priority
  oldest waiting images are dropped (counted); overrides outrank the rest.
- Upload: one image at a time, its bytes paced to `bandwidth_bps` (a token bucket over the body's chunks). The URL
  names the content's sha256 and the query its prediction id, so a retried or repeated upload is idempotent: the
  fleet stores a blob once and a (device, prediction) once. 2xx: done, the spool file goes. 507 (the fleet's own
  disk budget), 429, 5xx and network errors: retried with backoff. Other 4xx: refused for good (counted, with
  the fleet's reason).
- State lives in the device database (`uploads`, `upload_marks`), so a restart resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge.config import UploadsConfig
from edge.store import Store
from runtime.errors import ConfigError

if TYPE_CHECKING:  # httpx (and the CLI extras it pulls in) loads with the uploader's thread, not at daemon start
    import httpx
    from prometheus_client.core import Metric

log = logging.getLogger("shadowline.edge.uploads")

DDL = """
CREATE TABLE IF NOT EXISTS uploads (
    prediction_id TEXT PRIMARY KEY,
    path TEXT NOT NULL,             -- the spooled copy
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    reasons TEXT NOT NULL,          -- JSON list of cases: override, near_threshold, ...
    priority INTEGER NOT NULL,      -- 2 override, 1 the rest: dropped last when the spool is full
    state TEXT NOT NULL,            -- pending | done | refused | dropped
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL DEFAULT 0,
    last_error TEXT,
    created_at REAL NOT NULL,
    done_at REAL
);
CREATE INDEX IF NOT EXISTS uploads_pending ON uploads(state, priority, created_at);
CREATE TABLE IF NOT EXISTS upload_marks (name TEXT PRIMARY KEY, last_rowid INTEGER NOT NULL);
"""
CHUNK = 16 << 10
OVERRIDE = "override"


class Throttle:
    """A token bucket: take(n) returns once n bytes may go at `rate` bytes/s, with at most `burst` bytes at once."""

    def __init__(self, rate: float, burst: float, stop: threading.Event) -> None:
        self.rate, self.burst, self.stop = rate, burst, stop
        self.tokens = burst
        self.t = time.monotonic()

    def take(self, n: int) -> bool:
        """False when stopped while waiting."""
        while True:
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.t) * self.rate)
            self.t = now
            if self.tokens >= n:
                self.tokens -= n
                return True
            if self.stop.wait((n - self.tokens) / self.rate):
                return False


@dataclass
class UploadCounts:
    scans: int = 0  # passes over the kept images and verdicts looking for new cases
    spooled: int = 0
    uploaded: int = 0
    uploaded_bytes: int = 0
    already_there: int = 0  # the fleet had the (device, prediction) already: a retry after a lost answer
    refused: int = 0
    dropped: int = 0  # left out to stay within the spool's disk budget
    missing: int = 0  # the kept image was gone before it could be spooled
    retries: int = 0


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class Uploader:
    def __init__(self, cfg: UploadsConfig, store: Store, device: str, stop: threading.Event,
                 token: str | None = None) -> None:
        self.cfg, self.store, self.device, self.stop = cfg, store, device, stop
        self.token = token if token is not None else cfg.read_token()
        if not self.token:
            raise ConfigError("uploads: no device token (set uploads.token_file, or fleet.http_token)")
        self.spool = Path(cfg.spool_dir)
        self.spool.mkdir(parents=True, exist_ok=True)
        with store.tx() as c:
            for statement in DDL.split(";"):
                if statement.strip():
                    c.execute(statement)
        self.counts = UploadCounts()
        self.last_error: str | None = None
        self.wake = threading.Event()
        self.throttle = Throttle(cfg.bandwidth_bps, max(cfg.bandwidth_bps, CHUNK), stop)
        self.thread = threading.Thread(target=self._run, name="uploads", daemon=True)

    def start(self) -> Uploader:
        self.thread.start()
        return self

    # -- what to upload -------------------------------------------------------------------------------------------
    def _mark(self, name: str) -> int:
        rows = self.store.query("SELECT last_rowid FROM upload_marks WHERE name = ?", (name,))
        return int(rows[0][0]) if rows else 0

    def scan(self) -> int:
        """Spool the images of new cases: kept images whose reasons are among `cases`, and the kept images of new
        overriding verdicts. Returns how many were spooled."""
        cases: set[str] = set(self.cfg.cases)
        found: list[tuple[int, str, str, str, list[str]]] = []  # (rowid, mark, prediction, path, reasons)
        # overrides first: spooled at their rank, near-threshold images found in the same pass cannot push them out
        if OVERRIDE in cases:
            mark = self._mark("reviews")
            for row in self.store.query(
                    "SELECT r.rowid, r.prediction_id, k.path FROM reviews r LEFT JOIN kept_images k "
                    "ON k.prediction_id = r.prediction_id WHERE r.rowid > ? AND r.override = 1 ORDER BY r.rowid "
                    "LIMIT 500", (mark,)):
                found.append((row["rowid"], "reviews", row["prediction_id"], row["path"] or "", [OVERRIDE]))
        mark = self._mark("kept_images")
        for row in self.store.query("SELECT rowid, prediction_id, path, reasons FROM kept_images WHERE rowid > ? "
                                    "ORDER BY rowid LIMIT 500", (mark,)):
            why = sorted(cases & set(json.loads(row["reasons"])))
            found.append((row["rowid"], "kept_images", row["prediction_id"], row["path"], why))
        n = 0
        for rowid, mark_name, pid, path, why in found:
            if why and self._spool(pid, Path(path) if path else None, why):
                n += 1
            with self.store.tx() as c:
                c.execute("INSERT INTO upload_marks (name, last_rowid) VALUES (?, ?) ON CONFLICT(name) DO UPDATE "
                          "SET last_rowid = max(last_rowid, excluded.last_rowid)", (mark_name, rowid))
        self._bump("scans")
        return n

    def _spool(self, pid: str, source: Path | None, reasons: list[str]) -> bool:
        priority = 2 if OVERRIDE in reasons else 1
        have = self.store.query("SELECT reasons, state FROM uploads WHERE prediction_id = ?", (pid,))
        if have:  # known already (e.g. near-threshold, now overridden too): only its reasons and rank change
            merged = sorted(set(json.loads(have[0]["reasons"])) | set(reasons))
            with self.store.tx() as c:
                c.execute("UPDATE uploads SET reasons = ?, priority = max(priority, ?) WHERE prediction_id = ?",
                          (json.dumps(merged), priority, pid))
            return False
        if source is None or not source.is_file():
            self._bump("missing")
            return False
        dest = self.spool / f"{pid}{source.suffix.lower()}"
        size = source.stat().st_size
        if not self._make_room(size, priority):
            self._bump("dropped")
            return False
        tmp = dest.with_name(f".{dest.name}.tmp")
        try:
            os.link(source, tmp)  # same file system: no second copy of the bytes
        except OSError:
            shutil.copyfile(source, tmp)
        os.replace(tmp, dest)
        sha = file_sha256(dest)
        with self.store.tx() as c:
            c.execute("INSERT INTO uploads (prediction_id, path, sha256, size, reasons, priority, state, created_at) "
                      "VALUES (?, ?, ?, ?, ?, ?, 'pending', ?)",
                      (pid, str(dest), sha, size, json.dumps(reasons), priority, time.time()))
        self._bump("spooled")
        self.wake.set()
        return True

    def spool_bytes(self) -> int:
        return int(self.store.query("SELECT COALESCE(SUM(size), 0) FROM uploads WHERE state = 'pending'")[0][0])

    def _make_room(self, size: int, priority: int) -> bool:
        """Drop waiting images of lower (or equal) priority, oldest first, until `size` fits the budget; False if
        it cannot fit without dropping something that outranks it."""
        budget = int(self.cfg.disk_budget_mb * (1 << 20))
        if size > budget:
            return False
        used = self.spool_bytes()
        while used + size > budget:
            rows = self.store.query("SELECT prediction_id, path, size FROM uploads WHERE state = 'pending' AND "
                                    "priority <= ? ORDER BY priority, created_at LIMIT 1", (priority,))
            if not rows:
                return False
            self._finish(rows[0]["prediction_id"], "dropped", "spool over its disk budget")
            Path(rows[0]["path"]).unlink(missing_ok=True)
            self._bump("dropped")
            used -= rows[0]["size"]
        return True

    # -- sending --------------------------------------------------------------------------------------------------
    def _bump(self, field: str, by: int = 1) -> None:
        setattr(self.counts, field, getattr(self.counts, field) + by)

    def _finish(self, pid: str, state: str, error: str | None = None) -> None:
        with self.store.tx() as c:
            c.execute("UPDATE uploads SET state = ?, last_error = ?, done_at = ? WHERE prediction_id = ?",
                      (state, error, time.time(), pid))

    def _body(self, path: Path) -> Iterator[bytes]:
        with open(path, "rb") as fh:
            while chunk := fh.read(CHUNK):
                if not self.throttle.take(len(chunk)):
                    raise InterruptedError("stopping")
                yield chunk

    def send_one(self, client: httpx.Client) -> bool:
        """Upload the next waiting image; False when none is due."""
        rows = self.store.query("SELECT * FROM uploads WHERE state = 'pending' AND next_at <= ? "
                                "ORDER BY priority DESC, created_at LIMIT 1", (time.time(),))
        if not rows:
            return False
        row = rows[0]
        pid, path = row["prediction_id"], Path(row["path"])
        if not path.is_file():
            self._finish(pid, "refused", "spooled file disappeared")
            self._bump("missing")
            return True
        reasons = json.loads(row["reasons"])
        url = f"{self.cfg.url.rstrip('/')}/api/images/{row['sha256']}"
        params = {"prediction_id": pid, "reason": ",".join(reasons), "suffix": path.suffix.lower()}
        headers = {"Authorization": f"Bearer {self.token}", "Content-Length": str(row["size"]),
                   "Content-Type": "application/octet-stream"}
        import httpx

        try:
            r = client.put(url, params=params, headers=headers, content=self._body(path))
        except InterruptedError:
            return False
        except httpx.HTTPError as err:
            self._retry(pid, row["attempts"], f"{type(err).__name__}: {err}")
            return True
        if r.status_code in (200, 201):
            self._finish(pid, "done")
            path.unlink(missing_ok=True)
            if r.status_code == 201:
                self._bump("uploaded")
                self._bump("uploaded_bytes", row["size"])
            else:
                self._bump("already_there")
        elif r.status_code in (429, 507) or r.status_code >= 500:
            self._retry(pid, row["attempts"], f"HTTP {r.status_code}: {_reason(r)}")
        else:
            self.last_error = f"HTTP {r.status_code}: {_reason(r)}"
            log.error("fleet refused image %s: %s", pid, self.last_error)
            self._finish(pid, "refused", self.last_error)
            path.unlink(missing_ok=True)
            self._bump("refused")
        return True

    def _retry(self, pid: str, attempts: int, error: str) -> None:
        self.last_error = error
        self._bump("retries")
        delay = min(self.cfg.retry_backoff_s * (2 ** attempts), self.cfg.max_backoff_s)
        log.warning("upload of %s failed (%s); retrying in %.1fs", pid, error, delay)
        with self.store.tx() as c:
            c.execute("UPDATE uploads SET attempts = attempts + 1, next_at = ?, last_error = ? WHERE "
                      "prediction_id = ?", (time.time() + delay, error, pid))

    def client(self) -> httpx.Client:
        """The HTTP client uploads go through: the fleet's certificate checked against `ca_file` when set, else
        against the system's CAs."""
        import httpx

        verify: Any = ssl.create_default_context(cafile=str(self.cfg.ca_file)) if self.cfg.ca_file else True
        return httpx.Client(timeout=self.cfg.timeout_s, verify=verify)

    def _run(self) -> None:
        with self.client() as client:
            while not self.stop.is_set():
                try:
                    self.scan()
                    while not self.stop.is_set() and self.send_one(client):
                        pass
                except Exception as err:  # the database or the spool failing must not end the thread for good
                    self.last_error = f"{type(err).__name__}: {err}"
                    log.exception("uploads: %s", err)
                self.wake.wait(self.cfg.poll_s)
                self.wake.clear()

    def status(self) -> dict[str, Any]:
        states = {r[0]: r[1] for r in self.store.query("SELECT state, COUNT(*) FROM uploads GROUP BY state")}
        return {**asdict(self.counts), "pending": states.get("pending", 0), "spool_bytes": self.spool_bytes(),
                "last_error": self.last_error}


def _reason(r: httpx.Response) -> str:
    try:
        return str(r.json().get("error", r.text))[:300]
    except ValueError:
        return r.text[:300]


class UploadCollector:
    """The uploader's counts on the daemon's /metrics, read at scrape time (a collector: edge.metrics.Collector)."""

    HELP = {"uploaded": "Images uploaded to the fleet.", "uploaded_bytes": "Bytes of images uploaded to the fleet.",
            "already_there": "Uploads the fleet already had (a retry after a lost answer).",
            "refused": "Images the fleet refused for good (4xx other than 429).",
            "dropped": "Images left out to keep the upload spool within its disk budget.",
            "missing": "Images of a case that were gone before they could be spooled.",
            "retries": "Upload attempts that failed and were retried.", "spooled": "Images put in the spool.",
            "scans": "Passes over the kept images and verdicts looking for new cases."}

    def __init__(self, uploader: Uploader) -> None:
        self.uploader = uploader

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        st = self.uploader.status()
        for field, doc in self.HELP.items():
            name = {"uploaded_bytes": "shadowline_upload_bytes", "scans": "shadowline_upload_scans"}.get(
                field, f"shadowline_upload_images_{field}")
            yield CounterMetricFamily(name, doc, value=st[field])
        yield GaugeMetricFamily("shadowline_upload_pending_images", "Images waiting in the spool.", value=st["pending"])
        yield GaugeMetricFamily("shadowline_upload_spool_bytes", "Bytes of images waiting in the spool.",
                                value=st["spool_bytes"])
