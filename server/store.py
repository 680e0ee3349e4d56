"""Persistence: calls, their events (per-call ``seq``), alerts and webhook deliveries.

Callers use :class:`AsyncStore`, which serialises every write through ONE writer
thread (FIFO, batched into one transaction when writes queue up) and runs reads in a
small thread pool, so the event loop never waits on SQLite.  A write that fails for want
of storage (disk full, I/O error) puts the store in a *failed* state (:attr:`AsyncStore.failure`)
until a probe write (:meth:`AsyncStore.probe`) succeeds again.  The storage itself is
a :class:`Repository`; :class:`SqliteRepository` (WAL, ``synchronous=NORMAL``: a
committed event survives a process crash) is the embedded default.  A PostgreSQL
repository only has to implement the same protocol.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import sqlite3
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, TypeVar

log = logging.getLogger("calltone.server.store")
T = TypeVar("T")

PROBE_EVERY_S = 1.0  # while failed, at most one probe write per second


class StoreUnavailable(Exception):
    """A write refused because the store (or an earlier write it depends on) failed."""


def is_storage_failure(exc: BaseException) -> bool:
    """True for errors of the storage itself (disk full, I/O, corruption), not of the data written."""
    if isinstance(exc, (StoreUnavailable, OSError, sqlite3.OperationalError)):
        return True
    return type(exc) is sqlite3.DatabaseError

CALL_FIELDS = ("call_id", "status", "agent_id", "language", "metadata", "roles", "started_at", "ended_at",
               "duration_s", "escalations", "summary", "last_seq", "updated_at")
ALERT_FIELDS = ("alert_id", "call_id", "agent_id", "channel", "reason", "evidence", "excerpt", "status", "t", "seq",
                "raised_at", "cleared_at", "acked_by", "acked_at", "barge_in", "note")
_JSON_FIELDS = {"metadata", "roles", "summary", "evidence", "excerpt"}


class Repository(Protocol):
    """Storage operations (synchronous; AsyncStore decides which thread runs them)."""

    def transaction(self) -> Any: ...  # context manager grouping writes
    def upsert_call(self, call: dict) -> None: ...
    def update_call(self, call_id: str, **fields: Any) -> None: ...
    def append_event(self, call_id: str, seq: int, type: str, t: float, server_time: float, body: str) -> None: ...
    def insert_alert(self, alert: dict) -> None: ...
    def update_alert(self, alert_id: str, **fields: Any) -> None: ...
    def log_delivery(self, alert_id: str, url: str, event_type: str, attempt: int, ok: bool,
                     status_code: int | None, error: str | None) -> None: ...
    def get_call(self, call_id: str) -> dict | None: ...
    def list_calls(self, status: str | None = None, agent_id: str | None = None, since: float | None = None,
                   escalated: bool | None = None, limit: int = 50) -> list[dict]: ...
    def events(self, call_id: str, after: int = 0, types: list[str] | None = None,
               limit: int | None = None) -> list[tuple[int, str, str]]: ...  # (seq, type, JSON)
    def last_seq(self, call_id: str) -> int: ...
    def get_alert(self, alert_id: str) -> dict | None: ...
    def list_alerts(self, call_id: str | None = None, status: str | None = None, limit: int = 100) -> list[dict]: ...
    def deliveries(self, alert_id: str) -> list[dict]: ...
    def interrupt_live(self) -> int: ...
    def probe(self) -> None: ...  # a small real write: succeeds only when the store can write
    def purge(self, before: float) -> list[str]: ...
    def close(self) -> None: ...


_SCHEMA = """
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


def _encode(fields: dict) -> dict:
    return {k: (json.dumps(v, ensure_ascii=False) if k in _JSON_FIELDS and v is not None else v) for k, v in fields.items()}


def _decode(row: sqlite3.Row | None) -> dict | None:
    if row is None:
        return None
    d = dict(row)
    for k in _JSON_FIELDS & d.keys():
        if d[k] is not None:
            d[k] = json.loads(d[k])
    if "barge_in" in d and d["barge_in"] is not None:
        d["barge_in"] = bool(d["barge_in"])
    return d


class SqliteRepository:
    """SQLite in WAL mode; one connection per thread."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        conn = self._conn()
        conn.executescript(_SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=10000")
            self._local.conn = conn
            with self._lock:
                self._conns.append(conn)
        return conn

    @contextmanager
    def transaction(self) -> Iterator[None]:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    # -- writes ---------------------------------------------------------------------------
    def upsert_call(self, call: dict) -> None:
        row = _encode({k: call.get(k) for k in CALL_FIELDS if k in call})
        cols = ", ".join(row)
        marks = ", ".join(f":{k}" for k in row)
        updates = ", ".join(f"{k}=excluded.{k}" for k in row if k != "call_id")
        self._conn().execute(f"INSERT INTO calls ({cols}) VALUES ({marks}) ON CONFLICT(call_id) DO UPDATE SET {updates}", row)

    def update_call(self, call_id: str, **fields: Any) -> None:
        if not fields:
            return
        bad = set(fields) - set(CALL_FIELDS)
        if bad:
            raise ValueError(f"unknown call fields {bad}")
        row = _encode(fields)
        sets = ", ".join(f"{k}=:{k}" for k in row)
        self._conn().execute(f"UPDATE calls SET {sets} WHERE call_id=:_id", {**row, "_id": call_id})

    def append_event(self, call_id: str, seq: int, type: str, t: float, server_time: float, body: str) -> None:
        conn = self._conn()
        conn.execute("INSERT INTO events (call_id, seq, type, t, server_time, body) VALUES (?, ?, ?, ?, ?, ?)",
                     (call_id, seq, type, t, server_time, body))
        conn.execute("UPDATE calls SET last_seq=MAX(last_seq, ?), updated_at=? WHERE call_id=?", (seq, server_time, call_id))

    def insert_alert(self, alert: dict) -> None:
        row = _encode({k: alert.get(k) for k in ALERT_FIELDS})
        cols = ", ".join(row)
        marks = ", ".join(f":{k}" for k in row)
        self._conn().execute(f"INSERT OR REPLACE INTO alerts ({cols}) VALUES ({marks})", row)

    def update_alert(self, alert_id: str, **fields: Any) -> None:
        bad = set(fields) - set(ALERT_FIELDS)
        if bad:
            raise ValueError(f"unknown alert fields {bad}")
        row = _encode(fields)
        sets = ", ".join(f"{k}=:{k}" for k in row)
        self._conn().execute(f"UPDATE alerts SET {sets} WHERE alert_id=:_id", {**row, "_id": alert_id})

    def log_delivery(self, alert_id: str, url: str, event_type: str, attempt: int, ok: bool,
                     status_code: int | None, error: str | None) -> None:
        self._conn().execute(
            "INSERT INTO deliveries (alert_id, url, event_type, attempt, ok, status_code, error, at) VALUES (?,?,?,?,?,?,?,?)",
            (alert_id, url, event_type, attempt, int(ok), status_code, error, time.time()))

    def interrupt_live(self) -> int:
        """After a crash: calls left 'live' become 'interrupted' (a producer may resume them)."""
        return self._conn().execute("UPDATE calls SET status='interrupted' WHERE status='live'").rowcount

    def probe(self) -> None:
        """Rewrite one row with a page's worth of bytes, so the write needs free space as an event would."""
        self._conn().execute("INSERT OR REPLACE INTO probes (id, at, pad) VALUES (1, ?, zeroblob(4096))", (time.time(),))

    def purge(self, before: float) -> list[str]:
        conn = self._conn()
        ids = [r[0] for r in conn.execute("SELECT call_id FROM calls WHERE started_at < ? AND status != 'live'", (before,))]
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            marks = ",".join("?" * len(chunk))
            conn.execute(f"DELETE FROM deliveries WHERE alert_id IN (SELECT alert_id FROM alerts WHERE call_id IN ({marks}))", chunk)
            for table in ("events", "alerts", "calls"):
                conn.execute(f"DELETE FROM {table} WHERE call_id IN ({marks})", chunk)
        return ids

    # -- reads ----------------------------------------------------------------------------
    def get_call(self, call_id: str) -> dict | None:
        return _decode(self._conn().execute("SELECT * FROM calls WHERE call_id=?", (call_id,)).fetchone())

    def list_calls(self, status: str | None = None, agent_id: str | None = None, since: float | None = None,
                   escalated: bool | None = None, limit: int = 50) -> list[dict]:
        where, args = [], []
        if status:
            where.append("status=?")
            args.append(status)
        if agent_id:
            where.append("agent_id=?")
            args.append(agent_id)
        if since is not None:
            where.append("started_at>=?")
            args.append(since)
        if escalated is not None:
            where.append("escalations>0" if escalated else "escalations=0")
        sql = "SELECT * FROM calls" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY started_at DESC LIMIT ?"
        return [_decode(r) for r in self._conn().execute(sql, (*args, limit))]

    def events(self, call_id: str, after: int = 0, types: list[str] | None = None,
               limit: int | None = None) -> list[tuple[int, str, str]]:
        sql, args = "SELECT seq, type, body FROM events WHERE call_id=? AND seq>?", [call_id, after]
        if types:
            sql += f" AND type IN ({','.join('?' * len(types))})"
            args += types
        sql += " ORDER BY seq"
        if limit:
            sql += " LIMIT ?"
            args.append(limit)
        return [(r[0], r[1], r[2]) for r in self._conn().execute(sql, args)]

    def last_seq(self, call_id: str) -> int:
        row = self._conn().execute("SELECT MAX(seq) FROM events WHERE call_id=?", (call_id,)).fetchone()
        return int(row[0] or 0)

    def get_alert(self, alert_id: str) -> dict | None:
        return _decode(self._conn().execute("SELECT * FROM alerts WHERE alert_id=?", (alert_id,)).fetchone())

    def list_alerts(self, call_id: str | None = None, status: str | None = None, limit: int = 100) -> list[dict]:
        where, args = [], []
        if call_id:
            where.append("call_id=?")
            args.append(call_id)
        if status:
            where.append("status=?")
            args.append(status)
        sql = "SELECT * FROM alerts" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY raised_at LIMIT ?"
        return [_decode(r) for r in self._conn().execute(sql, (*args, limit))]

    def deliveries(self, alert_id: str) -> list[dict]:
        rows = self._conn().execute("SELECT * FROM deliveries WHERE alert_id=? ORDER BY id", (alert_id,))
        return [dict(r) for r in rows]

    def close(self) -> None:
        with self._lock:
            for c in self._conns:
                try:
                    c.close()
                except Exception:
                    pass
            self._conns.clear()


_STOP = object()


class AsyncStore:
    """Ordered, batched writes on one thread; reads on a small pool; never blocks the loop."""

    def __init__(self, repo: Repository, max_batch: int = 256) -> None:
        self.repo = repo
        self.max_batch = max_batch
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._readers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="calltone-store-read")
        self.write_ops = 0
        self.write_batches = 0
        self.write_seconds = 0.0
        self.write_errors = 0
        self.max_batch_seen = 0
        self.failure: str | None = None  # why the store cannot write, while it cannot
        self._last_probe = 0.0
        self._thread = threading.Thread(target=self._run, name="calltone-store-write", daemon=True)
        self._thread.start()
        self._closed = False

    @classmethod
    def sqlite(cls, path: Path) -> "AsyncStore":
        return cls(SqliteRepository(path))

    # -- writes ---------------------------------------------------------------------------
    def submit(self, fn: Callable[[Repository], T]) -> Future:
        """Queue a write (thread-safe); writes run in submission order. Returns a concurrent Future."""
        fut: Future = Future()
        if self._closed:
            fut.set_exception(RuntimeError("store is closed"))
            return fut
        self._q.put((fn, fut))
        return fut

    async def write(self, fn: Callable[[Repository], T]) -> T:
        return await asyncio.wrap_future(self.submit(fn))

    async def read(self, fn: Callable[[Repository], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._readers, fn, self.repo)

    async def probe(self) -> bool:
        """While failed: try a real write (at most once per PROBE_EVERY_S); True once the store can write again."""
        if self.failure is None:
            return True
        now = time.monotonic()
        if now - self._last_probe < PROBE_EVERY_S:
            return False
        self._last_probe = now
        try:
            await self.write(lambda r: r.probe())
        except Exception as exc:  # noqa: BLE001
            log.warning("store still cannot write: %s", exc)
            return False
        log.warning("store can write again (it failed: %s)", self.failure)
        self.failure = None
        return True

    @property
    def pending(self) -> int:
        return self._q.qsize()

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is _STOP:
                return
            batch = [item]
            while len(batch) < self.max_batch:
                try:
                    nxt = self._q.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    self._q.put(_STOP)
                    break
                batch.append(nxt)
            t0 = time.perf_counter()
            self._write_batch(batch)
            self.write_seconds += time.perf_counter() - t0
            self.write_batches += 1
            self.write_ops += len(batch)
            self.max_batch_seen = max(self.max_batch_seen, len(batch))

    def _write_batch(self, batch: list[tuple[Callable[[Repository], Any], Future]]) -> None:
        """One transaction for the batch; if it fails, each write on its own, its future settled before the next
        runs (so a write can depend on an earlier one having committed: see LiveCall)."""
        try:
            with self.repo.transaction():
                results = [fn(self.repo) for fn, _ in batch]
        except Exception:  # noqa: BLE001
            pass
        else:
            for value, (_, fut) in zip(results, batch):
                fut.set_result(value)
            return
        for fn, fut in batch:  # one bad write must not take the others with it
            try:
                with self.repo.transaction():
                    value = fn(self.repo)
            except Exception as exc:  # noqa: BLE001
                self._failed(exc)
                fut.set_exception(exc)
            else:
                fut.set_result(value)

    def _failed(self, exc: Exception) -> None:
        self.write_errors += 1
        if isinstance(exc, StoreUnavailable):
            log.warning("store write refused: %s", exc)
        elif is_storage_failure(exc):
            if self.failure is None:
                log.error("the store cannot write: %s", exc)
            self.failure = str(exc) or type(exc).__name__
        else:
            log.error("store write failed", exc_info=exc)

    def close(self) -> None:
        """Finish every queued write, then stop."""
        if self._closed:
            return
        self._closed = True
        self._q.put(_STOP)
        self._thread.join(timeout=30)
        self._readers.shutdown(wait=True)
        self.repo.close()
