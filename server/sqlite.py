"""The embedded store: :class:`SqliteRepository` (WAL, ``synchronous=NORMAL``: a committed event survives a
process crash), one connection per thread, its schema kept by the migrations (``server/migrations``)."""

from __future__ import annotations

import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import sqlalchemy as sa

from calltone.server import migrations
from calltone.server.sqlbase import SqlRepository

BUSY_TIMEOUT_S = 10.0


def _connect(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_S)


def migration_engine(path: Path) -> sa.Engine:
    """An engine for the migrations whose transactions really contain the DDL (pysqlite would run it outside)."""
    engine = sa.create_engine("sqlite://", creator=lambda: _connect(path), poolclass=sa.pool.NullPool)

    @sa.event.listens_for(engine, "begin")
    def _begin(conn: sa.Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


class SqliteRepository(SqlRepository):
    """SQLite in WAL mode; one connection per thread.  Opening it brings the file to the newest schema."""

    PARAM = ":{}"
    GREATEST = "MAX"
    FLOOR = "CAST({} AS INTEGER)"

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self.revision = migrations.upgrade(migration_engine(self.path))
        self._conn()

    def __repr__(self) -> str:
        return f"SqliteRepository({str(self.path)!r})"

    @staticmethod
    def is_storage_failure(exc: BaseException) -> bool:
        """Disk full, I/O error, a locked or corrupt database; not a constraint or a bad value."""
        return isinstance(exc, sqlite3.OperationalError) or type(exc) is sqlite3.DatabaseError

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect(self.path)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
            self._local.conn = conn
            with self._lock:
                self._conns.append(conn)
        return conn

    def _run(self, sql: str, params: Mapping[str, Any]) -> int:
        return self._conn().execute(sql, params).rowcount

    def _rows(self, sql: str, params: Mapping[str, Any]) -> Sequence[Mapping[str, Any]]:
        return self._conn().execute(sql, params).fetchall()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        try:
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:  # a COMMIT that failed (disk full) may leave it open: the next BEGIN would fail
                conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        with self._lock:
            for c in self._conns:
                try:
                    c.close()
                except Exception:
                    pass
            self._conns.clear()
