"""The audio access log: one row each time a call's audio was served (``GET /v1/calls/{id}/playback``): when, who
(``role:id`` of the token or ticket), which call, which rendition (``stereo`` or one speaker), which byte range
was asked for, the status (200 or 206) and how many bytes went out.  Admins list it with ``GET /v1/audit/audio``
(``server/playback.py``).  Rows older than ``privacy.retention_days`` are purged with the calls.

Revision ID: 0005_access_log
Revises: 0004_kpis
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_access_log"
down_revision = "0004_kpis"
branch_labels = None
depends_on = None

TIME = sa.Double().with_variant(sa.REAL(), "sqlite")  # Unix seconds


def upgrade() -> None:
    op.create_table(
        "audio_access",
        sa.Column("id", sa.Text, primary_key=True),  # a uuid (no sequence: the same DDL on both databases)
        sa.Column("at", TIME, nullable=False), sa.Column("principal", sa.Text, nullable=False),
        sa.Column("role", sa.Text, nullable=False), sa.Column("call_id", sa.Text, nullable=False),
        sa.Column("kind", sa.Text, nullable=False), sa.Column("byte_range", sa.Text),
        sa.Column("status", sa.Integer, nullable=False), sa.Column("bytes", sa.BigInteger, nullable=False))
    op.create_index("audio_access_call", "audio_access", ["call_id", "at"])
    op.create_index("audio_access_at", "audio_access", ["at"])


def downgrade() -> None:
    op.drop_table("audio_access")
