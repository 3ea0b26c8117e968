"""Records refused by validation at the edge of ingest (fleet/validation.py), never stored: counted per device and
reason. A store made by the pre-migration code after refusals were added already has the table (same columns).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TEXT = sa.Text().with_variant(postgresql.TEXT(collation="C"), "postgresql")
INT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    if sa.inspect(op.get_bind()).has_table("refused"):
        return
    op.create_table("refused", sa.Column("device", TEXT, nullable=False), sa.Column("reason", TEXT, nullable=False),
                    sa.Column("count", INT), sa.Column("last_error", TEXT), sa.Column("last_at", TEXT),
                    sa.PrimaryKeyConstraint("device", "reason"))


def downgrade() -> None:
    op.drop_table("refused")
