"""The fleet store: one SQLite database (WAL) through sqlite-utils. Bundles, releases, devices, desired states,
rollouts, and the ingested records (predictions, reviews, metrics, alerts, events) keyed by record id, so a
redelivered record is ignored rather than duplicated. One connection behind a lock: the MQTT thread, the API
workers and the rollout loop share it, and SQLite serialises writers anyway."""

from __future__ import annotations

import json
import operator
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import sqlite_utils
from pydantic import BaseModel

from fleet.protocol import AlertRecord, EventRecord, MetricsRecord, PredictionRecord, ReviewRecord, now_iso

RECORD_TABLES: dict[str, type] = {"predictions": PredictionRecord, "reviews": ReviewRecord, "metrics": MetricsRecord,
                                  "alerts": AlertRecord, "events": EventRecord}

# Columns copied out of each record for filtering; the whole record stays in `record` as JSON.
_RECORD_COLUMNS: dict[str, dict[str, type]] = {
    "predictions": {"device": str, "created_at": str, "release": str, "revision": int, "mode": str, "role": str,
                    "decision": str, "top_label": str, "top_score": float, "latency_ms": float},
    "reviews": {"device": str, "created_at": str, "release": str, "revision": int, "prediction_id": str,
                "verdict": str, "override": int},
    "metrics": {"device": str, "created_at": str, "release": str, "revision": int},
    "alerts": {"device": str, "created_at": str, "rule": str, "state": str},
    "events": {"device": str, "created_at": str, "kind": str},
}


_GETTERS = {kind: operator.attrgetter("id", *cols) for kind, cols in _RECORD_COLUMNS.items()}
_LATENCY_AT = 1 + list(_RECORD_COLUMNS["predictions"]).index("latency_ms")


def _row_values(kind: str, rec: BaseModel | dict[str, Any]) -> tuple:
    """The row of one record: its id, the filter columns, and the whole record as JSON. A validated model is
    read by attribute and serialised by pydantic's (fast) encoder; a dict goes through json.dumps."""
    if isinstance(rec, BaseModel):
        vals = _GETTERS[kind](rec)
        record_json = rec.__pydantic_serializer__.to_json(rec).decode()
    else:
        vals = (rec.get("id"), *(rec.get(c) for c in _RECORD_COLUMNS[kind]))
        record_json = json.dumps(rec, separators=(",", ":"))
    if kind == "predictions":  # the total latency is the column; the per-stage latencies stay in the record
        vals = (*vals[:_LATENCY_AT], (vals[_LATENCY_AT] or {}).get("total"), *vals[_LATENCY_AT + 1:])
    return (*vals, record_json)


class Store:
    """Open (creating if needed) the fleet database at `path`."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=30)
        self.lock = threading.RLock()
        self.db = sqlite_utils.Database(self.conn)
        self.db.enable_wal()
        # NORMAL in WAL mode: a commit survives a crash of this process (kill -9); only an OS crash may lose
        # the last transactions. The broker keeps the unacknowledged messages until we commit (see ingest).
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self._create()

    def _create(self) -> None:
        db = self.db
        with self.lock:
            db["bundles"].create({"id": str, "name": str, "version": str, "task": str, "sha256": str, "size": int,
                                  "path": str, "signer": str, "labels": str, "manifest": str, "coreml": str,
                                  "coreml_sha256": str, "coreml_size": int, "pushed_at": str},
                                 pk="id", if_not_exists=True)
            db["releases"].create({"ref": str, "name": str, "revision": int, "spec": str, "parent": str,
                                   "created_at": str}, pk="ref", if_not_exists=True)
            db["devices"].create({"id": str, "groups": str, "tags": str, "first_seen": str, "last_seen": str,
                                  "status": str, "active": str, "candidate": str, "activation": str,
                                  "last_error": str, "reported": str}, pk="id", if_not_exists=True)
            db["desired"].create({"device": str, "revision": int, "release": str, "candidate": str,
                                  "rollout": str, "payload": str, "issued_at": str},
                                 pk="device", if_not_exists=True)
            db["desired_history"].create({"device": str, "revision": int, "release": str, "candidate": str,
                                          "rollout": str, "issued_at": str}, pk=("device", "revision"),
                                         if_not_exists=True)
            db["rollouts"].create({"id": str, "release": str, "grp": str, "plan": str, "state": str, "wave": int,
                                   "reason": str, "created_at": str, "updated_at": str}, pk="id",
                                  if_not_exists=True)
            db["rollout_targets"].create({"rollout": str, "device": str, "wave": int, "previous": str,
                                          "previous_candidate": str, "state": str, "started_at": str},
                                         pk=("rollout", "device"), if_not_exists=True)
            for kind, cols in _RECORD_COLUMNS.items():
                db[kind].create({"id": str, **cols, "record": str}, pk="id", if_not_exists=True)
                db[kind].create_index(["device", "created_at"], if_not_exists=True)
                if "release" in cols:
                    db[kind].create_index(["release", "revision"], if_not_exists=True)
            db["malformed"].create({"topic": str, "count": int, "last_error": str, "last_at": str}, pk="topic",
                                   if_not_exists=True)
            # records refused by validation (fleet/validation.py), never stored: counted per device and reason
            db["refused"].create({"device": str, "reason": str, "count": int, "last_error": str, "last_at": str},
                                 pk=("device", "reason"), if_not_exists=True)

    def close(self) -> None:
        with self.lock:
            self.conn.close()

    # -- generic -------------------------------------------------------------------------------------------------
    def get(self, table: str, pk: Any) -> dict[str, Any] | None:
        with self.lock:
            try:
                return dict(self.db[table].get(pk))
            except sqlite_utils.db.NotFoundError:
                return None

    def rows(self, sql: str, params: Iterable[Any] = ()) -> list[dict[str, Any]]:
        with self.lock:
            cur = self.conn.execute(sql, tuple(params))
            names = [d[0] for d in cur.description]
            return [dict(zip(names, r)) for r in cur.fetchall()]

    def upsert(self, table: str, row: dict[str, Any], pk: str | tuple[str, ...]) -> None:
        """Insert `row` or update the given columns of the existing row (plain SQL: safe inside transaction())."""
        keys = (pk,) if isinstance(pk, str) else pk
        cols = list(row)
        updates = ", ".join(f"{c} = excluded.{c}" for c in cols if c not in keys)
        sql = (f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))}) "
               f"ON CONFLICT({', '.join(keys)}) DO " + (f"UPDATE SET {updates}" if updates else "NOTHING"))
        with self.lock:
            self.conn.execute(sql, tuple(row.values()))

    def transaction(self) -> _Tx:
        return _Tx(self)

    # -- ingest --------------------------------------------------------------------------------------------------
    def insert_records(self, kind: str, records: list[BaseModel] | list[dict[str, Any]]) -> int:
        """Insert validated records of one kind in one transaction; returns how many were new (ids already
        stored are ignored: redelivery never duplicates)."""
        return self.insert_many({kind: records})

    def insert_many(self, groups: dict[str, list]) -> int:
        """Insert records of several kinds in one transaction; returns how many were new."""
        prepared = []
        for kind, records in groups.items():
            if kind not in _RECORD_COLUMNS:
                raise ValueError(f"unknown record kind {kind!r}")
            cols = ["id", *_RECORD_COLUMNS[kind], "record"]
            sql = f"INSERT OR IGNORE INTO {kind} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
            prepared.append((sql, [_row_values(kind, r) for r in records]))
        with self.lock:
            before = self.conn.total_changes
            self.conn.execute("BEGIN")
            try:
                for sql, values in prepared:
                    if values:
                        self.conn.executemany(sql, values)
                self.conn.execute("COMMIT")
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            return self.conn.total_changes - before

    def count_malformed(self, topic: str, error: str) -> None:
        with self.lock:
            self.conn.execute(
                "INSERT INTO malformed (topic, count, last_error, last_at) VALUES (?, 1, ?, ?) "
                "ON CONFLICT(topic) DO UPDATE SET count = count + 1, last_error = excluded.last_error, "
                "last_at = excluded.last_at", (topic, error[:500], now_iso()))

    def malformed(self) -> dict[str, dict[str, Any]]:
        return {r["topic"]: r for r in self.rows("SELECT * FROM malformed ORDER BY topic")}

    def count_refused(self, device: str, reason: str, error: str, n: int = 1) -> None:
        """Count `n` records of `device` refused for `reason` (the last error kept for the admin)."""
        with self.lock:
            self.conn.execute(
                "INSERT INTO refused (device, reason, count, last_error, last_at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(device, reason) DO UPDATE SET count = count + excluded.count, "
                "last_error = excluded.last_error, last_at = excluded.last_at",
                (device[:128], reason[:64], n, error[:500], now_iso()))

    def refused(self) -> list[dict[str, Any]]:
        """Refused-record counts: device, reason, count, last_error, last_at; by device then reason."""
        return self.rows("SELECT device, reason, count, last_error, last_at FROM refused ORDER BY device, reason")

    def predictions_by_id(self, device: str, ids: list[str]) -> dict[str, PredictionRecord]:
        """The stored predictions of `device` among `ids`, by id (verdicts must name one)."""
        out: dict[str, PredictionRecord] = {}
        for i in range(0, len(ids), 500):
            part = ids[i:i + 500]
            for r in self.rows(f"SELECT record FROM predictions WHERE device = ? AND id IN "
                               f"({', '.join('?' * len(part))})", [device, *part]):
                rec = PredictionRecord.model_validate_json(r["record"])
                out[rec.id] = rec
        return out

    def count(self, kind: str) -> int:
        if kind not in _RECORD_COLUMNS:
            raise ValueError(f"unknown record kind {kind!r}")
        return self.rows(f"SELECT count(*) AS n FROM {kind}")[0]["n"]

    # -- read methods for analytics and the dashboard -------------------------------------------------------------
    def group_devices(self, group: str) -> list[str]:
        return [r["id"] for r in self.rows("SELECT id, groups FROM devices ORDER BY id")
                if group in json.loads(r["groups"] or "[]")]

    def _select(self, kind: str, device: str | None, group: str | None, release: str | None, since: str | None,
                until: str | None, limit: int | None, extra: dict[str, Any] | None = None) -> Iterator[dict]:
        where, params = [], []
        if device is not None:
            where.append("device = ?")
            params.append(device)
        if group is not None:
            members = self.group_devices(group)
            where.append(f"device IN ({', '.join('?' * len(members))})" if members else "0")
            params.extend(members)
        if release is not None:
            if "release" not in _RECORD_COLUMNS[kind]:
                raise ValueError(f"{kind} records carry no release")
            name, _, rev = release.partition("@")
            where.append("release = ?")
            params.append(name)
            if rev:
                where.append("revision = ?")
                params.append(int(rev))
        if since is not None:
            where.append("created_at >= ?")
            params.append(since)
        if until is not None:
            where.append("created_at < ?")
            params.append(until)
        for col, val in (extra or {}).items():
            where.append(f"{col} = ?")
            params.append(val)
        sql = f"SELECT record FROM {kind}" + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY created_at, id"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        model = RECORD_TABLES[kind]
        for r in self.rows(sql, params):
            yield model.model_validate_json(r["record"])

    def predictions(self, *, device: str | None = None, group: str | None = None, release: str | None = None,
                    since: str | None = None, until: str | None = None, limit: int | None = None,
                    role: str | None = None) -> Iterator[PredictionRecord]:
        """Prediction records filtered by device, group, release (`name` or `name@revision`) and time
        (ISO-8601, `since` inclusive, `until` exclusive), oldest first."""
        yield from self._select("predictions", device, group, release, since, until, limit,
                                {"role": role} if role else None)

    def reviews(self, *, device: str | None = None, group: str | None = None, release: str | None = None,
                since: str | None = None, until: str | None = None, limit: int | None = None) -> Iterator[ReviewRecord]:
        yield from self._select("reviews", device, group, release, since, until, limit)

    def metrics(self, *, device: str | None = None, group: str | None = None, release: str | None = None,
                since: str | None = None, until: str | None = None, limit: int | None = None) -> Iterator[MetricsRecord]:
        yield from self._select("metrics", device, group, release, since, until, limit)

    def alerts(self, *, device: str | None = None, group: str | None = None, since: str | None = None,
               until: str | None = None, limit: int | None = None) -> Iterator[AlertRecord]:
        yield from self._select("alerts", device, group, None, since, until, limit)

    def events(self, *, device: str | None = None, group: str | None = None, since: str | None = None,
               until: str | None = None, limit: int | None = None, kind: str | None = None) -> Iterator[EventRecord]:
        yield from self._select("events", device, group, None, since, until, limit, {"kind": kind} if kind else None)

    def latest_events(self, kind: str, device: str | None = None) -> dict[str, EventRecord]:
        """The newest event of `kind` per device (e.g. each device's capability record), by device id."""
        where, params = "kind = ?", [kind]
        if device is not None:
            where += " AND device = ?"
            params.append(device)
        # newest per device in SQL: the events table also holds every activation step and delivery
        rows = self.rows(f"SELECT e.record FROM events e JOIN (SELECT device, max(created_at) AS at FROM events "
                         f"WHERE {where} GROUP BY device) m ON e.device = m.device AND e.created_at = m.at "
                         f"WHERE e.kind = ? ORDER BY e.device, e.id", [*params, kind])
        return {r.device: r for r in (EventRecord.model_validate_json(x["record"]) for x in rows)}


class _Tx:
    """`with store.transaction():` one BEGIN IMMEDIATE ... COMMIT under the store lock (rolled back on error)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def __enter__(self) -> Store:
        self.store.lock.acquire()
        self.store.conn.execute("BEGIN IMMEDIATE")
        return self.store

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.store.conn.execute("ROLLBACK" if exc_type else "COMMIT")
        finally:
            self.store.lock.release()
