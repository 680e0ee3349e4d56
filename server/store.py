"""Persistence: calls, their events (per-call ``seq``), alerts and webhook deliveries.

Callers use :class:`AsyncStore`, which serialises every write through ONE writer
thread (FIFO, batched into one transaction when writes queue up) and runs reads in a
small thread pool, so the event loop never waits on the database.  A write that fails for want
of storage (disk full, I/O error, the database server unreachable) puts the store in a *failed* state
(:attr:`AsyncStore.failure`) until a probe write (:meth:`AsyncStore.probe`) succeeds again.  The storage
itself is a :class:`Repository`: :class:`~calltone.server.sqlite.SqliteRepository` is the embedded default,
:class:`~calltone.server.postgres.PostgresRepository` the one many nodes share (``server.database_url``;
``server/database.py`` picks one).  Both keep their schema with the migrations in ``server/migrations``.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol, Sequence, TypeVar

from calltone.server.sqlite import SqliteRepository

if TYPE_CHECKING:
    from calltone.server.kpis import KpiSlot, KpiSlotQuery

log = logging.getLogger("calltone.server.store")
T = TypeVar("T")

PROBE_EVERY_S = 1.0  # while failed, at most one probe write per second


class StoreUnavailable(Exception):
    """A write refused because the store (or an earlier write it depends on) failed."""


class CommitInDoubt(Exception):
    """The connection was lost while committing: the writes may or may not be stored (so they are not retried)."""


@dataclass(frozen=True)
class CallSearch:
    """What ``GET /v1/search`` asks the store for (``Repository.search_calls``); None or empty: no filter."""

    words: tuple[str, ...] = ()  # each must occur in the call's (masked) final transcript, case-insensitively
    agent_id: str | None = None
    queue: str | None = None  # the call's queue (metadata.queue)
    since: float | None = None  # started at or after (Unix seconds)
    until: float | None = None  # started before (Unix seconds)
    peak_grade: str | None = None  # the highest grade any scored speaker reached
    escalated: bool | None = None
    status: str | None = None
    limit: int = 50
    offset: int = 0


class Repository(Protocol):
    """Storage operations (synchronous; AsyncStore decides which thread runs them)."""

    revision: str  # the schema revision (server/migrations) the database was brought to when it was opened

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
    def search_calls(self, q: CallSearch) -> tuple[list[dict], int]: ...  # one page, newest first; the total
    def log_audio_access(self, access: Mapping[str, Any]) -> None: ...
    def audio_accesses(self, call_id: str | None = None, limit: int = 100,
                       offset: int = 0) -> tuple[list[dict], int]: ...  # newest first; the total
    def recording_of(self, call_id: str) -> dict | None: ...  # a scored call's recording: {file, options}
    def interrupt_live(self) -> int: ...
    def hold_call(self, call_id: str, owner: str, **fields: Any) -> bool: ...  # fenced update: only its owner, while live
    def live_owners(self) -> list[str | None]: ...
    def interrupt_owned(self, owners: Sequence[str | None]) -> int: ...
    # scoring jobs (server/jobs.py); a job's and its items' changes are fenced by the node that holds it
    def insert_job(self, job: dict, items: list[dict]) -> None: ...
    def claimable_jobs(self, now: float, limit: int = 10) -> list[str]: ...
    def claim_job(self, job_id: str, owner: str, now: float, lease_until: float) -> bool: ...
    def update_job(self, job_id: str, owner: str, **fields: Any) -> bool: ...
    def update_job_item(self, job_id: str, seq: int, owner: str, **fields: Any) -> bool: ...
    def get_job(self, job_id: str) -> dict | None: ...
    def list_jobs(self, limit: int = 100) -> list[dict]: ...
    def job_items(self, job_ids: Sequence[str]) -> list[dict]: ...
    # KPIs over time (server/kpis.py) and the anomalies raised on them (server/anomaly.py)
    def kpi_sums(self, q: "KpiSlotQuery") -> list["KpiSlot"]: ...
    def insert_anomaly(self, anomaly: dict) -> bool: ...  # False: an anomaly with this id is stored already
    def list_anomalies(self, since: float, limit: int = 100) -> list[dict]: ...
    def take_turn(self, name: str, slot: int, node: str, now: float) -> bool: ...  # periodic work: one node a slot
    def probe(self) -> None: ...  # a small real write: succeeds only when the store can write
    def purge(self, before: float) -> list[str]: ...
    def is_storage_failure(self, exc: BaseException) -> bool: ...  # the storage failed, not the data written
    def close(self) -> None: ...


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
        runs (so a write can depend on an earlier one having committed: see LiveCall).  One bad write does not
        take the others with it; but once the store itself fails, the writes left are not tried (each would
        wait on the broken store, and a commit in doubt may have stored them)."""
        try:
            with self.repo.transaction():
                results = [fn(self.repo) for fn, _ in batch]
        except Exception as exc:  # noqa: BLE001
            if self._store_down(exc):
                self._record(exc)
                self._refuse(batch, exc)
                return
        else:
            for value, (_, fut) in zip(results, batch):
                fut.set_result(value)
            return
        for i, (fn, fut) in enumerate(batch):
            try:
                with self.repo.transaction():
                    value = fn(self.repo)
            except Exception as exc:  # noqa: BLE001
                self._failed(exc)
                fut.set_exception(exc)
                if self._store_down(exc):
                    self._refuse(batch[i + 1 :], exc)
                    return
            else:
                fut.set_result(value)

    def _store_down(self, exc: Exception) -> bool:
        """The storage failed (not one write's data, nor a write refused because of an earlier failure)."""
        return self.is_storage_failure(exc) and not isinstance(exc, StoreUnavailable)

    def _refuse(self, writes: list[tuple[Callable[[Repository], Any], Future]], cause: Exception) -> None:
        for _, fut in writes:
            self.write_errors += 1
            if isinstance(cause, CommitInDoubt):
                fut.set_exception(CommitInDoubt(str(cause)))
            else:
                fut.set_exception(StoreUnavailable(f"not written: the store failed ({cause})"))

    def is_storage_failure(self, exc: BaseException) -> bool:
        """True for errors of the storage itself (disk full, I/O, corruption, the database server unreachable,
        a refusal because of one), not of the data written."""
        return isinstance(exc, (StoreUnavailable, CommitInDoubt, OSError)) or self.repo.is_storage_failure(exc)

    def _failed(self, exc: Exception) -> None:
        self.write_errors += 1
        self._record(exc)

    def _record(self, exc: Exception) -> None:
        """Log a failed write; a storage failure puts the store in the failed state."""
        if isinstance(exc, StoreUnavailable):
            log.warning("store write refused: %s", exc)
        elif self.is_storage_failure(exc):
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
