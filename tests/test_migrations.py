"""Schema migrations (one Alembic history for SQLite and PostgreSQL): a SQLite file made before migrations is
stamped at the baseline and keeps its rows; new databases of both kinds get the same tables and indexes."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command

from calltone.server import migrations
from calltone.server.sqlbase import ALERT_FIELDS, CALL_FIELDS
from calltone.server.sqlite import SqliteRepository, migration_engine

from .pg import PgServer, postgres  # noqa: F401 -- the session's PostgreSQL server

# The schema as calltone created it before it had migrations (server/store.py at that time), verbatim.
LEGACY_SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    call_id TEXT PRIMARY KEY, status TEXT NOT NULL, agent_id TEXT, language TEXT, metadata TEXT, roles TEXT,
    started_at REAL NOT NULL, ended_at REAL, duration_s REAL, escalations INTEGER NOT NULL DEFAULT 0,
    summary TEXT, last_seq INTEGER NOT NULL DEFAULT 0, updated_at REAL);
CREATE INDEX IF NOT EXISTS calls_started ON calls(started_at);
CREATE INDEX IF NOT EXISTS calls_agent ON calls(agent_id, started_at);
CREATE TABLE IF NOT EXISTS events (
    call_id TEXT NOT NULL, seq INTEGER NOT NULL, type TEXT NOT NULL, t REAL, server_time REAL, body TEXT NOT NULL,
    PRIMARY KEY (call_id, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS alerts (
    alert_id TEXT PRIMARY KEY, call_id TEXT NOT NULL, agent_id TEXT, channel TEXT, reason TEXT, evidence TEXT,
    excerpt TEXT, status TEXT NOT NULL, t REAL, seq INTEGER, raised_at REAL, cleared_at REAL, acked_by TEXT,
    acked_at REAL, barge_in INTEGER, note TEXT);
CREATE INDEX IF NOT EXISTS alerts_call ON alerts(call_id);
CREATE INDEX IF NOT EXISTS alerts_status ON alerts(status, raised_at);
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT, alert_id TEXT, url TEXT, event_type TEXT, attempt INTEGER,
    ok INTEGER, status_code INTEGER, error TEXT, at REAL);
CREATE INDEX IF NOT EXISTS deliveries_alert ON deliveries(alert_id);
CREATE TABLE IF NOT EXISTS probes (id INTEGER PRIMARY KEY, at REAL NOT NULL, pad BLOB);
"""
LEGACY_ROWS = """
INSERT INTO calls (call_id, status, agent_id, language, metadata, roles, started_at, ended_at, duration_s, escalations,
                   summary, last_seq, updated_at)
VALUES ('old-1', 'ended', 'a1', 'zh', '{"queue": "售后"}', '["customer", "agent"]', 1700000000.5, 1700000060.5, 60.0, 1,
        '{"end_reason": "stopped"}', 2, 1700000060.5);
INSERT INTO events VALUES ('old-1', 1, 'call.started', 0.0, 1700000000.5, '{"type": "call.started", "seq": 1}');
INSERT INTO events VALUES ('old-1', 2, 'call.ended', 60.0, 1700000060.5, '{"type": "call.ended", "seq": 2}');
INSERT INTO alerts (alert_id, call_id, status, evidence, excerpt, raised_at, barge_in)
VALUES ('al-1', 'old-1', 'acked', '{"index": 0.9}', '[]', 1700000030.0, 1);
INSERT INTO deliveries (alert_id, url, event_type, attempt, ok, status_code, error, at)
VALUES ('al-1', 'http://h/hook', 'escalation.raised', 1, 0, 500, 'HTTP 500', 1700000031.0),
       ('al-1', 'http://h/hook', 'escalation.raised', 2, 1, 204, NULL, 1700000032.0);
"""


def legacy_sqlite(path: Path, rows: bool = True) -> Path:
    conn = sqlite3.connect(path)
    conn.executescript(LEGACY_SCHEMA + (LEGACY_ROWS if rows else ""))
    conn.close()
    return path


def sqlite_objects(path: Path) -> dict[str, str]:
    """name -> CREATE statement of every table and index (Alembic's own table left out)."""
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL AND name != 'alembic_version' "
                            "AND tbl_name NOT IN ('alembic_version', 'sqlite_sequence')").fetchall()
    return dict(rows)


def schema(engine: sa.Engine, exact_types: bool) -> dict[str, dict]:
    """Tables: their columns in order (name, type, nullable, default), primary key and indexes.  A column
    PostgreSQL fills from a sequence (SQLite: AUTOINCREMENT) has the default "serial"."""
    try:
        with engine.connect() as conn:
            insp = sa.inspect(conn)
            out: dict[str, dict] = {}
            for table in sorted(set(insp.get_table_names()) - {"alembic_version", "sqlite_sequence"}):
                pk = insp.get_pk_constraint(table)["constrained_columns"]
                cols = [(c["name"], str(c["type"]) if exact_types else c["type"]._type_affinity.__name__,
                         c["nullable"] and c["name"] not in pk, _default(c["default"])) for c in insp.get_columns(table)]
                indexes = {ix["name"]: ix["column_names"] for ix in insp.get_indexes(table)}
                out[table] = {"columns": cols, "pk": pk, "indexes": indexes}
            return out
    finally:
        engine.dispose()


def _default(default: str | None) -> str | None:
    return "serial" if default and default.startswith("nextval(") else default


def test_sqlite_made_before_migrations_is_stamped_keeps_its_rows_and_works(tmp_path: Path) -> None:
    path = legacy_sqlite(tmp_path / "calltone.db")
    before = sqlite_objects(path)
    repo = SqliteRepository(path)
    try:
        assert repo.revision == migrations.head()  # stamped at the baseline, then upgraded by the later revisions
        after = sqlite_objects(path)
        # stamped, not rebuilt: what the baseline made is still there as it was, except columns later revisions add
        assert {k: v for k, v in after.items() if k != "calls" and k in before} == {k: v for k, v in before.items()
                                                                                   if k != "calls"}
        assert after["calls"].startswith(before["calls"].rstrip(")").rstrip())
        with sqlite3.connect(path) as conn:
            assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [(migrations.head(),)]
        row = repo.get_call("old-1")
        assert row is not None and row["metadata"] == {"queue": "售后"} and row["summary"] == {"end_reason": "stopped"}
        assert [(s, t) for s, t, _ in repo.events("old-1")] == [(1, "call.started"), (2, "call.ended")]
        alert = repo.get_alert("al-1")
        assert alert is not None and alert["barge_in"] is True and alert["evidence"] == {"index": 0.9}
        with repo.transaction():  # and it works
            repo.upsert_call({"call_id": "new-1", "status": "live", "started_at": 1800000000.0})
            repo.append_event("new-1", 1, "call.started", 0.0, 1800000000.0, "{}")
            repo.log_delivery("al-1", "http://h/hook", "alert.acked", 1, True, 204, None)
        assert [d["id"] for d in repo.deliveries("al-1")] == [1, 2, 3]
        assert [c["call_id"] for c in repo.list_calls()] == ["new-1", "old-1"]
        assert repo.purge(1750000000.0) == ["old-1"] and repo.get_alert("al-1") is None
    finally:
        repo.close()
    objects = sqlite_objects(path)
    again = SqliteRepository(path)  # opening a migrated database again changes nothing
    again.close()
    assert again.revision == migrations.head() and sqlite_objects(path) == objects


def test_new_sqlite_and_postgres_get_the_same_tables_and_indexes(tmp_path: Path, postgres: PgServer) -> None:
    from calltone.server.postgres import PostgresRepository, conninfo, migration_engine as pg_engine

    legacy = legacy_sqlite(tmp_path / "legacy.db", rows=False)
    SqliteRepository(legacy).close()
    fresh = tmp_path / "fresh.db"
    SqliteRepository(fresh).close()
    url = postgres.create_database()
    PostgresRepository(url).close()
    legacy_schema = schema(migration_engine(legacy), exact_types=True)
    assert schema(migration_engine(fresh), exact_types=True) == legacy_schema  # the same DDL as before migrations
    objects = sqlite_objects(fresh)
    assert "WITHOUT ROWID" in objects["events"] and "AUTOINCREMENT" in objects["deliveries"]
    sqlite_generic = schema(migration_engine(fresh), exact_types=False)
    sqlite_generic["deliveries"]["columns"][0] = ("id", "Integer", False, "serial")  # AUTOINCREMENT
    pg_generic = schema(pg_engine(conninfo(url)), exact_types=False)
    assert pg_generic == sqlite_generic
    assert {"calls", "events", "alerts", "deliveries", "probes"} <= set(pg_generic)
    assert tuple(c[0] for c in pg_generic["calls"]["columns"]) == CALL_FIELDS
    assert tuple(c[0] for c in pg_generic["alerts"]["columns"]) == ALERT_FIELDS
    pg_exact = schema(pg_engine(conninfo(url)), exact_types=True)
    assert {c[1] for c in pg_exact["calls"]["columns"] if c[0].endswith("_at")} == {"DOUBLE PRECISION"}  # not float4


def test_a_database_with_only_some_of_the_tables_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "odd.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE calls (call_id TEXT PRIMARY KEY)")
    with pytest.raises(RuntimeError, match="not a database calltone made"):
        SqliteRepository(path)


def test_a_database_from_a_newer_calltone_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "calltone.db"
    SqliteRepository(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE alembic_version SET version_num='9999'")
    with pytest.raises(Exception, match="9999"):
        SqliteRepository(path)


def test_downgrade_to_nothing_and_up_again(tmp_path: Path) -> None:
    path = tmp_path / "calltone.db"
    SqliteRepository(path).close()
    cfg = migrations.config()
    engine = migration_engine(path)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "base")
    engine.dispose()
    assert sqlite_objects(path) == {}
    repo = SqliteRepository(path)
    repo.close()
    assert repo.revision == migrations.head() and "calls" in sqlite_objects(path)


def test_nodes_starting_together_migrate_a_new_postgres_database_once(postgres: PgServer) -> None:
    from calltone.server.postgres import PostgresRepository

    url = postgres.create_database()
    results: list[str] = []
    errors: list[BaseException] = []

    def open_one() -> None:
        try:
            repo = PostgresRepository(url)
            results.append(repo.revision)
            repo.close()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and results == [migrations.head()] * 3


def test_cli_db_upgrade(tmp_path: Path, postgres: PgServer) -> None:
    url = postgres.create_database()
    for env in ({"CALLTONE_SERVER__DATA_DIR": str(tmp_path)}, {"CALLTONE_SERVER__DATABASE_URL": url}):
        out = subprocess.run([sys.executable, "-m", "calltone.cli", "db", "upgrade"], capture_output=True, text=True,
                             env={"PATH": "/usr/bin:/bin", **env}, timeout=120)
        assert out.returncode == 0, out.stderr
        assert f"schema revision {migrations.head()}" in out.stdout
    assert (tmp_path / "calltone.db").is_file()
