"""The device store: one SQLite database (WAL) with predictions, reviews, kept images, action deliveries and the
outbox. A frame counts as processed only when its prediction record is committed; the outbox row of every record
is written in the same transaction (edge.outbox)."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge import outbox
from fleet.protocol import EventRecord, MetricsRecord, PredictionRecord, RecordKind, ReviewRecord
from runtime.errors import Conflict, NotFound

DDL = """
CREATE TABLE IF NOT EXISTS predictions (
    id TEXT PRIMARY KEY,
    frame_key TEXT,                 -- the source's identity of the frame (folder file + size + mtime); restart-safe
    role TEXT NOT NULL,             -- active | candidate
    created_at TEXT NOT NULL,
    source TEXT NOT NULL,
    release TEXT NOT NULL,
    revision INTEGER NOT NULL,
    mode TEXT NOT NULL,
    decision TEXT NOT NULL,
    top_label TEXT,
    top_score REAL,
    flagged TEXT NOT NULL,          -- JSON [[class, score], ...]
    disagrees_with TEXT,
    error TEXT,
    image_path TEXT,
    record TEXT NOT NULL            -- the whole fleet.protocol.PredictionRecord as JSON
);
CREATE UNIQUE INDEX IF NOT EXISTS predictions_frame ON predictions(frame_key, role) WHERE frame_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS predictions_created ON predictions(created_at);
CREATE TABLE IF NOT EXISTS reviews (
    id TEXT PRIMARY KEY,
    prediction_id TEXT NOT NULL REFERENCES predictions(id),
    created_at TEXT NOT NULL,
    verdict TEXT NOT NULL,
    override INTEGER NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS reviews_prediction ON reviews(prediction_id);
CREATE TABLE IF NOT EXISTS kept_images (
    prediction_id TEXT PRIMARY KEY,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    reasons TEXT NOT NULL,          -- JSON list: flagged, near_threshold, disagreement, sampled, reviewed, error
    pinned INTEGER NOT NULL DEFAULT 0,  -- an inspector touched it: evicted last
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    prediction_id TEXT NOT NULL,
    channel TEXT NOT NULL,          -- webhook | work_order_mqtt
    state TEXT NOT NULL,            -- pending | delivered | failed
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    next_at REAL NOT NULL,
    created_at REAL NOT NULL,
    delivered_at REAL,
    payload TEXT NOT NULL,
    UNIQUE (prediction_id, channel)
);
CREATE TABLE IF NOT EXISTS delivery_attempts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id INTEGER NOT NULL REFERENCES deliveries(id),
    at REAL NOT NULL,
    ok INTEGER NOT NULL,
    detail TEXT
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL DEFAULT 0
);
"""


@dataclass
class FrameCommit:
    """Everything one frame commits at once: its records (active first), its identity at the source, kept images
    (prediction id -> (path, bytes, reasons)) and action deliveries ((prediction id, channel, payload))."""

    records: list[PredictionRecord]
    frame_key: str | None = None
    kept: dict[str, tuple[Path, int, list[str]]] = field(default_factory=dict)
    deliveries: list[tuple[str, str, dict]] = field(default_factory=list)


class Store:
    """Thread-safe access to the device database; every write is one short transaction."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self.conn = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=30)
        self.conn.row_factory = sqlite3.Row
        self.conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode survives a process crash (kill -9); only an OS crash can lose the last commits.
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute("PRAGMA foreign_keys=ON")
        self.conn.executescript(DDL)
        outbox.ensure_schema(self.conn)

    def close(self) -> None:
        with self._lock:
            self.conn.close()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")

    def query(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self.conn.execute(sql, args).fetchall()

    # -- predictions --------------------------------------------------------------------------------------------
    def has_frame(self, frame_key: str) -> bool:
        return bool(self.query("SELECT 1 FROM predictions WHERE frame_key = ? AND role = 'active'", (frame_key,)))

    def commit_frame(self, records: list[PredictionRecord], frame_key: str | None,
                     kept: dict[str, tuple[Path, int, list[str]]] | None = None,
                     deliveries: list[tuple[str, str, dict]] | None = None) -> bool:
        """Commit a frame's records (active first, then candidate), their outbox rows, kept images and pending
        action deliveries in one transaction. Returns False (and writes nothing) if the frame was committed before."""
        return self.commit_frames([FrameCommit(records, frame_key, kept or {}, deliveries or [])])[0]

    def commit_frames(self, frames: list[FrameCommit]) -> list[bool]:
        """Commit several frames in one transaction (a group commit: one WAL append and lock for the lot). Per
        frame: True when committed, False when its frame key was committed before (nothing of it is written)."""
        done: list[bool] = []
        with self.tx() as c:
            for f in frames:
                done.append(self._commit_one(c, f))
        return done

    def _commit_one(self, c: sqlite3.Connection, f: FrameCommit) -> bool:
        if f.frame_key is not None and c.execute(
                "SELECT 1 FROM predictions WHERE frame_key = ? AND role = 'active'", (f.frame_key,)).fetchone():
            return False
        for r in f.records:
            d = r.model_dump(mode="json")
            text = outbox.dumps(d)  # the record column and the outbox row hold the same text: serialised once
            c.execute(
                "INSERT INTO predictions (id, frame_key, role, created_at, source, release, revision, mode, "
                "decision, top_label, top_score, flagged, disagrees_with, error, image_path, record) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (r.id, f.frame_key, r.role, r.created_at, r.source, r.release, r.revision, r.mode, r.decision,
                 r.top_label, r.top_score, json.dumps(d["flagged"]), r.disagrees_with, r.error,
                 str(f.kept[r.id][0]) if r.id in f.kept else None, text))
            outbox.enqueue(c, RecordKind.PREDICTIONS, d, text)
        now = time.time()
        for pid, (path, size, reasons) in f.kept.items():
            c.execute("INSERT OR REPLACE INTO kept_images (prediction_id, path, size, reasons, created_at) "
                      "VALUES (?,?,?,?,?)", (pid, str(path), size, json.dumps(reasons), now))
        for pid, channel, payload in f.deliveries:
            c.execute("INSERT OR IGNORE INTO deliveries (prediction_id, channel, state, next_at, created_at, "
                      "payload) VALUES (?,?,?,?,?,?)", (pid, channel, "pending", now, now, json.dumps(payload)))
        return True

    def add_metrics(self, record: MetricsRecord) -> None:
        """A windowed metrics record into the outbox (the agent sends it to the fleet)."""
        with self.tx() as c:
            outbox.enqueue(c, RecordKind.METRICS, record.model_dump(mode="json"))

    def prediction(self, pid: str) -> dict[str, Any]:
        rows = self.query("SELECT record, image_path FROM predictions WHERE id = ?", (pid,))
        if not rows:
            raise NotFound(f"no prediction {pid!r}")
        d = json.loads(rows[0]["record"])
        d["image_path"] = rows[0]["image_path"]
        return d

    def predictions(self, limit: int = 100, decision: str | None = None, role: str | None = None,
                    source: str | None = None, since: str | None = None) -> list[dict[str, Any]]:
        where, args = [], []
        for col, val in (("decision", decision), ("role", role), ("source", source)):
            if val is not None:
                where.append(f"{col} = ?")
                args.append(val)
        if since:
            where.append("created_at > ?")
            args.append(since)
        sql = "SELECT record FROM predictions" + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY rowid DESC LIMIT ?"
        return [json.loads(r["record"]) for r in self.query(sql, (*args, limit))]

    def count(self, sql_where: str = "1", args: tuple = ()) -> int:
        return int(self.query(f"SELECT COUNT(*) FROM predictions WHERE {sql_where}", args)[0][0])

    # -- reviews ------------------------------------------------------------------------------------------------
    def review_queue(self, limit: int = 50) -> list[dict[str, Any]]:
        """Active predictions with a kept image and no verdict yet, flagged and uncertain first."""
        rows = self.query(
            "SELECT p.record, k.reasons FROM predictions p JOIN kept_images k ON k.prediction_id = p.id "
            "WHERE p.role = 'active' AND NOT EXISTS (SELECT 1 FROM reviews r WHERE r.prediction_id = p.id) "
            "ORDER BY (p.decision = 'flag') DESC, p.rowid DESC LIMIT ?", (limit,))
        return [{**json.loads(r["record"]), "kept_reasons": json.loads(r["reasons"])} for r in rows]

    def add_review(self, review: ReviewRecord) -> None:
        d = review.model_dump(mode="json")
        with self.tx() as c:
            if not c.execute("SELECT 1 FROM predictions WHERE id = ?", (review.prediction_id,)).fetchone():
                raise NotFound(f"no prediction {review.prediction_id!r}")
            if c.execute("SELECT 1 FROM reviews WHERE id = ?", (review.id,)).fetchone():
                raise Conflict(f"review {review.id} exists already")
            c.execute("INSERT INTO reviews (id, prediction_id, created_at, verdict, override, record) "
                      "VALUES (?,?,?,?,?,?)", (review.id, review.prediction_id, review.created_at, review.verdict,
                                               int(review.override), json.dumps(d)))
            # Everything an inspector touched is kept (pinned) by retention.
            c.execute("UPDATE kept_images SET pinned = 1 WHERE prediction_id = ?", (review.prediction_id,))
            outbox.enqueue(c, RecordKind.REVIEWS, d)

    def reviews(self, limit: int = 100, prediction_id: str | None = None) -> list[dict[str, Any]]:
        if prediction_id:
            rows = self.query("SELECT record FROM reviews WHERE prediction_id = ? ORDER BY rowid DESC LIMIT ?",
                              (prediction_id, limit))
        else:
            rows = self.query("SELECT record FROM reviews ORDER BY rowid DESC LIMIT ?", (limit,))
        return [json.loads(r["record"]) for r in rows]

    # -- events and counters ------------------------------------------------------------------------------------
    def event(self, device: str, kind: str, detail: dict[str, Any]) -> None:
        with self.tx() as c:
            outbox.enqueue(c, RecordKind.EVENTS, EventRecord(device=device, kind=kind, detail=detail).model_dump(mode="json"))

    def bump(self, name: str, by: int = 1, conn: sqlite3.Connection | None = None) -> None:
        sql = "INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = value + ?"
        if conn is not None:
            conn.execute(sql, (name, by, by))
        else:
            with self.tx() as c:
                c.execute(sql, (name, by, by))

    def counter(self, name: str) -> int:
        rows = self.query("SELECT value FROM counters WHERE name = ?", (name,))
        return int(rows[0][0]) if rows else 0
