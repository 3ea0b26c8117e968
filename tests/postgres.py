"""A throwaway PostgreSQL server from Debian's binaries (initdb + pg_ctl in a temporary directory, a free port on
127.0.0.1) for the test suite and the benchmarks: a fresh machine needs only `scripts/install.sh`, and the server a
machine may already run is never touched.

pytest-postgresql does the same, but cannot here: initdb refuses to run as root (as CI does), so the server runs
as the `postgres` user (Debian's package creates it) whenever we are root, in a directory that user owns."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bindir() -> Path | None:
    """Directory of initdb/pg_ctl: $SHADOWLINE_PG_BINDIR, else the newest /usr/lib/postgresql/*/bin."""
    if os.environ.get("SHADOWLINE_PG_BINDIR"):
        return Path(os.environ["SHADOWLINE_PG_BINDIR"])
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PostgresServer:
    """initdb, start, create databases, stop. `durable=False` (tests) turns fsync off: the suite kills our
    processes, never the machine, so that loses nothing it checks and saves the disk flushes."""

    def __init__(self, durable: bool = False, max_connections: int = 200) -> None:
        self.bin = bindir()
        if self.bin is None:
            raise RuntimeError("PostgreSQL server binaries not found: run scripts/install.sh (Debian package "
                               "postgresql) or set SHADOWLINE_PG_BINDIR")
        self.durable, self.max_connections = durable, max_connections
        self.port = _free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="shadowline-pg-"))
        self.data = self.dir / "data"
        self.user: str | None = None
        if os.geteuid() == 0:
            self.user = "postgres"
            pw = pwd.getpwnam(self.user)
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        self.started = False

    def _run(self, *args: str, timeout: float = 120) -> None:
        kw = {"user": self.user, "group": pwd.getpwnam(self.user).pw_gid, "extra_groups": []} if self.user else {}
        res = subprocess.run([str(self.bin / args[0]), *args[1:]], capture_output=True, text=True, timeout=timeout,
                             cwd=self.dir, **kw)  # type: ignore[call-overload]
        if res.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({res.returncode}): {res.stderr.strip() or res.stdout.strip()}")

    def start(self) -> PostgresServer:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--locale=C", "-E", "UTF8",
                  "--no-sync")
        opts = [f"-p {self.port}", f"-k {self.dir}", "-c listen_addresses=127.0.0.1",
                f"-c max_connections={self.max_connections}"]
        if not self.durable:
            opts += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        self._run("pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data), "-l", str(self.dir / "server.log"),
                  "-o", " ".join(opts))
        self.started = True
        return self

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def admin(self, *statements: str) -> None:
        """Run statements in autocommit on the `postgres` database (CREATE/DROP DATABASE cannot run in a
        transaction)."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            for s in statements:
                conn.execute(s)  # type: ignore[arg-type]

    def create_database(self, name: str, template: str | None = None) -> str:
        """Create database `name` (a copy of `template` if given) and return its URL."""
        self.admin(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
        return self.url(name)

    def stop(self) -> None:
        if self.started:
            try:
                self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "fast", "-w", "-t", "30", timeout=60)
            except (RuntimeError, subprocess.TimeoutExpired):
                self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "immediate", timeout=60)
            self.started = False
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

