"""Scoring jobs in the store: ``jobs`` (one row a job, with the node that claims it until ``lease_until``) and
``job_items`` (one row a recording: its status, call id, report paths, error, audio seconds, times), so that a
job survives the node that started it, resumes without re-scoring finished files, and any node reads its
progress.  Times are DOUBLE PRECISION on PostgreSQL, REAL on SQLite, as in the baseline.

Revision ID: 0003_jobs
Revises: 0002_call_owner
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_jobs"
down_revision = "0002_call_owner"
branch_labels = None
depends_on = None

TIME = sa.Double().with_variant(sa.REAL(), "sqlite")  # Unix seconds


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("job_id", sa.Text, primary_key=True), sa.Column("status", sa.Text, nullable=False),
        sa.Column("engine", sa.Text, nullable=False), sa.Column("options", sa.Text, nullable=False),
        sa.Column("uploaded", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("owner", sa.Text), sa.Column("lease_until", TIME), sa.Column("error", sa.Text),
        sa.Column("created_at", TIME, nullable=False), sa.Column("started_at", TIME), sa.Column("finished_at", TIME),
        sa.Column("updated_at", TIME))
    op.create_index("jobs_status", "jobs", ["status", "created_at"])
    op.create_table(
        "job_items",
        sa.Column("job_id", sa.Text, primary_key=True), sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("file", sa.Text, nullable=False), sa.Column("name", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False), sa.Column("call_id", sa.Text, nullable=False),
        sa.Column("report", sa.Text), sa.Column("report_json", sa.Text), sa.Column("error", sa.Text),
        sa.Column("audio_s", TIME), sa.Column("language", sa.Text), sa.Column("peak_grade", sa.Text),
        sa.Column("escalations", sa.Integer), sa.Column("started_at", TIME), sa.Column("finished_at", TIME),
        sa.Column("updated_at", TIME))


def downgrade() -> None:
    op.drop_table("job_items")
    op.drop_table("jobs")
