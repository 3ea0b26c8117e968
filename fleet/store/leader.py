"""Leader election through the store, so that with several fleet service instances (API replicas) the rollout and
monitoring loops run in exactly one, and another takes over when it dies.

PostgreSQL: a session advisory lock (`pg_try_advisory_lock`) held on a connection of its own. The lock lives as
long as that session: when the leader's process dies (kill -9 included) the server ends the session and frees the
lock at once; a leader whose host vanished is noticed by TCP keepalives (about 25 s with the store's settings).
Every check runs on the lock's own connection, so a leader that lost it steps down before acting again.

SQLite (the embedded default, one machine): an exclusive `flock` on `fleet.db.leader` next to the database; the
kernel frees it when the process dies. Instances on one machine sharing one data directory elect the same way
(SQLite itself serialises their writes). The file holds the leader's name, for `current()`.

Wave starts are guarded in the store as well (compare-and-set of the rollout's wave), so even two instances that
both believed they led could not start a wave twice."""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path
from typing import Protocol

from sqlalchemy.engine import Connection, Engine

log = logging.getLogger(__name__)

LEADER_LOCK = 0x53484C4C  # "SHLL": the advisory lock key of the fleet's leader


class Leadership(Protocol):
    name: str

    def try_acquire(self) -> bool:
        """Become the leader if nobody is; True if this instance leads (now or already)."""

    def held(self) -> bool:
        """Whether this instance still leads (False once its lock is gone)."""

    def release(self) -> None:
        """Stop leading (or waiting to)."""

    def current(self) -> str | None:
        """The name of the instance that leads now, whoever asks; None if nobody does."""


class PostgresLeadership:
    def __init__(self, engine: Engine, name: str, key: int = LEADER_LOCK) -> None:
        self.engine, self.name, self.key = engine, name, key
        self._conn: Connection | None = None
        self._leading = False

    def _connect(self) -> Connection:
        conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        # visible to every instance in pg_stat_activity: current() names the leader by it
        conn.exec_driver_sql("SELECT set_config('application_name', %s, false)", (f"shadowline-fleet:{self.name}",))
        return conn

    def try_acquire(self) -> bool:
        if self._leading:
            return self.held()
        if self._conn is None:  # kept while waiting too: never back into the pool under the leader's name
            self._conn = self._connect()
        try:
            self._leading = bool(self._conn.exec_driver_sql("SELECT pg_try_advisory_lock(%s)", (self.key,)).scalar())
        except Exception:
            self._drop()
            raise
        return self._leading

    def held(self) -> bool:
        if self._conn is None or not self._leading:
            return False
        try:
            n = self._conn.exec_driver_sql(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = 0 AND objid = %s "
                "AND objsubid = 1 AND granted AND pid = pg_backend_pid()", (self.key,)).scalar()
        except Exception as err:  # the session is gone, and the lock with it
            log.error("leader %s lost its store session: %s", self.name, err)
            self._drop()
            return False
        if not n:
            self._drop()
        return bool(n)

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.invalidate()  # never back into the pool: the session may still hold the lock
                self._conn.close()
            except Exception:  # already broken: nothing more to free
                pass
            self._conn = None
        self._leading = False

    def release(self) -> None:
        if self._conn is not None and self._leading:
            try:
                self._conn.exec_driver_sql("SELECT pg_advisory_unlock(%s)", (self.key,))
            except Exception:  # a broken session frees the lock anyway
                pass
        self._drop()

    def current(self) -> str | None:
        with self.engine.connect() as conn:
            row = conn.exec_driver_sql(
                "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE l.locktype = 'advisory' AND l.classid = 0 AND l.objid = %s AND l.objsubid = 1 AND l.granted "
                "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                (self.key,)).first()
        if row is None:
            return None
        return str(row[0]).removeprefix("shadowline-fleet:")


class FileLeadership:
    def __init__(self, path: Path, name: str) -> None:
        self.path, self.name = Path(path), name
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        if self._fd is not None:
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{self.name}\n{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return True

    def held(self) -> bool:
        return self._fd is not None  # a flock cannot be taken from a living process

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor frees the lock
            self._fd = None

    def current(self) -> str | None:
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            try:  # a shared lock we can take means nobody holds the exclusive one
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return os.pread(fd, 200, 0).decode(errors="replace").split("\n")[0] or "?"
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)
