"""The fleet store's tables as the newest migration leaves them (SQLAlchemy Core metadata). The migrations in
`migrations/versions/` create and change the real tables; this copy is what the code reads and writes, and a test
checks that the two agree on both backends (alembic's compare_metadata finds no difference)."""

from __future__ import annotations

import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy.dialects import postgresql

from fleet.protocol import RECORD_TYPES

# Text compares byte-wise on both engines: ISO-8601 times and ids sort the same in SQLite and PostgreSQL whatever
# the database's locale (a glibc or ICU collation ignores punctuation at its first level).
TEXT = sa.Text().with_variant(postgresql.TEXT(collation="C"), "postgresql")
# Bundle sizes pass 2 GiB: 64-bit integers on PostgreSQL (SQLite's INTEGER is 64-bit already).
INT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
FLOAT = sa.Float().with_variant(sa.REAL(), "sqlite")  # REAL: what the pre-migration store declared

RECORD_TABLES: dict[str, type[BaseModel]] = {k.value: m for k, m in RECORD_TYPES.items()}  # one per RecordKind

# Columns copied out of each record for filtering; the whole record stays in `record` as JSON.
RECORD_COLUMNS: dict[str, dict[str, str]] = {
    "predictions": {"device": "text", "created_at": "text", "release": "text", "revision": "int", "mode": "text",
                    "role": "text", "decision": "text", "top_label": "text", "top_score": "float",
                    "latency_ms": "float"},
    "reviews": {"device": "text", "created_at": "text", "release": "text", "revision": "int",
                "prediction_id": "text", "verdict": "text", "override": "int"},
    "metrics": {"device": "text", "created_at": "text", "release": "text", "revision": "int"},
    "alerts": {"device": "text", "created_at": "text", "rule": "text", "state": "text"},
    "events": {"device": "text", "created_at": "text", "kind": "text"},
}
_TYPES: dict[str, sa.types.TypeEngine] = {"text": TEXT, "int": INT, "float": FLOAT}

metadata = sa.MetaData()


def _table(table: str, pk: tuple[str, ...], **cols: sa.types.TypeEngine) -> sa.Table:
    return sa.Table(table, metadata, *(sa.Column(c, t, primary_key=c in pk, nullable=c not in pk)
                                      for c, t in cols.items()))


_table("bundles", ("id",), id=TEXT, name=TEXT, version=TEXT, task=TEXT, sha256=TEXT, size=INT, path=TEXT,
       signer=TEXT, labels=TEXT, manifest=TEXT, coreml=TEXT, coreml_sha256=TEXT, coreml_size=INT, pushed_at=TEXT)
_table("releases", ("ref",), ref=TEXT, name=TEXT, revision=INT, spec=TEXT, parent=TEXT, created_at=TEXT)
_table("devices", ("id",), id=TEXT, groups=TEXT, tags=TEXT, first_seen=TEXT, last_seen=TEXT, status=TEXT,
       active=TEXT, candidate=TEXT, activation=TEXT, last_error=TEXT, reported=TEXT)
_table("desired", ("device",), device=TEXT, revision=INT, release=TEXT, candidate=TEXT, rollout=TEXT, payload=TEXT,
       issued_at=TEXT)
_table("desired_history", ("device", "revision"), device=TEXT, revision=INT, release=TEXT, candidate=TEXT,
       rollout=TEXT, issued_at=TEXT)
_table("rollouts", ("id",), id=TEXT, release=TEXT, grp=TEXT, plan=TEXT, state=TEXT, wave=INT, reason=TEXT,
       created_at=TEXT, updated_at=TEXT)
targets = _table("rollout_targets", ("rollout", "device"), rollout=TEXT, device=TEXT, wave=INT, previous=TEXT,
                 previous_candidate=TEXT, state=TEXT, started_at=TEXT)
sa.Index("idx_rollout_targets_device", targets.c.device)
for _kind, _cols in RECORD_COLUMNS.items():
    _t = _table(_kind, ("id",), id=TEXT, **{c: _TYPES[t] for c, t in _cols.items()}, record=TEXT)
    sa.Index(f"idx_{_kind}_device_created_at", _t.c.device, _t.c.created_at)
    sa.Index(f"idx_{_kind}_created_at", _t.c.created_at)
    if "release" in _cols:
        sa.Index(f"idx_{_kind}_release_revision", _t.c.release, _t.c.revision)
_table("malformed", ("topic",), topic=TEXT, count=INT, last_error=TEXT, last_at=TEXT)
_table("refused", ("device", "reason"), device=TEXT, reason=TEXT, count=INT, last_error=TEXT, last_at=TEXT)
images = _table("images", ("device", "prediction_id"), device=TEXT, prediction_id=TEXT, sha256=TEXT, size=INT,
                suffix=TEXT, reasons=TEXT, uploader=TEXT, uploaded_at=TEXT)
sa.Index("idx_images_sha256", images.c.sha256)


def primary_key(table: str) -> tuple[str, ...]:
    """The primary key columns of `table` (ValueError for a table the store does not have)."""
    try:
        return tuple(c.name for c in metadata.tables[table].primary_key.columns)
    except KeyError as err:
        raise ValueError(f"the fleet store has no table {table!r}") from err
