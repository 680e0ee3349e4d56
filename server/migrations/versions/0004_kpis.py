"""KPIs over time: a call's figures as columns, written once at call end, and the anomalies raised.

``calls`` gains what ``GET /v1/kpis`` sums (``server/kpis.py``): ``queue`` and ``direction`` (from the call's
metadata), the customer's ``angry_s`` and whether they ``reached_angry``, the ``peak_index``, talk time
(``talk_s`` of every speaker, ``customer_talk_s``), ``silence_s``, ``overtalk_s``, ``interruptions`` (all
speakers) and the ``agent_speech_rate`` (its unit: ``server/kpis.py``).  Rows from before this revision
have NULLs there and are counted only in the figures they have.  Indexes: ended calls by start time
(``status, started_at``, then every column the KPI query groups, filters, sums or joins on, so that it reads
the index only) and by queue; alerts by call with what the alert sums read.  ``anomalies``: one row per anomaly raised; its id is made from what it judged (KPI, scope, scope
value, the hour), so that an anomaly is raised once whichever node judged it.  ``turns``: which node took
each interval of a periodic task (the anomaly judgement: one node per ``anomaly.interval_s``), the first to
insert the row.

Revision ID: 0004_kpis
Revises: 0003_jobs
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_kpis"
down_revision = "0003_jobs"
branch_labels = None
depends_on = None

TIME = sa.Double().with_variant(sa.REAL(), "sqlite")  # Unix seconds / seconds
COLUMNS = (("queue", sa.Text), ("direction", sa.Text), ("angry_s", TIME), ("reached_angry", sa.Integer),
           ("peak_index", TIME), ("talk_s", TIME), ("customer_talk_s", TIME), ("silence_s", TIME),
           ("overtalk_s", TIME), ("interruptions", sa.Integer), ("agent_speech_rate", TIME))
# the KPI query's range, its groups and filters, every column it sums, and the call id its alerts join on: it
# reads this index, never the table
KPI_INDEX = ["status", "started_at", "queue", "agent_id", "language", "direction", "duration_s", "escalations",
             *(name for name, _ in COLUMNS if name not in ("queue", "direction")), "call_id"]


def upgrade() -> None:
    for name, kind in COLUMNS:
        op.add_column("calls", sa.Column(name, kind))
    op.create_index("calls_kpi", "calls", KPI_INDEX)
    op.create_index("calls_queue", "calls", ["queue", "started_at"])
    op.create_index("alerts_kpi", "alerts", ["call_id", "raised_at", "acked_at", "barge_in"])  # the alert sums, from the index
    op.create_table(
        "anomalies",
        sa.Column("anomaly_id", sa.Text, primary_key=True), sa.Column("kpi", sa.Text, nullable=False),
        sa.Column("scope", sa.Text, nullable=False), sa.Column("scope_value", sa.Text, nullable=False),
        sa.Column("bucket_start", TIME, nullable=False), sa.Column("figures", sa.Text, nullable=False),
        sa.Column("raised_at", TIME, nullable=False))
    op.create_index("anomalies_raised", "anomalies", ["raised_at"])
    op.create_table(
        "turns",
        sa.Column("name", sa.Text, primary_key=True), sa.Column("slot", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("node", sa.Text, nullable=False), sa.Column("taken_at", TIME, nullable=False))


def downgrade() -> None:
    op.drop_table("turns")
    op.drop_table("anomalies")
    op.drop_index("alerts_kpi", "alerts")
    op.drop_index("calls_queue", "calls")
    op.drop_index("calls_kpi", "calls")
    with op.batch_alter_table("calls") as batch:  # SQLite rebuilds the table
        for name, _ in reversed(COLUMNS):
            batch.drop_column(name)
