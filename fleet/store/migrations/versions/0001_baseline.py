"""Baseline: the schema the fleet store had before migrations (sqlite-utils, main at 99b576a), column for column,
so a data directory made by that code is stamped at this revision and upgraded from here.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TEXT = sa.Text().with_variant(postgresql.TEXT(collation="C"), "postgresql")
INT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
FLOAT = sa.Float().with_variant(sa.REAL(), "sqlite")  # REAL: what the pre-migration store declared

RECORDS: dict[str, dict[str, sa.types.TypeEngine]] = {
    "predictions": {"device": TEXT, "created_at": TEXT, "release": TEXT, "revision": INT, "mode": TEXT,
                    "role": TEXT, "decision": TEXT, "top_label": TEXT, "top_score": FLOAT, "latency_ms": FLOAT},
    "reviews": {"device": TEXT, "created_at": TEXT, "release": TEXT, "revision": INT, "prediction_id": TEXT,
                "verdict": TEXT, "override": INT},
    "metrics": {"device": TEXT, "created_at": TEXT, "release": TEXT, "revision": INT},
    "alerts": {"device": TEXT, "created_at": TEXT, "rule": TEXT, "state": TEXT},
    "events": {"device": TEXT, "created_at": TEXT, "kind": TEXT},
}


def _create(table: str, pk: tuple[str, ...], **cols: sa.types.TypeEngine) -> None:
    op.create_table(table, *(sa.Column(c, t, nullable=c not in pk) for c, t in cols.items()),
                    sa.PrimaryKeyConstraint(*pk))


def upgrade() -> None:
    _create("bundles", ("id",), id=TEXT, name=TEXT, version=TEXT, task=TEXT, sha256=TEXT, size=INT, path=TEXT,
            signer=TEXT, labels=TEXT, manifest=TEXT, coreml=TEXT, coreml_sha256=TEXT, coreml_size=INT,
            pushed_at=TEXT)
    _create("releases", ("ref",), ref=TEXT, name=TEXT, revision=INT, spec=TEXT, parent=TEXT, created_at=TEXT)
    _create("devices", ("id",), id=TEXT, groups=TEXT, tags=TEXT, first_seen=TEXT, last_seen=TEXT, status=TEXT,
            active=TEXT, candidate=TEXT, activation=TEXT, last_error=TEXT, reported=TEXT)
    _create("desired", ("device",), device=TEXT, revision=INT, release=TEXT, candidate=TEXT, rollout=TEXT,
            payload=TEXT, issued_at=TEXT)
    _create("desired_history", ("device", "revision"), device=TEXT, revision=INT, release=TEXT, candidate=TEXT,
            rollout=TEXT, issued_at=TEXT)
    _create("rollouts", ("id",), id=TEXT, release=TEXT, grp=TEXT, plan=TEXT, state=TEXT, wave=INT, reason=TEXT,
            created_at=TEXT, updated_at=TEXT)
    _create("rollout_targets", ("rollout", "device"), rollout=TEXT, device=TEXT, wave=INT, previous=TEXT,
            previous_candidate=TEXT, state=TEXT, started_at=TEXT)
    for kind, cols in RECORDS.items():
        _create(kind, ("id",), id=TEXT, **cols, record=TEXT)
        op.create_index(f"idx_{kind}_device_created_at", kind, ["device", "created_at"])
        if "release" in cols:
            op.create_index(f"idx_{kind}_release_revision", kind, ["release", "revision"])
    _create("malformed", ("topic",), topic=TEXT, count=INT, last_error=TEXT, last_at=TEXT)


def downgrade() -> None:
    for name in ("malformed", *reversed(RECORDS), "rollout_targets", "rollouts", "desired_history", "desired",
                 "devices", "releases", "bundles"):
        op.drop_table(name)
