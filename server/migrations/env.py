"""Alembic environment: runs on the connection (and in the transaction) that :func:`upgrade` opened."""

from __future__ import annotations

from alembic import context

connection = context.config.attributes["connection"]
context.configure(connection=connection)
with context.begin_transaction():
    context.run_migrations()
