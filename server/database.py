"""Which repository the service stores in: ``server.database_url`` (PostgreSQL, shared by many nodes) or, unset,
SQLite in ``<data_dir>/calltone.db`` exactly as a single node always did."""

from __future__ import annotations

from pathlib import Path

from calltone.server.sqlite import SqliteRepository
from calltone.server.store import Repository

SQLITE_FILE = "calltone.db"
POSTGRES_SCHEMES = ("postgresql://", "postgres://")
SQLITE_SCHEME = "sqlite:///"


def open_repository(url: str | None, data_dir: Path) -> Repository:
    """Open (and migrate to the newest schema) the database ``url`` names; SQLite under ``data_dir`` when unset.

    ``url``: ``postgresql://user:password@host:5432/dbname`` (any libpq URI: ``?sslmode=...`` and so on) or
    ``sqlite:////absolute/path.db``."""
    if not url:
        return SqliteRepository(data_dir / SQLITE_FILE)
    if url.startswith(SQLITE_SCHEME):
        return SqliteRepository(Path(url.removeprefix(SQLITE_SCHEME)))
    if url.startswith(POSTGRES_SCHEMES):
        try:  # the scaleout extra: a single node never needs it
            from calltone.server.postgres import PostgresRepository
        except ImportError as exc:
            raise RuntimeError(f"server.database_url is a PostgreSQL URL but psycopg is not installed ({exc}): "
                               "pip install 'calltone[scaleout]'") from exc
        return PostgresRepository(url)
    raise ValueError(f"server.database_url must start with {', '.join(POSTGRES_SCHEMES)} or {SQLITE_SCHEME}")

