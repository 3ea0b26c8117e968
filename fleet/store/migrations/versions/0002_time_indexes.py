"""Indexes for the queries that grow with the fleet: every record kind by time alone (the dashboard's and the
monitoring loop's windows read all devices since a time), and rollout targets by device (a new rollout checks
that none of its devices is in a running one; the latency gate reads each device's previous release).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

KINDS = ("predictions", "reviews", "metrics", "alerts", "events")


def upgrade() -> None:
    for kind in KINDS:
        op.create_index(f"idx_{kind}_created_at", kind, ["created_at"])
    op.create_index("idx_rollout_targets_device", "rollout_targets", ["device"])


def downgrade() -> None:
    op.drop_index("idx_rollout_targets_device", "rollout_targets")
    for kind in KINDS:
        op.drop_index(f"idx_{kind}_created_at", kind)
