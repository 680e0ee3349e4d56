"""Baseline: the schema calltone created before it had migrations.

Calls, their events (per-call ``seq``), alerts, webhook deliveries, and the probe row.  On SQLite the DDL is
the same as that code's (REAL times, ``events`` WITHOUT ROWID, deliveries AUTOINCREMENT); on PostgreSQL times
are DOUBLE PRECISION (its REAL is 4 bytes) and ids BIGSERIAL.  JSON fields are TEXT on both.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TIME = sa.Double().with_variant(sa.REAL(), "sqlite")  # Unix seconds / call seconds
ZERO = sa.text("0")


def upgrade() -> None:
    op.create_table(
        "calls",
        sa.Column("call_id", sa.Text, primary_key=True), sa.Column("status", sa.Text, nullable=False),
        sa.Column("agent_id", sa.Text), sa.Column("language", sa.Text), sa.Column("metadata", sa.Text),
        sa.Column("roles", sa.Text), sa.Column("started_at", TIME, nullable=False), sa.Column("ended_at", TIME),
        sa.Column("duration_s", TIME), sa.Column("escalations", sa.Integer, nullable=False, server_default=ZERO),
        sa.Column("summary", sa.Text), sa.Column("last_seq", sa.Integer, nullable=False, server_default=ZERO),
        sa.Column("updated_at", TIME))
    op.create_index("calls_started", "calls", ["started_at"])
    op.create_index("calls_agent", "calls", ["agent_id", "started_at"])
    op.create_table(
        "events",
        sa.Column("call_id", sa.Text, primary_key=True), sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("type", sa.Text, nullable=False), sa.Column("t", TIME), sa.Column("server_time", TIME),
        sa.Column("body", sa.Text, nullable=False),
        sqlite_with_rowid=False)
    op.create_table(
        "alerts",
        sa.Column("alert_id", sa.Text, primary_key=True), sa.Column("call_id", sa.Text, nullable=False),
        sa.Column("agent_id", sa.Text), sa.Column("channel", sa.Text), sa.Column("reason", sa.Text),
        sa.Column("evidence", sa.Text), sa.Column("excerpt", sa.Text), sa.Column("status", sa.Text, nullable=False),
        sa.Column("t", TIME), sa.Column("seq", sa.Integer), sa.Column("raised_at", TIME), sa.Column("cleared_at", TIME),
        sa.Column("acked_by", sa.Text), sa.Column("acked_at", TIME), sa.Column("barge_in", sa.Integer),
        sa.Column("note", sa.Text))
    op.create_index("alerts_call", "alerts", ["call_id"])
    op.create_index("alerts_status", "alerts", ["status", "raised_at"])
    op.create_table(
        "deliveries",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
        sa.Column("alert_id", sa.Text), sa.Column("url", sa.Text), sa.Column("event_type", sa.Text),
        sa.Column("attempt", sa.Integer), sa.Column("ok", sa.Integer), sa.Column("status_code", sa.Integer),
        sa.Column("error", sa.Text), sa.Column("at", TIME),
        sqlite_autoincrement=True)
    op.create_index("deliveries_alert", "deliveries", ["alert_id"])
    op.create_table(
        "probes",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False), sa.Column("at", TIME, nullable=False),
        sa.Column("pad", sa.LargeBinary))


def downgrade() -> None:
    for table in ("probes", "deliveries", "alerts", "events", "calls"):
        op.drop_table(table)
