"""How the SQL repositories store values and build statements: the JSON fields, ``encode`` / ``decode``, the
column-name check, and :class:`SqlStatements`, the connection and dialect every query class of
``server/sqlbase.py``, ``server/sqlkpis.py`` and ``server/sqlreview.py`` runs its statements on.

Values are stored alike on both databases: JSON fields as ``json.dumps`` text, booleans as integers 0/1
(``barge_in`` is read back as ``bool``, a delivery's ``ok`` as 0/1), times as floats.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Iterable, Mapping, Sequence

JSON_FIELDS = frozenset({"metadata", "roles", "summary", "evidence", "excerpt", "options", "figures"})


def check_fields(fields: Iterable[str], allowed: tuple[str, ...], what: str) -> None:
    """Refuse column names a caller may not write (they are interpolated into SQL)."""
    bad = set(fields) - set(allowed)
    if bad:
        raise ValueError(f"unknown {what} fields {bad}")


def like_literal(text: str) -> str:
    """``text`` as a literal inside a LIKE pattern (with ``ESCAPE '!'``)."""
    return text.replace("!", "!!").replace("%", "!%").replace("_", "!_")


def encode(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Values as stored: JSON fields as text, booleans as 0/1."""
    out: dict[str, Any] = {}
    for k, v in fields.items():
        if k in JSON_FIELDS and v is not None:
            v = json.dumps(v, ensure_ascii=False)
        elif isinstance(v, bool):
            v = int(v)
        out[k] = v
    return out


def decode(row: Mapping[str, Any]) -> dict:
    """A stored row as callers see it: JSON fields parsed, ``barge_in`` as bool."""
    d = dict(row)
    for k in JSON_FIELDS & d.keys():
        if d[k] is not None:
            d[k] = json.loads(d[k])
    if d.get("barge_in") is not None:
        d["barge_in"] = bool(d["barge_in"])
    return d


class SqlStatements(ABC):
    """A subclass's connection and SQL dialect, and the pieces of statements built on them.  The concrete
    repository (``server/sqlite.py``, ``server/postgres.py``) supplies :meth:`_run`, :meth:`_rows` and the
    dialect's spellings; ``transaction()``, ``is_storage_failure`` and ``close()`` too."""

    PARAM: ClassVar[str]  # a named parameter: ":{}" (sqlite3) or "%({})s" (psycopg)
    GREATEST: ClassVar[str]  # the two-argument maximum: MAX (SQLite) or GREATEST (PostgreSQL)
    FLOOR: ClassVar[str]  # a positive number rounded down to an integer: CAST(... AS INTEGER) or FLOOR(...)

    @abstractmethod
    def _run(self, sql: str, params: Mapping[str, Any]) -> int:
        """Execute one statement; the number of rows it changed."""

    @abstractmethod
    def _rows(self, sql: str, params: Mapping[str, Any]) -> Sequence[Mapping[str, Any]]:
        """Execute one query; its rows as mappings of column name to value."""

    def _p(self, name: str) -> str:
        return self.PARAM.format(name)

    def _in(self, column: str, values: Sequence[Any], prefix: str) -> tuple[str, dict[str, Any]]:
        params = {f"{prefix}{i}": v for i, v in enumerate(values)}
        return f"{column} IN ({', '.join(self._p(k) for k in params)})", params

    def _equal(self, filters: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
        """column=value conditions for the filters given (an empty or None value filters nothing)."""
        params = {k: v for k, v in filters.items() if v}
        return [f"{k}={self._p(k)}" for k in params], params

    @staticmethod
    def _where(conditions: list[str]) -> str:
        return " WHERE " + " AND ".join(conditions) if conditions else ""

    def _insert(self, table: str, fields: tuple[str, ...], values: Mapping[str, Any]) -> None:
        row = encode({k: values[k] for k in fields if k in values})
        self._run(f"INSERT INTO {table} ({', '.join(row)}) VALUES ({', '.join(self._p(k) for k in row)})", row)
