"""Schema migrations: ONE Alembic history for SQLite and PostgreSQL (this folder: ``env.py``, ``versions/``).

Every repository brings its database to the newest revision when it opens it (:func:`upgrade`).  Revision
``0001`` is the schema calltone created before it had migrations: a database that already has those tables but
no ``alembic_version`` (made by that code) is *stamped* at ``0001``, its rows kept, not rebuilt.  A new revision
goes in ``versions/`` with ``down_revision`` set to the previous head, written so that it runs on both
databases (SQLite cannot ALTER most things: use ``op.batch_alter_table``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

log = logging.getLogger("calltone.server.migrations")

HERE = Path(__file__).resolve().parent
BASELINE = "0001"
BASELINE_TABLES = frozenset({"calls", "events", "alerts", "deliveries", "probes"})
PG_LOCK_KEY = 0x63616C6C746F6E65  # pg_advisory_xact_lock: one node at a time migrates a shared database


def config() -> Config:
    """The Alembic configuration of this history (no alembic.ini: everything is here)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    return cfg


def head() -> str:
    rev = ScriptDirectory.from_config(config()).get_current_head()
    assert rev is not None
    return rev


def upgrade(engine: sa.Engine) -> str:
    """Stamp a pre-migration database at the baseline, then upgrade to head, in one transaction.

    Returns the revision the database is at.  The engine is disposed of afterwards."""
    cfg = config()
    try:
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({PG_LOCK_KEY})")
            cfg.attributes["connection"] = conn
            tables = set(sa.inspect(conn).get_table_names())
            if "alembic_version" not in tables and tables & BASELINE_TABLES:
                missing = BASELINE_TABLES - tables
                if missing:
                    raise RuntimeError(f"the database has some of calltone's tables but not {sorted(missing)} and no "
                                       "alembic_version: not a database calltone made; refusing to migrate it")
                log.warning("database made before schema migrations: stamped at revision %s (rows kept)", BASELINE)
                command.stamp(cfg, BASELINE)
            command.upgrade(cfg, "head")
            rev = MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()
    assert rev is not None
    return rev
