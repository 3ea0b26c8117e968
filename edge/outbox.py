"""The device outbox: records waiting for the broker, in the daemon's own SQLite database.

A record is enqueued in the same transaction that commits it (so a prediction is never committed without its
outbox row), and a row is deleted only after the broker acknowledged the batch that carried it (QoS 1 PUBACK).
"""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

DDL = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,          -- the record's UUID (ingest deduplicates on it)
    kind TEXT NOT NULL,               -- predictions | reviews | metrics | alerts | events
    payload TEXT NOT NULL,            -- the record as JSON (fleet.protocol record model)
    size INTEGER NOT NULL,            -- bytes of payload, for the disk budget
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_kind_seq ON outbox(kind, seq);
CREATE TABLE IF NOT EXISTS outbox_losses (
    kind TEXT PRIMARY KEY,            -- records dropped by the overflow policy, never silently
    dropped INTEGER NOT NULL DEFAULT 0,
    last_dropped_at REAL
);
"""

KINDS = ("predictions", "reviews", "metrics", "alerts", "events")


def ensure_schema(conn: sqlite3.Connection) -> None:
    conn.executescript(DDL)


def enqueue(conn: sqlite3.Connection, kind: str, record: dict[str, Any]) -> None:
    """Add `record` (with an `id`) to the outbox inside the caller's open transaction. Idempotent by id."""
    if kind not in KINDS:
        raise ValueError(f"unknown outbox kind {kind!r}")
    payload = json.dumps(record, separators=(",", ":"))
    conn.execute("INSERT OR IGNORE INTO outbox (id, kind, payload, size, created_at) VALUES (?, ?, ?, ?, ?)",
                 (record["id"], kind, payload, len(payload), time.time()))
