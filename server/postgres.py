"""The shared store for many nodes: :class:`PostgresRepository` (psycopg 3 with a ``psycopg_pool`` pool).

Synchronous like every repository: AsyncStore runs its writes on the one writer thread and its reads on the
reader pool.  A transaction takes a pooled connection when its first statement runs (a write refused before
it touches the database costs no connection) and keeps it on that thread until it ends; a statement outside
a transaction runs on a pooled connection in autocommit.  Connections are checked when taken from the pool,
so after a server restart the first write gets a fresh one.

A lost connection is a storage failure: AsyncStore goes *failed* until a probe write gets through to the
server again.  If it was lost while committing, the outcome is unknown and :class:`CommitInDoubt` says so
(the writes may be stored: nothing of the batch is retried, and a resumed call continues after whatever
``last_seq`` the server has).
"""

from __future__ import annotations

import threading
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import psycopg
import psycopg.errors
import sqlalchemy as sa
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from calltone.server import migrations
from calltone.server.sqlbase import SqlRepository
from calltone.server.store import CommitInDoubt

POOL_SIZE = 4  # the writer thread, two readers, one more (a caller on its own thread)
POOL_TIMEOUT_S = 3.0  # waiting for a connection longer than this: the server is unreachable (a storage failure)
CONNECT_TIMEOUT_S = 5  # libpq connect_timeout, unless the URL sets one
# Errors of the server rather than of the data: connection lost or refused, disk full, out of memory,
# shutdown, a pool that cannot connect (all OperationalError), corrupt data, and a read-only server
# (a standby after a failover).
_STORAGE_ERRORS = (psycopg.OperationalError, psycopg.errors.DataCorrupted, psycopg.errors.IndexCorrupted,
                   psycopg.errors.ReadOnlySqlTransaction)


@dataclass
class _Tx:
    """The transaction open on one thread; ``conn`` once its first statement ran."""

    conn: psycopg.Connection | None = None


def conninfo(url: str) -> str:
    """The URL (``postgresql://user@host:5432/db``) with calltone's connect timeout unless it sets its own."""
    params = conninfo_to_dict(url)
    params.setdefault("connect_timeout", CONNECT_TIMEOUT_S)
    return make_conninfo("", **params)


def describe(url: str) -> str:
    """Where the database is, for logs (no password)."""
    p = conninfo_to_dict(url)
    return f"postgresql {p.get('user', '')}@{p.get('host', '')}:{p.get('port', 5432)}/{p.get('dbname', '')}"


def migration_engine(dsn: str) -> sa.Engine:
    return sa.create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(dsn), poolclass=sa.pool.NullPool)


class PostgresRepository(SqlRepository):
    """PostgreSQL through a small connection pool.  Opening it brings the database to the newest schema."""

    PARAM = "%({})s"
    GREATEST = "GREATEST"
    FLOOR = "FLOOR({})"

    def __init__(self, url: str, pool_size: int = POOL_SIZE, pool_timeout_s: float = POOL_TIMEOUT_S) -> None:
        dsn = conninfo(url)
        self.location = describe(url)
        self.revision = migrations.upgrade(migration_engine(dsn))
        self._local = threading.local()
        self._pool = ConnectionPool(dsn, min_size=1, max_size=pool_size, timeout=pool_timeout_s, open=False,
                                    kwargs={"autocommit": True, "row_factory": dict_row},
                                    check=ConnectionPool.check_connection, name="calltone-store")
        self._pool.open(wait=True, timeout=pool_timeout_s)

    def __repr__(self) -> str:
        return f"PostgresRepository({self.location!r})"

    @staticmethod
    def is_storage_failure(exc: BaseException) -> bool:
        return isinstance(exc, _STORAGE_ERRORS)

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection]:
        tx: _Tx | None = getattr(self._local, "tx", None)
        if tx is None:
            with self._pool.connection() as conn:
                yield conn
            return
        if tx.conn is None:
            conn = self._pool.getconn()
            try:
                conn.execute("BEGIN")
            except BaseException:
                self._pool.putconn(conn)
                raise
            tx.conn = conn
        yield tx.conn

    def _run(self, sql: str, params: Mapping[str, Any]) -> int:
        with self._connection() as conn:
            return conn.execute(sql, params).rowcount  # type: ignore[arg-type]

    def _rows(self, sql: str, params: Mapping[str, Any]) -> Sequence[Mapping[str, Any]]:
        with self._connection() as conn:
            return conn.execute(sql, params).fetchall()  # type: ignore[arg-type]

    @contextmanager
    def transaction(self) -> Iterator[None]:
        tx = self._local.tx = _Tx()
        try:
            yield
        except BaseException:
            if tx.conn is not None and not tx.conn.broken:
                with suppress(psycopg.Error):  # the error being raised says more; the pool resets the connection
                    tx.conn.execute("ROLLBACK")
            raise
        else:
            if tx.conn is not None:
                self._commit(tx.conn)
        finally:
            self._local.tx = None
            if tx.conn is not None:
                self._pool.putconn(tx.conn)  # a broken connection is discarded, a failed one rolled back

    @staticmethod
    def _commit(conn: psycopg.Connection) -> None:
        try:
            conn.execute("COMMIT")
        except psycopg.OperationalError as exc:
            if conn.broken:  # the server may have committed before the connection went
                raise CommitInDoubt(f"the connection to PostgreSQL was lost while committing: {exc}") from exc
            raise

    def close(self) -> None:
        self._pool.close()
