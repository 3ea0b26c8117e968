"""Images devices upload for overridden and near-threshold cases (fleet/images.py): one row per (device,
prediction), the blob's sha256 indexed. A store made by the pre-migration code after uploads were added already has
the table (same columns, created at open).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TEXT = sa.Text().with_variant(postgresql.TEXT(collation="C"), "postgresql")
INT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    if sa.inspect(op.get_bind()).has_table("images"):
        return
    op.create_table("images", sa.Column("device", TEXT, nullable=False),
                    sa.Column("prediction_id", TEXT, nullable=False), sa.Column("sha256", TEXT),
                    sa.Column("size", INT), sa.Column("suffix", TEXT), sa.Column("reasons", TEXT),
                    sa.Column("uploader", TEXT), sa.Column("uploaded_at", TEXT),
                    sa.PrimaryKeyConstraint("device", "prediction_id"))
    op.create_index("idx_images_sha256", "images", ["sha256"])


def downgrade() -> None:
    op.drop_index("idx_images_sha256", "images")
    op.drop_table("images")
