"""The fleet store: bundles, releases, devices, desired states, rollouts, and the ingested records (predictions,
reviews, metrics, alerts, events) keyed by record id, so a redelivered record is ignored rather than duplicated.
One contract over two engines: SQLite (the embedded default, one file) and PostgreSQL, chosen by the store URL.

Connections come from a pool, so API reads never wait for a writer (SQLite in WAL mode, PostgreSQL's MVCC).
`transaction()` is a serialised write transaction on both engines: SQLite's BEGIN IMMEDIATE, and on PostgreSQL a
transaction-scoped advisory lock, so read-then-write steps (the next release revision, a device's next desired
revision) are as safe with several service instances as with one. Ingest does not take that lock: its inserts are
idempotent by record id and never read first."""

from __future__ import annotations

import json
import operator
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection

from fleet.protocol import PredictionRecord as _PredictionRecord
from fleet.store import engine as engines
from fleet.store import migrate
from fleet.store.queries import Queries
from fleet.store.schema import RECORD_COLUMNS, primary_key
from runtime.errors import StoreError

# pg_advisory_xact_lock key of `transaction()` (see the module docstring)
WRITE_LOCK = 0x53484C57  # "SHLW"

_GETTERS = {kind: operator.attrgetter("id", *cols) for kind, cols in RECORD_COLUMNS.items()}
_LATENCY_AT = 1 + list(RECORD_COLUMNS["predictions"]).index("latency_ms")
_OVERRIDE_AT = 1 + list(RECORD_COLUMNS["reviews"]).index("override")


class StoreUnavailable(StoreError):
    """The store cannot be reached right now (connection lost, server down, database locked past the busy
    timeout): retry later; nothing about the data was wrong."""

    exit_code = 24


def transient(err: Exception) -> bool:
    """Whether a database error means "not now" rather than "not this": lost connections, a server going away,
    SQLite's lock and I/O errors, an exhausted pool."""
    if isinstance(err, sa_exc.TimeoutError | sa_exc.InterfaceError):
        return True
    if isinstance(err, sa_exc.DBAPIError) and err.connection_invalidated:
        return True
    orig = getattr(err, "orig", None)
    if type(orig).__module__.startswith("psycopg") and isinstance(err, sa_exc.OperationalError):
        return True
    text = str(orig).lower()
    return isinstance(err, sa_exc.OperationalError) and any(
        w in text for w in ("locked", "busy", "disk i/o", "unable to open"))


def _prediction_row(r: Any) -> tuple:
    """`row_values` of a validated prediction (the bulk of ingest) in one tuple: 0.8 us of 3.7 us a row less than
    the generic path (benchmarks/fleet_ingest.py's rows, CPU time)."""
    return (r.id, r.device, r.created_at, r.release, r.revision, r.mode, r.role, r.decision, r.top_label, r.top_score,
            r.latency_ms.get("total"), r.__pydantic_serializer__.to_json(r).decode())


# _prediction_row names the columns itself, in this order (tests/fleet/test_store.py checks it against the row)
if list(RECORD_COLUMNS["predictions"]) != ["device", "created_at", "release", "revision", "mode", "role", "decision",
                                           "top_label", "top_score", "latency_ms"]:
    raise RuntimeError("the predictions columns changed: update fleet.store.store._prediction_row")


def row_values(kind: str, rec: BaseModel | dict[str, Any]) -> tuple:
    """The row of one record: its id, the filter columns, and the whole record as JSON. A validated model is
    read by attribute and serialised by pydantic's (fast) encoder; a dict goes through json.dumps."""
    if kind == "predictions" and type(rec) is _PredictionRecord:
        return _prediction_row(rec)
    if isinstance(rec, BaseModel):
        vals = _GETTERS[kind](rec)
        record_json = rec.__pydantic_serializer__.to_json(rec).decode()
    else:
        vals = (rec.get("id"), *(rec.get(c) for c in RECORD_COLUMNS[kind]))
        record_json = json.dumps(rec, separators=(",", ":"))
    if kind == "predictions":  # the total latency is the column; the per-stage latencies stay in the record
        vals = (*vals[:_LATENCY_AT], (vals[_LATENCY_AT] or {}).get("total"), *vals[_LATENCY_AT + 1:])
    elif kind == "reviews" and vals[_OVERRIDE_AT] is not None:  # an integer column on both engines
        vals = (*vals[:_OVERRIDE_AT], int(vals[_OVERRIDE_AT]), *vals[_OVERRIDE_AT + 1:])
    return (*vals, record_json)


def _columns(kind: str) -> list[str]:
    """The columns of a row of `row_values`; ValueError for a kind that has no table."""
    if kind not in RECORD_COLUMNS:
        raise ValueError(f"unknown record kind {kind!r}")
    return ["id", *RECORD_COLUMNS[kind], "record"]


def _upsert_sql(table: str, cols: list[str], pk: str | tuple[str, ...]) -> str:
    keys = (pk,) if isinstance(pk, str) else pk
    updates = ", ".join(f"{c} = excluded.{c}" for c in cols if c not in keys)
    return (f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))}) "
            f"ON CONFLICT ({', '.join(keys)}) DO " + (f"UPDATE SET {updates}" if updates else "NOTHING"))


class Store(Queries):
    """Open the fleet store at `url` (a store URL, or the path of a SQLite file). A new, empty database gets the
    schema (unless `create=False`); one behind this code's schema raises StoreError naming `fleet migrate`."""

    def __init__(self, url: str | Path, *, create: bool = True) -> None:
        self.url = engines.normalise_url(url)
        self.engine = engines.create(self.url)
        self.dialect: str = self.engine.dialect.name
        self.path = engines.sqlite_path(self.url)
        self._local = threading.local()
        self._write_lock = threading.Lock()
        # PostgreSQL: a statement run alone (a read, a single-row write) in autocommit is one round trip to the
        # server, where a transaction around it is three (BEGIN, the statement, COMMIT); on two busy cores each
        # costs 0.5-1 ms of waiting for the server process to be scheduled
        self._autocommit = self.engine.execution_options(isolation_level="AUTOCOMMIT") \
            if self.dialect == "postgresql" else None
        try:
            self.revision = migrate.ensure(self.engine, create=create)
        except BaseException:
            self.engine.dispose()
            raise

    def __repr__(self) -> str:
        return f"Store({engines.redact(self.url)!r})"

    def close(self) -> None:
        self.engine.dispose()

    # -- connections and transactions ----------------------------------------------------------------------------
    @contextmanager
    def _connection(self, write: bool = False, single: bool = False) -> Iterator[Connection]:
        """The connection of the transaction this thread is in, or a fresh one in its own transaction (`single`:
        for one statement, which PostgreSQL then runs in autocommit, atomic as a statement is)."""
        bound: Connection | None = getattr(self._local, "conn", None)
        if bound is not None:
            yield bound
            return
        if single and self._autocommit is not None:
            with self._unavailable(), self._autocommit.connect() as conn:
                yield conn
            return
        with self._unavailable(), self._writer(write), self.engine.connect() as conn:
            if write:
                conn.execution_options(write=True)
            with conn.begin():
                yield conn

    @contextmanager
    def _writer(self, write: bool) -> Iterator[None]:
        # SQLite has one writer at a time; its busy handler makes waiting writers sleep and poll, which under load
        # lets one thread starve another for seconds. Writers of this process queue on a lock instead (other
        # processes still meet the busy timeout). PostgreSQL needs no such thing.
        if write and self.dialect == "sqlite":
            with self._write_lock:
                yield
        else:
            yield

    @contextmanager
    def _unavailable(self) -> Iterator[None]:
        """Turn "the store cannot be reached right now" into StoreUnavailable (other errors pass unchanged)."""
        try:
            yield
        except (sa_exc.DBAPIError, sa_exc.TimeoutError) as err:
            if not transient(err):
                raise
            raise StoreUnavailable(f"the fleet store {engines.redact(self.url)} is unavailable: "
                                   f"{str(getattr(err, 'orig', None) or err).strip()}") from err

    @contextmanager
    def transaction(self, serialised: bool = True) -> Iterator[Store]:
        """`with store.transaction() as st:` one serialised write transaction for every store call made in it on
        this thread (committed at the end, rolled back on an exception). Nested calls join the outer one; work
        registered with `after_commit` runs once the outermost commits. `serialised=False`: one transaction
        without PostgreSQL's store-wide lock, for writes that read nothing first (as ingest's)."""
        if getattr(self._local, "conn", None) is not None:
            yield self
            return
        after: list[Callable[[], None]] = []
        with self._unavailable(), self._writer(True), self.engine.connect() as conn:
            conn.execution_options(write=True)
            with conn.begin():
                if self.dialect == "postgresql" and serialised:
                    conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({WRITE_LOCK})")
                self._local.conn, self._local.after = conn, after
                try:
                    yield self
                finally:
                    self._local.conn = self._local.after = None
        for fn in after:
            fn()

    def after_commit(self, fn: Callable[[], None]) -> None:
        """Run `fn` once the current transaction committed (now, outside one); not at all if it rolls back.
        E.g. publish a desired state only once it is stored."""
        pending: list | None = getattr(self._local, "after", None)
        if pending is None:
            fn()
        else:
            pending.append(fn)

    # -- generic -------------------------------------------------------------------------------------------------
    def _sql(self, sql: str) -> str:
        return sql if self.dialect == "sqlite" else engines.to_format(sql)

    def rows(self, sql: str, params: Iterable[Any] = ()) -> list[dict[str, Any]]:
        """Run portable SQL with `?` placeholders; the result rows as dicts."""
        with self._connection(single=True) as conn:
            res = conn.exec_driver_sql(self._sql(sql), tuple(params))
            if not res.returns_rows:
                return []
            names = list(res.keys())
            return [dict(zip(names, r)) for r in res.fetchall()]

    def execute(self, sql: str, params: Iterable[Any] = ()) -> int:
        """Run one portable statement with `?` placeholders (in the current transaction, if any); rows changed."""
        with self._connection(write=True, single=True) as conn:
            return conn.exec_driver_sql(self._sql(sql), tuple(params)).rowcount

    def execute_many(self, sql: str, rows: list[tuple]) -> None:
        """Run one portable statement once per parameter tuple of `rows`, in one transaction (the current one, if
        any): one commit for all, and on PostgreSQL the statements pipelined rather than a round trip each."""
        if not rows:
            return
        with self._connection(write=True) as conn:
            conn.exec_driver_sql(self._sql(sql), rows)

    def get(self, table: str, pk: Any) -> dict[str, Any] | None:
        """The row of `table` whose primary key is `pk` (a tuple for a composite key), or None."""
        keys = primary_key(table)
        values = pk if isinstance(pk, tuple) else (pk,)
        found = self.rows(f"SELECT * FROM {table} WHERE " + " AND ".join(f"{k} = ?" for k in keys), values)
        return found[0] if found else None

    def upsert(self, table: str, row: dict[str, Any], pk: str | tuple[str, ...]) -> None:
        """Insert `row` or update the given columns of the existing row (joins the current transaction)."""
        self.execute(_upsert_sql(table, list(row), pk), row.values())

    def upsert_many(self, table: str, rows: list[dict[str, Any]], pk: str | tuple[str, ...]) -> None:
        """`upsert` of many rows in one transaction (the current one, if any); every row has the same columns."""
        if not rows:
            return
        cols = list(rows[0])
        if any(list(r) != cols for r in rows):
            raise ValueError(f"upsert_many into {table}: every row must have the columns {cols}")
        self.execute_many(_upsert_sql(table, cols, pk), [tuple(r.values()) for r in rows])

    # -- ingest --------------------------------------------------------------------------------------------------
    def insert_records(self, kind: str, records: list[BaseModel] | list[dict[str, Any]]) -> int:
        """Insert validated records of one kind in one transaction; returns how many were new (ids already
        stored are ignored: redelivery never duplicates)."""
        return self.insert_many({kind: records})

    def insert_many(self, groups: dict[str, list]) -> int:
        """Insert records of several kinds in one transaction; returns how many were new."""
        for kind in groups:
            _columns(kind)  # an unknown kind is refused before any row is built
        return self.insert_rows({kind: [row_values(kind, r) for r in records] for kind, records in groups.items()})

    def insert_rows(self, groups: dict[str, list[tuple]]) -> int:
        """`insert_many` of rows already built (`row_values`), by kind, in one transaction; how many were new."""
        columns = {kind: _columns(kind) for kind in groups}
        prepared = [(kind, columns[kind], rows) for kind, rows in groups.items() if rows]
        if not prepared:
            return 0
        with self._connection(write=True) as conn:
            return sum(engines.bulk_insert(conn, kind, cols, rows) for kind, cols, rows in prepared)

    def count_malformed(self, topic: str, error: str) -> None:
        from fleet.protocol import now_iso

        self.execute("INSERT INTO malformed (topic, count, last_error, last_at) VALUES (?, 1, ?, ?) "
                     "ON CONFLICT (topic) DO UPDATE SET count = malformed.count + 1, "
                     "last_error = excluded.last_error, last_at = excluded.last_at", (topic, error[:500], now_iso()))

    def malformed(self) -> dict[str, dict[str, Any]]:
        return {r["topic"]: r for r in self.rows("SELECT * FROM malformed ORDER BY topic")}

    def count_refused(self, device: str, reason: str, error: str, n: int = 1) -> None:
        """Count `n` records of `device` refused for `reason` (the last error kept for the admin)."""
        from fleet.protocol import now_iso

        self.execute("INSERT INTO refused (device, reason, count, last_error, last_at) VALUES (?, ?, ?, ?, ?) "
                     "ON CONFLICT (device, reason) DO UPDATE SET count = refused.count + excluded.count, "
                     "last_error = excluded.last_error, last_at = excluded.last_at",
                     (device[:128], reason[:64], n, error[:500], now_iso()))

    def refused(self) -> list[dict[str, Any]]:
        """Refused-record counts: device, reason, count, last_error, last_at; by device then reason."""
        return self.rows("SELECT device, reason, count, last_error, last_at FROM refused ORDER BY device, reason")

    def predictions_by_id(self, device: str, ids: list[str]) -> dict[str, Any]:
        """The stored predictions of `device` among `ids`, by id (verdicts must name one)."""
        from fleet.protocol import PredictionRecord

        out: dict[str, PredictionRecord] = {}
        for i in range(0, len(ids), 500):
            part = ids[i:i + 500]
            for r in self.rows(f"SELECT record FROM predictions WHERE device = ? AND id IN "
                               f"({', '.join('?' * len(part))})", [device, *part]):
                rec = PredictionRecord.model_validate_json(r["record"])
                out[rec.id] = rec
        return out

    def count(self, kind: str) -> int:
        if kind not in RECORD_COLUMNS:
            raise ValueError(f"unknown record kind {kind!r}")
        return int(self.rows(f"SELECT count(*) AS n FROM {kind}")[0]["n"])
