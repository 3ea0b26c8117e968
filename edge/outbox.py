"""The device outbox: records waiting for the fleet, in the daemon's own SQLite database.

A record is enqueued in the same transaction that commits it (so a prediction is never committed without its
outbox row). A row leaves the outbox only once the fleet acknowledged it: by default on the fleet's commit
acknowledgement (`fleet.protocol.Ack` on the device's `acks` topic), since the broker's PUBACK only says the broker
took the message, not that it will survive a crash of the broker; with `fleet_acks` off (a fleet older than acks)
on the broker's PUBACK, as before. The states of a row:

    pending --publish--> in flight --PUBACK--> awaiting the fleet (puback_at set) --fleet ack--> deleted
                             ^                         |
                             +--- no fleet ack within ack_timeout_s, or a reconnection: published again

(without fleet acks: in flight --PUBACK--> deleted). Ingest is idempotent on record ids, so a row published twice
is stored once; the fleet acknowledges the copy again.
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

from fleet.protocol import PROTOCOL_VERSION, Ack, Batch, ProtocolError, RecordKind, decode

DDL = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,          -- the record's UUID (ingest deduplicates on it)
    kind TEXT NOT NULL,               -- a fleet.protocol.RecordKind
    payload TEXT NOT NULL,            -- the record as JSON (fleet.protocol record model)
    size INTEGER NOT NULL,            -- bytes of payload, for the disk budget
    created_at REAL NOT NULL,
    puback_at REAL                    -- the broker acknowledged it then (unix time): awaiting the fleet's ack
);
CREATE INDEX IF NOT EXISTS outbox_kind_seq ON outbox(kind, seq);
CREATE TABLE IF NOT EXISTS outbox_losses (
    kind TEXT PRIMARY KEY,            -- records dropped by the overflow policy, never silently
    dropped INTEGER NOT NULL DEFAULT 0,
    last_dropped_at REAL
);
"""

log = logging.getLogger(__name__)

MQTT_ERR_QUEUE_SIZE = 15  # paho.mqtt.client.MQTTErrorCode.MQTT_ERR_QUEUE_SIZE

KINDS: tuple[RecordKind, ...] = tuple(RecordKind)



def dumps(record: dict[str, Any]) -> str:
    """A record as the outbox stores it (compact JSON)."""
    return json.dumps(record, separators=(",", ":"))

def ensure_schema(conn: sqlite3.Connection) -> None:
    conn.executescript(DDL)
    if "puback_at" not in {r[1] for r in conn.execute("PRAGMA table_info(outbox)")}:
        conn.execute("ALTER TABLE outbox ADD COLUMN puback_at REAL")  # an outbox from before fleet acks


def enqueue(conn: sqlite3.Connection, kind: RecordKind | str, record: dict[str, Any],
            payload: str | None = None) -> None:
    """Add `record` (with an `id`) to the outbox inside the caller's open transaction. Idempotent by id. `payload`:
    the record already serialised as `dumps(record)` gives it (the frame path stores the same text twice)."""
    try:
        kind = RecordKind(kind)
    except ValueError:
        raise ValueError(f"unknown outbox kind {kind!r}; one of {', '.join(KINDS)}") from None
    if payload is None:
        payload = dumps(record)
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
    """Rows in the outbox per kind (awaiting the fleet's ack included: they are not delivered yet)."""
    return dict(conn.execute("SELECT kind, COUNT(*) FROM outbox GROUP BY kind").fetchall())


def awaiting(conn: sqlite3.Connection) -> int:
    """Rows the broker acknowledged that await the fleet's ack."""
    return int(conn.execute("SELECT COUNT(*) FROM outbox WHERE puback_at IS NOT NULL").fetchone()[0])


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
    """A batch published and not settled yet: in flight (no PUBACK yet), or, with fleet acks, acknowledged by the
    broker (`acked_at` set) and awaiting the fleet's ack of the records in `ids`. Counts against the window either
    way: a fleet that does not keep up slows the device down instead of its rows piling up in the broker."""

    info: Any  # paho MQTTMessageInfo of the latest publish
    seqs: list[int]
    kind: RecordKind
    sent_at: float
    ids: dict[str, int] = field(default_factory=dict)  # record id -> seq, not yet acknowledged by the fleet
    acked_at: float | None = None  # monotonic time of the broker's PUBACK (None: in flight)
    sends: int = 1


@dataclass
class PublisherStats:
    batches: int = 0  # batches settled (rows deleted)
    records: int = 0  # rows deleted after delivery (PUBACK, or the fleet's ack with fleet acks)
    dropped: dict[str, int] = field(default_factory=dict)
    refused: int = 0  # rows the fleet acknowledged as refused by its validation
    resent: int = 0  # batches published again (no fleet ack in time, or a reconnection)
    unknown_acks: int = 0  # ids in fleet acks that matched no row (duplicate acks)


class Publisher:
    """Drains the outbox into `Batch` messages over QoS 1, deleting rows only once delivered: acknowledged by the
    fleet (`fleet_acks`, the default) or by the broker (PUBACK, without).

    Rows of a batch in flight when the connection drops stay in the table; paho re-sends the unacknowledged
    message on reconnect, and a restarted device sends them again. With fleet acks, rows the broker acknowledged
    but the fleet did not within `ack_timeout_s`, and all of them after a reconnection (`reconnected()`), are
    published again. Delivery is at least once and ingest deduplicates by record id."""

    def __init__(self, db_path: Path, client: Any, topics: Any, device: str, *, batch_size: int = 200,
                 budget_bytes: int = 512 << 20, window: int = 8, poll_s: float = 0.2,
                 on_overflow: Callable[[dict[str, int]], None] | None = None, fleet_acks: bool = True,
                 ack_timeout_s: float = 30.0) -> None:
        self.db_path, self.client, self.topics, self.device = Path(db_path), client, topics, device
        self.batch_size, self.budget_bytes, self.window, self.poll_s = batch_size, budget_bytes, window, poll_s
        self.on_overflow = on_overflow
        self.fleet_acks, self.ack_timeout_s = fleet_acks, ack_timeout_s
        self.stats = PublisherStats()
        self._inflight: list[_InFlight] = []
        self._sent_upto: dict[RecordKind, int] = {}
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._db_lock = threading.RLock()
        self._acked: dict[int, float] = {}  # mid -> monotonic time its PUBACK arrived
        self._fleet_acked: list[str] = []  # ids from fleet acks, applied by the pump
        self._fleet_refused: list[str] = []
        self._resend_upto = 0.0  # monotonic: batches the broker acknowledged before this are sent again now
        self._hub: Any = None
        self._last_budget = 0.0

    def subscriptions(self) -> list[tuple[str, int]]:
        """What the MQTT client must subscribe to on every connection: the device's acks topic (with fleet acks)."""
        return [(self.topics.device(self.device, "acks"), 1)] if self.fleet_acks else []

    def start(self, hub: Any = None) -> None:
        """Drain on a thread of its own, or, given a `hub` (edge.agent.hub.Hub), on the hub's one outbox thread,
        which calls `pump()` whenever this publisher is woken: a row enqueued, a PUBACK, a fleet ack, a
        (re)connection, an ack timeout."""
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

    def reconnected(self) -> None:
        """The client (re)connected: with fleet acks, every batch still awaiting the fleet is published again (the
        broker that acknowledged it may have died before delivering it). Call from the client's on_connect."""
        self._resend_upto = time.monotonic()
        self.wake()

    def on_ack(self, topic: str, payload: bytes) -> None:
        """A fleet ack arrived (paho's thread: only parses and queues it). ProtocolError if it is malformed or not
        for this device: the caller counts and logs it; nothing is deleted."""
        ack = decode(topic, payload, Ack)
        if ack.version != PROTOCOL_VERSION:
            raise ProtocolError(f"{topic}: ack version {ack.version} is not {PROTOCOL_VERSION}")
        if ack.device != self.device:
            raise ProtocolError(f"{topic}: ack for device {ack.device!r}, not {self.device!r}")
        if not self.fleet_acks:
            log.debug("%s: fleet ack ignored (fleet_acks is off)", self.device)
            return
        with self._lock:
            self._fleet_acked += ack.stored
            self._fleet_refused += ack.refused
        self.wake()

    def _loop(self) -> None:
        while not self._stop.is_set():
            if not self.pump():
                self._wake.wait(self.poll_s)
                self._wake.clear()

    def pump(self) -> bool:
        """One round: enforce the budget (at most once a second), settle acknowledged batches, send again what the
        fleet did not acknowledge in time, send more while the window allows. True if anything moved."""
        with self._db_lock:
            if self._conn is None or self._stop.is_set():
                return False
            try:
                if time.monotonic() - self._last_budget > 1.0:
                    self._last_budget = time.monotonic()
                    self._enforce()
                progressed = self._settle()
                if self.client.is_connected():
                    progressed |= self._resend()
                    progressed |= self._fill()
                return progressed
            except sqlite3.Error as err:
                # a locked or full disk: keep the rows, try again later
                log.warning("outbox: %s", err)
                if self._hub is not None:
                    self._hub.call_later(self.poll_s, self.wake)
                return False

    def _enforce(self) -> None:
        assert self._conn is not None
        keep = {s for f in self._inflight for s in f.seqs}  # in flight or awaiting the fleet: never dropped
        dropped = enforce_budget(self._conn, self.budget_bytes, keep)
        if dropped:
            for kind, n in dropped.items():
                self.stats.dropped[kind] = self.stats.dropped.get(kind, 0) + n
            log.warning("outbox over its budget: dropped %s", dropped)
            if self.on_overflow is not None:
                self.on_overflow(dropped)

    def _publish(self, kind: RecordKind, rows: list[tuple[int, str]]) -> tuple[Any, list[dict[str, Any]]]:
        batch = Batch(device=self.device, kind=kind, records=[json.loads(p) for _, p in rows])
        payload = json.dumps(batch.model_dump(mode="json", by_alias=True), separators=(",", ":"))
        return self.client.publish(self.topics.device(self.device, kind), payload, qos=1), batch.records

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
            info, records = self._publish(kind, rows)
            seqs = [s for s, _ in rows]
            self._sent_upto[kind] = seqs[-1]
            ids = {r["id"]: s for r, s in zip(records, seqs)} if self.fleet_acks else {}
            self._inflight.append(_InFlight(info, seqs, kind, time.monotonic(), ids))
            sent = True
        return sent

    def _resend(self) -> bool:
        """Publish again, as new messages, the batches the broker acknowledged but the fleet did not: for longer
        than ack_timeout_s, or before the latest reconnection."""
        if not self.fleet_acks:
            return False
        assert self._conn is not None
        now = time.monotonic()
        due_before = max(self._resend_upto, now - self.ack_timeout_s)
        due = [f for f in self._inflight if f.acked_at is not None and f.acked_at <= due_before]
        if not due:
            return False
        timed_out = sum(len(f.ids) for f in due if (f.acked_at or 0.0) <= now - self.ack_timeout_s)
        if timed_out:
            log.warning("%s: no fleet ack for %d records within %.0f s; sending them again (a fleet older than acks "
                        "never acknowledges: set fleet.outbox_fleet_acks: false for it)", self.device, timed_out,
                        self.ack_timeout_s)
        for f in due:
            seqs = sorted(f.ids.values())
            marks = ",".join("?" * len(seqs))
            rows = self._conn.execute(f"SELECT seq, payload FROM outbox WHERE seq IN ({marks}) ORDER BY seq",
                                      seqs).fetchall()
            if not rows:  # gone meanwhile: nothing left to deliver
                f.ids = {}
                continue
            with self._conn:
                self._conn.execute(f"UPDATE outbox SET puback_at = NULL WHERE seq IN ({marks})", seqs)
            f.info, _ = self._publish(f.kind, rows)
            f.ids = {i: s for i, s in f.ids.items() if s in {r[0] for r in rows}}
            f.acked_at, f.sent_at, f.sends = None, now, f.sends + 1
            self.stats.resent += 1
        self._inflight = [f for f in self._inflight if f.ids or f.acked_at is None]
        return True

    def on_publish(self, client: Any, userdata: Any, mid: int, *rest: Any) -> None:
        """paho callback (PUBACK for QoS 1). A message re-sent after a reconnect keeps its mid."""
        with self._lock:
            # the time it came, not the time the pump gets to it: a PUBACK from a connection that dropped since
            # must count as before the reconnection (its batch is then sent again at once)
            self._acked[mid] = time.monotonic()
        self.wake()

    def _settle(self) -> bool:
        """Batches the broker acknowledged (PUBACK): deleted, or with fleet acks marked as awaiting the fleet; rows
        the fleet acknowledged: deleted."""
        assert self._conn is not None
        with self._lock:
            done = [f for f in self._inflight if f.acked_at is None and f.info.mid in self._acked]
            pubacks = {f.info.mid: self._acked.pop(f.info.mid) for f in done}
            stored, self._fleet_acked = self._fleet_acked, []
            refused, self._fleet_refused = self._fleet_refused, []
        lost = [f for f in self._inflight if f.acked_at is None and f.info.rc == MQTT_ERR_QUEUE_SIZE]
        for f in lost:  # paho refused to queue it: offer those rows again
            self._sent_upto[f.kind] = min(self._sent_upto.get(f.kind, 0), f.seqs[0] - 1)
        if done and not self.fleet_acks:
            with self._conn:
                self._conn.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for f in done for s in f.seqs])
            for f in done:
                self.stats.batches += 1
                self.stats.records += len(f.seqs)
            self._inflight = [f for f in self._inflight if f not in done and f not in lost]
            return True
        self._inflight = [f for f in self._inflight if f not in lost]
        if done:
            wall = time.time()
            with self._conn:
                self._conn.executemany("UPDATE outbox SET puback_at = ? WHERE seq = ?",
                                       [(wall, s) for f in done for s in f.ids.values()])
            for f in done:
                f.acked_at = pubacks[f.info.mid]
            if self._hub is not None:  # look again when the fleet's ack is overdue
                self._hub.call_later(self.ack_timeout_s + 0.05, self.wake)
        if stored or refused:
            self._apply_fleet_acks(stored, refused)
        return bool(done or stored or refused)

    def _apply_fleet_acks(self, stored: list[str], refused: list[str]) -> None:
        assert self._conn is not None
        ids = stored + refused
        with self._conn:
            deleted = self._conn.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in ids]).rowcount
        gone = set(ids)
        settled = 0
        for f in self._inflight:
            if f.ids and not gone.isdisjoint(f.ids):
                f.ids = {i: s for i, s in f.ids.items() if i not in gone}
                settled += not f.ids
        if settled:
            self.stats.batches += settled
            self._inflight = [f for f in self._inflight if f.ids]
            with self._lock:  # PUBACKs still to come for settled batches: forget them (paho reuses mids)
                live = {f.info.mid for f in self._inflight}
                self._acked = {m: t for m, t in self._acked.items() if m in live}
        self.stats.records += deleted
        if refused:
            self.stats.refused += len(refused)
            log.info("%s: the fleet refused %d records (counted there by reason); deleted", self.device, len(refused))
        if deleted < len(ids):
            self.stats.unknown_acks += len(ids) - deleted
            log.debug("%s: fleet ack named %d unknown record ids (acknowledged before)", self.device,
                      len(ids) - deleted)

    def drained(self) -> bool:
        """Nothing in flight or awaiting the fleet and no row left (reads through a connection of its own: any
        thread may ask)."""
        if self._inflight:
            return False
        conn = sqlite3.connect(str(self.db_path), timeout=30)
        try:
            return conn.execute("SELECT 1 FROM outbox LIMIT 1").fetchone() is None
        finally:
            conn.close()
