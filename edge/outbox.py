"""The device outbox: records waiting for the broker, in the daemon's own SQLite database.

A record is enqueued in the same transaction that commits it (so a prediction is never committed without its
outbox row), and a row is deleted only after the broker acknowledged the batch that carried it (QoS 1 PUBACK).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleet.protocol import Batch, RecordKind

DDL = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,          -- the record's UUID (ingest deduplicates on it)
    kind TEXT NOT NULL,               -- a fleet.protocol.RecordKind
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

MQTT_ERR_QUEUE_SIZE = 15  # paho.mqtt.client.MQTTErrorCode.MQTT_ERR_QUEUE_SIZE

KINDS: tuple[RecordKind, ...] = tuple(RecordKind)


def ensure_schema(conn: sqlite3.Connection) -> None:
    conn.executescript(DDL)


def enqueue(conn: sqlite3.Connection, kind: RecordKind | str, record: dict[str, Any]) -> None:
    """Add `record` (with an `id`) to the outbox inside the caller's open transaction. Idempotent by id."""
    try:
        kind = RecordKind(kind)
    except ValueError:
        raise ValueError(f"unknown outbox kind {kind!r}; one of {', '.join(KINDS)}") from None
    payload = json.dumps(record, separators=(",", ":"))
    conn.execute("INSERT OR IGNORE INTO outbox (id, kind, payload, size, created_at) VALUES (?, ?, ?, ?, ?)",
                 (record["id"], kind, payload, len(payload), time.time()))


# -- disk budget and overflow policy -----------------------------------------------------------------------------
# When the payloads in the outbox exceed the budget (a device offline for days), the oldest rows are dropped in
# this order of kinds: metrics first (windowed, the next window supersedes them), then predictions (the bulk; each
# is one frame of many), then events, alerts, and reviews last (an inspector's verdict cannot be produced again).
# Every drop is counted per kind in `outbox_losses` and reported as an `outbox_overflow` event: never silent.
OVERFLOW_ORDER = (RecordKind.METRICS, RecordKind.PREDICTIONS, RecordKind.EVENTS, RecordKind.ALERTS,
                  RecordKind.REVIEWS)


def pending(conn: sqlite3.Connection) -> dict[str, int]:
    return dict(conn.execute("SELECT kind, COUNT(*) FROM outbox GROUP BY kind").fetchall())


def losses(conn: sqlite3.Connection) -> dict[str, int]:
    return dict(conn.execute("SELECT kind, dropped FROM outbox_losses WHERE dropped > 0").fetchall())


def enforce_budget(conn: sqlite3.Connection, budget_bytes: int,
                   keep: set[int] | frozenset[int] = frozenset()) -> dict[str, int]:
    """Drop the oldest rows, by OVERFLOW_ORDER, until the payloads fit `budget_bytes`; count the drops. Rows in
    `keep` (batches in flight) are not dropped. Returns rows dropped per kind (empty when within budget)."""
    total = conn.execute("SELECT COALESCE(SUM(size), 0) FROM outbox").fetchone()[0]
    excess = total - budget_bytes
    dropped: dict[str, int] = {}
    if excess <= 0:
        return dropped
    with conn:
        for kind in OVERFLOW_ORDER:
            victims: list[int] = []
            for seq, size in conn.execute("SELECT seq, size FROM outbox WHERE kind = ? ORDER BY seq", (kind,)):
                if excess <= 0:
                    break
                if seq in keep:
                    continue
                victims.append(seq)
                excess -= size
            if victims:
                conn.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in victims])
                conn.execute("INSERT INTO outbox_losses (kind, dropped, last_dropped_at) VALUES (?, ?, ?) "
                             "ON CONFLICT(kind) DO UPDATE SET dropped = dropped + excluded.dropped, "
                             "last_dropped_at = excluded.last_dropped_at", (kind, len(victims), time.time()))
                dropped[kind] = len(victims)
            if excess <= 0:
                break
    return dropped


def connect(db_path: str | Path) -> sqlite3.Connection:
    """A connection of its own for the publisher (the daemon writes through another one; WAL lets both work)."""
    conn = sqlite3.connect(str(db_path), timeout=30, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    ensure_schema(conn)
    return conn


# -- publisher ---------------------------------------------------------------------------------------------------
@dataclass
class _InFlight:
    info: Any  # paho MQTTMessageInfo
    seqs: list[int]
    kind: RecordKind
    sent_at: float


@dataclass
class PublisherStats:
    batches: int = 0
    records: int = 0
    dropped: dict[str, int] = field(default_factory=dict)


class Publisher:
    """Drains the outbox into `Batch` messages over QoS 1, deleting rows only once the broker acknowledged them.

    Rows of a batch in flight when the connection drops stay in the table; paho re-sends the unacknowledged
    message on reconnect, and a restarted device sends them again, so delivery is at least once and ingest
    deduplicates by record id."""

    def __init__(self, db_path: Path, client: Any, topics: Any, device: str, *, batch_size: int = 200,
                 budget_bytes: int = 512 << 20, window: int = 8, poll_s: float = 0.2,
                 on_overflow: Callable[[dict[str, int]], None] | None = None) -> None:
        self.db_path, self.client, self.topics, self.device = Path(db_path), client, topics, device
        self.batch_size, self.budget_bytes, self.window, self.poll_s = batch_size, budget_bytes, window, poll_s
        self.on_overflow = on_overflow
        self.stats = PublisherStats()
        self._inflight: list[_InFlight] = []
        self._sent_upto: dict[RecordKind, int] = {}
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._db_lock = threading.RLock()
        self._acked: set[int] = set()
        self._hub: Any = None
        self._last_budget = 0.0

    def start(self, hub: Any = None) -> None:
        """Drain on a thread of its own, or, given a `hub` (edge.agent.hub.Hub), on the hub's one outbox thread,
        which calls `pump()` whenever this publisher is woken: a row enqueued, a PUBACK, a (re)connection."""
        self._conn = connect(self.db_path)
        self._hub = hub
        if hub is not None:
            hub.wake(self)
            return
        self._thread = threading.Thread(target=self._loop, name=f"outbox-{self.device}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        self._hub = None
        if self._thread is not None:
            self._thread.join(timeout)
        with self._db_lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def enqueue(self, kind: RecordKind | str, record: dict[str, Any]) -> None:
        """Enqueue through the publisher's own connection (for the agent's events; the daemon uses its own)."""
        with self._db_lock:
            if self._conn is None:
                raise RuntimeError("publisher not started")
            with self._conn:
                enqueue(self._conn, kind, record)
        self.wake()

    def wake(self) -> None:
        """New rows or a new connection: look now instead of at the next poll."""
        self._wake.set()
        hub = self._hub
        if hub is not None:
            hub.wake(self)

    def _loop(self) -> None:
        while not self._stop.is_set():
            if not self.pump():
                self._wake.wait(self.poll_s)
                self._wake.clear()

    def pump(self) -> bool:
        """One round: enforce the budget (at most once a second), settle acknowledged batches, send more while the
        window allows. True if anything moved."""
        with self._db_lock:
            if self._conn is None or self._stop.is_set():
                return False
            try:
                if time.monotonic() - self._last_budget > 1.0:
                    self._last_budget = time.monotonic()
                    self._enforce()
                progressed = self._settle()
                if self.client.is_connected():
                    progressed |= self._fill()
                return progressed
            except sqlite3.Error as err:
                # a locked or full disk: keep the rows, try again later
                logging.getLogger(__name__).warning("outbox: %s", err)
                if self._hub is not None:
                    self._hub.call_later(self.poll_s, self.wake)
                return False

    def _enforce(self) -> None:
        assert self._conn is not None
        keep = {s for f in self._inflight for s in f.seqs}
        dropped = enforce_budget(self._conn, self.budget_bytes, keep)
        if dropped:
            for kind, n in dropped.items():
                self.stats.dropped[kind] = self.stats.dropped.get(kind, 0) + n
            logging.getLogger(__name__).warning("outbox over its budget: dropped %s", dropped)
            if self.on_overflow is not None:
                self.on_overflow(dropped)

    def _fill(self) -> bool:
        assert self._conn is not None
        sent = False
        while len(self._inflight) < self.window:
            row: tuple[int, RecordKind] | None = None
            for kind in KINDS:
                r = self._conn.execute("SELECT MIN(seq) FROM outbox WHERE kind = ? AND seq > ?",
                                       (kind, self._sent_upto.get(kind, 0))).fetchone()
                if r[0] is not None and (row is None or r[0] < row[0]):
                    row = (r[0], kind)
            if row is None:
                return sent
            kind = row[1]
            rows = self._conn.execute("SELECT seq, payload FROM outbox WHERE kind = ? AND seq > ? ORDER BY seq "
                                      "LIMIT ?", (kind, self._sent_upto.get(kind, 0), self.batch_size)).fetchall()
            batch = Batch(device=self.device, kind=kind, records=[json.loads(p) for _, p in rows])
            payload = json.dumps(batch.model_dump(mode="json", by_alias=True), separators=(",", ":"))
            info = self.client.publish(self.topics.device(self.device, kind), payload, qos=1)
            seqs = [s for s, _ in rows]
            self._sent_upto[kind] = seqs[-1]
            self._inflight.append(_InFlight(info, seqs, kind, time.monotonic()))
            sent = True
        return sent

    def on_publish(self, client: Any, userdata: Any, mid: int, *rest: Any) -> None:
        """paho callback (PUBACK for QoS 1). A message re-sent after a reconnect keeps its mid."""
        with self._lock:
            self._acked.add(mid)
        self.wake()

    def _settle(self) -> bool:
        """Delete the rows of every batch the broker acknowledged (PUBACK)."""
        assert self._conn is not None
        with self._lock:
            done = [f for f in self._inflight if f.info.mid in self._acked]
            self._acked -= {f.info.mid for f in done}
        lost = [f for f in self._inflight if f.info.rc == MQTT_ERR_QUEUE_SIZE]
        for f in lost:  # paho refused to queue it: offer those rows again
            self._sent_upto[f.kind] = min(self._sent_upto.get(f.kind, 0), f.seqs[0] - 1)
        if done:
            with self._conn:
                self._conn.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for f in done for s in f.seqs])
            for f in done:
                self.stats.batches += 1
                self.stats.records += len(f.seqs)
        self._inflight = [f for f in self._inflight if f not in done and f not in lost]
        return bool(done)

    def drained(self) -> bool:
        """Nothing in flight and no row left (reads through a connection of its own: any thread may ask)."""
        if self._inflight:
            return False
        conn = sqlite3.connect(str(self.db_path), timeout=30)
        try:
            return conn.execute("SELECT 1 FROM outbox LIMIT 1").fetchone() is None
        finally:
            conn.close()
