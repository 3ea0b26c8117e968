"""Schema migrations of the fleet store (Alembic, scripts in `migrations/versions/`), applied by one command:
`shadowline fleet migrate`. A new, empty database is created by the same migrations when the store first opens it;
a database behind (or ahead of) this code's schema is refused with a message naming the command to run. A SQLite
file made before migrations existed (sqlite-utils schema, main at 99b576a) is recognised, stamped at the baseline
revision and upgraded like any other."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection, Engine

from runtime.errors import StoreError

log = logging.getLogger(__name__)

# pg_advisory_xact_lock key held while migrating, so two instances starting at once do not both create the schema
MIGRATE_LOCK = 0x53484C31  # "SHL1"
BASELINE = "0001"

# The tables and columns of the store before migrations (sqlite-utils, main at 99b576a). An unversioned database
# is stamped at the baseline only if it has exactly these; anything else is not ours to touch.
LEGACY_TABLES: dict[str, set[str]] = {
    "bundles": {"id", "name", "version", "task", "sha256", "size", "path", "signer", "labels", "manifest", "coreml",
                "coreml_sha256", "coreml_size", "pushed_at"},
    "releases": {"ref", "name", "revision", "spec", "parent", "created_at"},
    "devices": {"id", "groups", "tags", "first_seen", "last_seen", "status", "active", "candidate", "activation",
                "last_error", "reported"},
    "desired": {"device", "revision", "release", "candidate", "rollout", "payload", "issued_at"},
    "desired_history": {"device", "revision", "release", "candidate", "rollout", "issued_at"},
    "rollouts": {"id", "release", "grp", "plan", "state", "wave", "reason", "created_at", "updated_at"},
    "rollout_targets": {"rollout", "device", "wave", "previous", "previous_candidate", "state", "started_at"},
    "predictions": {"id", "device", "created_at", "release", "revision", "mode", "role", "decision", "top_label",
                    "top_score", "latency_ms", "record"},
    "reviews": {"id", "device", "created_at", "release", "revision", "prediction_id", "verdict", "override",
                "record"},
    "metrics": {"id", "device", "created_at", "release", "revision", "record"},
    "alerts": {"id", "device", "created_at", "rule", "state", "record"},
    "events": {"id", "device", "created_at", "kind", "record"},
    "malformed": {"topic", "count", "last_error", "last_at"},
}


@dataclass(frozen=True)
class Migration:
    """What `upgrade` did: the revision before (None: empty database; "legacy": unversioned), and after."""

    before: str | None
    after: str

    @property
    def changed(self) -> bool:
        return self.before != self.after


def _config(conn: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", "fleet.store:migrations")
    if conn is not None:
        cfg.attributes["connection"] = conn
    return cfg


def head() -> str:
    """The newest revision this code knows."""
    rev = ScriptDirectory.from_config(_config()).get_current_head()
    assert rev is not None, "no migration scripts found"
    return rev


def _known() -> set[str]:
    return {s.revision for s in ScriptDirectory.from_config(_config()).walk_revisions()}


def current(conn: Connection) -> str | None:
    """The database's revision; "legacy" for an unversioned store made before migrations; None when empty."""
    rev = MigrationContext.configure(conn).get_current_revision()
    if rev is not None:
        return rev
    tables = set(sa.inspect(conn).get_table_names())
    return "legacy" if tables & set(LEGACY_TABLES) else None


@contextmanager
def connect(engine: Engine) -> Iterator[Connection]:
    """A connection, with "cannot reach the store" as a StoreError naming it (without its password)."""
    from fleet.store.engine import redact

    try:
        conn = engine.connect()
    except sa.exc.DBAPIError as err:
        raise StoreError(f"cannot open the fleet store {redact(str(engine.url))}: "
                         f"{str(err.orig).strip() or type(err.orig).__name__}") from err
    with conn:
        yield conn


def revision(engine: Engine) -> str | None:
    """The database's revision (see `current`)."""
    with connect(engine) as conn:
        rev = current(conn)
        conn.rollback()
    return rev


def _check_legacy(conn: Connection) -> None:
    insp = sa.inspect(conn)
    problems = []
    for table, cols in LEGACY_TABLES.items():
        if not insp.has_table(table):
            problems.append(f"table {table} missing")
            continue
        have = {c["name"] for c in insp.get_columns(table)}
        if have != cols:
            problems.append(f"{table}: columns {sorted(have ^ cols)} differ")
    if problems:
        raise StoreError("the database has fleet tables but no schema version, and they are not those of the "
                         f"pre-migration store ({'; '.join(problems)}): not upgrading it")


def _lock(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATE_LOCK})")
    # SQLite: the write transaction (BEGIN IMMEDIATE) already excludes every other writer


def upgrade(engine: Engine, target: str = "head") -> Migration:
    """Bring the schema to `target` in one transaction (a failed migration leaves the database as it was)."""
    with connect(engine) as conn:
        conn.execution_options(write=True)
        with conn.begin():
            _lock(conn)
            before = current(conn)
            if before == "legacy":
                _check_legacy(conn)
                command.stamp(_config(conn), BASELINE)
            elif before is not None and before not in _known():
                raise StoreError(f"the store's schema is at revision {before}, which this version of Shadowline "
                                 f"does not know (newest: {head()}): upgrade Shadowline, not the database")
            command.upgrade(_config(conn), target)
            after = MigrationContext.configure(conn).get_current_revision()
    assert after is not None
    if before != after:
        log.info("fleet store migrated from %s to %s", before or "empty", after)
    return Migration(before, after)


def ensure(engine: Engine, create: bool = True) -> str:
    """Check the schema is this code's (creating it in an empty database when `create`); the revision."""
    want = head()
    have = revision(engine)
    if have == want:
        return have
    if have is None and create:
        return upgrade(engine).after
    hint = "run `shadowline fleet migrate` (with this version) first"
    if have is None:
        raise StoreError(f"the fleet store is empty (no schema): {hint}")
    if have == "legacy":
        raise StoreError(f"the fleet store was made by an older version (no schema revision): {hint}")
    if have not in _known():
        raise StoreError(f"the fleet store's schema revision {have} is newer than this version knows ({want}): "
                         "upgrade Shadowline")
    raise StoreError(f"the fleet store's schema is at revision {have}, this version needs {want}: {hint}")
