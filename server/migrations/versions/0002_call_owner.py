"""The node that owns a live call: ``calls.owner_node``.

A node (one ``calltone serve`` process, ``server/ownership.py``) writes its node id on the row of every call it
opens or resumes, and its writes to the call are fenced by it (``SqlRepository.hold_call``).  A node that
finds another node's heartbeat gone marks that node's live calls interrupted (``interrupt_owned``), found
through the index on (status, owner_node).  Rows from before this revision have no owner (NULL).

Revision ID: 0002_call_owner
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_call_owner"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("calls", sa.Column("owner_node", sa.Text))
    op.create_index("calls_status_owner", "calls", ["status", "owner_node"])


def downgrade() -> None:
    op.drop_index("calls_status_owner", "calls")
    with op.batch_alter_table("calls") as batch:  # SQLite rebuilds the table
        batch.drop_column("owner_node")
