"""Opening the database behind a store URL: SQLite (the embedded default, one file in the data directory) or
PostgreSQL (psycopg 3), as a SQLAlchemy engine with the settings each needs; and the few statements that differ
between the two (placeholders, bulk insert of records)."""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from runtime.errors import ConfigError

SQLITE_BUSY_TIMEOUT_S = 30


def normalise_url(url: str | Path) -> str:
    """`sqlite:///path`, `postgresql://...` (also `postgres://`, `postgresql+psycopg://`), or a plain path to a
    SQLite file; returns the SQLAlchemy URL. Anything else is a ConfigError naming the URL."""
    if isinstance(url, Path) or "://" not in str(url):
        return f"sqlite:///{Path(url).resolve()}"
    text = str(url)
    scheme, _, rest = text.partition("://")
    if scheme in ("postgres", "postgresql", "postgresql+psycopg"):
        return f"postgresql+psycopg://{rest}"
    if scheme == "sqlite":
        return text
    raise ConfigError(f"store URL {redact(text)!r}: expected sqlite:///path or postgresql://user@host/database")


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def sqlite_path(url: str) -> Path | None:
    """The database file of a SQLite URL (None for PostgreSQL or an in-memory SQLite)."""
    u = sa.engine.make_url(url)
    return Path(u.database) if u.get_backend_name() == "sqlite" and u.database not in (None, "", ":memory:") \
        else None


def create(url: str) -> Engine:
    """An engine for a normalised store URL. SQLite: WAL, synchronous=NORMAL, a busy timeout, and transactions
    begun by us (BEGIN IMMEDIATE for writes, so two writers never deadlock upgrading their locks). PostgreSQL:
    a small pool whose connections notice a dead peer (TCP keepalives, and a ping before reusing one that was idle
    for a while)."""
    u = sa.engine.make_url(url)
    if u.get_backend_name() == "sqlite":
        path = sqlite_path(url)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_S},
                                  pool_size=8, max_overflow=16, poolclass=sa.pool.QueuePool)
        sa.event.listen(engine, "connect", _sqlite_connect)
        sa.event.listen(engine, "begin", _sqlite_begin)
        return engine
    if u.get_backend_name() == "postgresql":
        engine = sa.create_engine(url, pool_size=8, max_overflow=16,
                                  connect_args={"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5,
                                                "keepalives_count": 3, "application_name": "shadowline-fleet"})
        sa.event.listen(engine, "checkin", _pg_checkin)
        sa.event.listen(engine, "checkout", _pg_checkout)
        return engine
    raise ConfigError(f"store URL {redact(url)!r}: unsupported database {u.get_backend_name()!r}")


def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
    # the driver's own transaction handling would BEGIN (deferred) behind our back: turn it off, begin ourselves
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL mode: a commit survives a crash of this process (kill -9); only an OS crash may lose the last
    # transactions. The broker keeps unacknowledged messages until we commit (see ingest).
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


# A pooled PostgreSQL connection idle longer than this is pinged before use (a server restart or an ended session
# is then noticed before a statement fails). Not every checkout: on two busy cores each round trip to the server
# costs 0.5-1 ms of scheduling, and a busy pool's connections were in use a moment ago.
PING_IDLE_S = 5.0


def _pg_checkin(_dbapi_conn: Any, record: Any) -> None:
    record.info["idle_since"] = time.monotonic()


def _pg_checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
    idle_since = record.info.get("idle_since")
    if idle_since is None or time.monotonic() - idle_since < PING_IDLE_S:
        return
    try:
        with dbapi_conn.cursor() as cur:
            cur.execute("SELECT 1")
        dbapi_conn.rollback()
    except Exception as err:  # the pool drops this connection and checks out another (a fresh one if need be)
        raise sa.exc.DisconnectionError(f"pooled connection lost: {err}") from err


def _sqlite_begin(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("write") else "BEGIN")


@functools.lru_cache(maxsize=512)
def to_format(sql: str) -> str:
    """`?` placeholders (the store's SQL) as psycopg's `%s`, with literal `%` doubled. Quoted text is kept."""
    parts = re.split(r"('(?:[^']|'')*')", sql)
    return "".join(p if i % 2 else p.replace("%", "%%").replace("?", "%s") for i, p in enumerate(parts))


def bulk_insert(conn: Connection, table: str, cols: Sequence[str], rows: list[tuple]) -> int:
    """Insert rows, ignoring those whose primary key is already stored; returns how many were new.
    SQLite: one executemany of INSERT ... ON CONFLICT DO NOTHING. PostgreSQL: COPY straight into the table under a
    savepoint (the usual case: every id is new, and the server does half the work of the staging path); if an id is
    already stored (a redelivery) or twice in the rows, the COPY fails whole, is rolled back to the savepoint, and
    the rows go through a temporary table and INSERT ... SELECT ... ON CONFLICT DO NOTHING instead."""
    names = ", ".join(cols)
    if conn.dialect.name == "sqlite":
        sql = f"INSERT INTO {table} ({names}) VALUES ({', '.join('?' * len(cols))}) ON CONFLICT DO NOTHING"
        return conn.exec_driver_sql(sql, rows).rowcount
    import psycopg

    dbapi = conn.connection.driver_connection
    assert dbapi is not None
    try:
        with dbapi.cursor() as cur:
            cur.execute("SAVEPOINT bulk_insert")
            try:
                with cur.copy(f"COPY {table} ({names}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
            except psycopg.errors.UniqueViolation:
                cur.execute("ROLLBACK TO SAVEPOINT bulk_insert")
            else:
                cur.execute("RELEASE SAVEPOINT bulk_insert")
                return len(rows)
            cur.execute("RELEASE SAVEPOINT bulk_insert")
            return _insert_staged(cur, table, names, rows)
    except (psycopg.OperationalError, psycopg.InterfaceError) as err:
        # the raw cursor's errors bypass SQLAlchemy: wrapped as it wraps its own, so the store reports a lost
        # server as StoreUnavailable (retry later) and the pool drops the dead connection
        if dbapi.closed:
            conn.invalidate(err)
        raise sa.exc.OperationalError(f"COPY {table}", None, err, connection_invalidated=bool(dbapi.closed)) from err


def _insert_staged(cur: Any, table: str, names: str, rows: list[tuple]) -> int:
    """COPY into a temporary table, then INSERT ... SELECT ... ON CONFLICT DO NOTHING (COPY alone would fail the
    whole batch on one redelivered id); how many rows were new."""
    stage = f"_in_{table}"
    # a temporary table lives as long as its session; made in this transaction, it is gone again if the
    # transaction rolls back, hence IF NOT EXISTS every time rather than remembering it per connection
    cur.execute(f"CREATE TEMPORARY TABLE IF NOT EXISTS {stage} (LIKE {table} INCLUDING DEFAULTS) "
                "ON COMMIT DELETE ROWS")
    with cur.copy(f"COPY {stage} ({names}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)
    cur.execute(f"INSERT INTO {table} ({names}) SELECT {names} FROM {stage} ON CONFLICT DO NOTHING")
    new = int(cur.rowcount)
    cur.execute(f"TRUNCATE {stage}")  # several batches may share one transaction
    return new
