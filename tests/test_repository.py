"""The repository contract, the same tests on SQLite and on a real PostgreSQL server (``tests/pg.py``), and
AsyncStore on top of each: every Repository method, transactions, JSON round trips, ordering, purge, probe,
storage failures."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from calltone.server.database import open_repository
from calltone.server.sqlbase import PURGE_CHUNK
from calltone.server.store import AsyncStore, Repository, StoreUnavailable

from .pg import PgServer, postgres  # noqa: F401 -- the session's PostgreSQL server

NOW = 1_700_000_000.25
META = {"queue": "售后", "tags": ["vip", 1, None], "nested": {"ok": True, "score": 0.125}}


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A new empty database of each kind (its server.database_url)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'calltone.db'}"
    server: PgServer = request.getfixturevalue("postgres")
    return server.create_database()


@pytest.fixture
def repo(url: str, tmp_path: Path) -> Iterator[Repository]:
    r = open_repository(url, tmp_path)
    yield r
    r.close()


def call(call_id: str, started_at: float = NOW, **kw) -> dict:
    return {"call_id": call_id, "status": "live", "agent_id": "a1", "language": "zh", "metadata": META,
            "roles": ["customer", "agent"], "started_at": started_at, "updated_at": started_at, **kw}


def alert(alert_id: str, call_id: str = "c1", raised_at: float | None = NOW, **kw) -> dict:
    return {"alert_id": alert_id, "call_id": call_id, "agent_id": "a1", "channel": "customer", "reason": "rising",
            "evidence": {"index": [0.5, 0.75], "cues": ["投诉"]}, "excerpt": [{"text": "我要投诉", "t": 1.5}],
            "status": "open", "t": 12.5, "seq": 7, "raised_at": raised_at, **kw}


# --------------------------------------------------------------------------- calls


def test_calls_round_trip_json_and_upsert(repo: Repository) -> None:
    assert repo.get_call("c1") is None
    repo.upsert_call(call("c1"))
    row = repo.get_call("c1")
    assert row is not None
    assert row["metadata"] == META and row["roles"] == ["customer", "agent"]
    assert row["started_at"] == NOW and row["escalations"] == 0 and row["last_seq"] == 0 and row["summary"] is None
    repo.upsert_call({"call_id": "c1", "status": "interrupted", "started_at": NOW + 1})  # only these columns change
    row = repo.get_call("c1")
    assert (row["status"], row["started_at"], row["agent_id"], row["metadata"]) == ("interrupted", NOW + 1, "a1", META)
    summary = {"end_reason": "stopped", "talk": {"customer": 1.25}, "text": "你好 \"quoted\" \\ back"}
    repo.update_call("c1", status="ended", ended_at=NOW + 9, duration_s=8.5, summary=summary, escalations=2)
    repo.update_call("c1")  # nothing to change
    row = repo.get_call("c1")
    assert (row["status"], row["ended_at"], row["duration_s"], row["summary"], row["escalations"]) == \
        ("ended", NOW + 9, 8.5, summary, 2)
    with pytest.raises(ValueError, match="unknown call fields"):
        repo.update_call("c1", bogus=1)
    repo.update_call("missing", status="ended")  # no such call: nothing happens
    assert repo.get_call("missing") is None


def test_list_calls_filters_order_and_limit(repo: Repository) -> None:
    repo.upsert_call(call("old", NOW - 30, status="ended", escalations=1))
    repo.upsert_call(call("mid", NOW - 20, agent_id="a2"))
    repo.upsert_call(call("new", NOW - 10, status="interrupted"))
    ids = lambda rows: [r["call_id"] for r in rows]  # noqa: E731
    assert ids(repo.list_calls()) == ["new", "mid", "old"]  # newest first
    assert ids(repo.list_calls(limit=2)) == ["new", "mid"]
    assert ids(repo.list_calls(status="ended")) == ["old"]
    assert ids(repo.list_calls(agent_id="a1")) == ["new", "old"]
    assert ids(repo.list_calls(since=NOW - 20)) == ["new", "mid"]
    assert ids(repo.list_calls(escalated=True)) == ["old"]
    assert ids(repo.list_calls(escalated=False)) == ["new", "mid"]
    assert ids(repo.list_calls(status="", agent_id="")) == ["new", "mid", "old"]  # empty filters filter nothing
    assert repo.list_calls(status="live", agent_id="a2")[0]["metadata"] == META


# --------------------------------------------------------------------------- events


def test_events_order_filters_and_last_seq(repo: Repository) -> None:
    repo.upsert_call(call("c1"))
    repo.upsert_call(call("c2"))
    for seq in (3, 1, 2, 5, 4):
        typ = "transcript.final" if seq % 2 else "emotion.update"
        repo.append_event("c1", seq, typ, seq * 0.5, NOW + seq, f'{{"seq": {seq}, "text": "第{seq}句"}}')
    repo.append_event("c2", 1, "call.started", 0.0, NOW, "{}")
    assert [s for s, _, _ in repo.events("c1")] == [1, 2, 3, 4, 5]
    assert repo.events("c1", after=3) == [(4, "emotion.update", '{"seq": 4, "text": "第4句"}'),
                                          (5, "transcript.final", '{"seq": 5, "text": "第5句"}')]
    assert [s for s, _, _ in repo.events("c1", types=["transcript.final"])] == [1, 3, 5]
    assert [s for s, _, _ in repo.events("c1", after=1, types=["transcript.final", "emotion.update"], limit=2)] == [2, 3]
    assert repo.events("c1", types=["nothing"]) == [] and repo.events("nobody") == []
    assert repo.last_seq("c1") == 5 and repo.last_seq("c2") == 1 and repo.last_seq("nobody") == 0
    row = repo.get_call("c1")
    assert row["last_seq"] == 5 and row["updated_at"] == NOW + 4  # the highest seq stored, the latest write's time


def test_duplicate_seq_is_refused_and_is_not_a_storage_failure(repo: Repository) -> None:
    repo.upsert_call(call("c1"))
    repo.append_event("c1", 1, "call.started", 0.0, NOW, '{"first": true}')
    with pytest.raises(Exception) as info:
        repo.append_event("c1", 1, "call.started", 0.0, NOW, '{"second": true}')
    assert not repo.is_storage_failure(info.value)
    assert not repo.is_storage_failure(ValueError("bad value"))
    assert repo.events("c1") == [(1, "call.started", '{"first": true}')]


# --------------------------------------------------------------------------- alerts and deliveries


def test_alerts_round_trip_replace_update_and_order(repo: Repository) -> None:
    assert repo.get_alert("al-1") is None
    repo.insert_alert(alert("al-2", raised_at=NOW + 2))
    repo.insert_alert(alert("al-1", raised_at=NOW + 1))
    repo.insert_alert(alert("al-0", call_id="c2", raised_at=None))
    got = repo.get_alert("al-1")
    assert got["evidence"] == {"index": [0.5, 0.75], "cues": ["投诉"]} and got["excerpt"] == [{"text": "我要投诉", "t": 1.5}]
    assert got["barge_in"] is None and got["t"] == 12.5 and got["seq"] == 7
    ids = lambda rows: [r["alert_id"] for r in rows]  # noqa: E731
    assert ids(repo.list_alerts()) == ["al-0", "al-1", "al-2"]  # oldest raised first, none raised before all
    assert ids(repo.list_alerts(call_id="c1")) == ["al-1", "al-2"]
    assert ids(repo.list_alerts(limit=1)) == ["al-0"]
    repo.update_alert("al-1", status="acked", acked_by="sam", acked_at=NOW + 3, barge_in=True, note="打过去")
    acked = repo.get_alert("al-1")
    assert (acked["status"], acked["acked_by"], acked["barge_in"], acked["note"]) == ("acked", "sam", True, "打过去")
    repo.update_alert("al-2", barge_in=False)
    assert repo.get_alert("al-2")["barge_in"] is False
    assert ids(repo.list_alerts(status="open")) == ["al-0", "al-2"]
    assert ids(repo.list_alerts(call_id="c1", status="acked")) == ["al-1"]
    repo.insert_alert({"alert_id": "al-1", "call_id": "c1", "status": "cleared"})  # a re-insert replaces every column
    replaced = repo.get_alert("al-1")
    assert (replaced["status"], replaced["acked_by"], replaced["evidence"], replaced["raised_at"]) == \
        ("cleared", None, None, None)
    with pytest.raises(ValueError, match="unknown alert fields"):
        repo.update_alert("al-1", bogus=1)


def test_deliveries_logged_in_order(repo: Repository) -> None:
    before = time.time()
    repo.log_delivery("al-1", "http://h/hook", "escalation.raised", 1, False, 500, "HTTP 500")
    repo.log_delivery("al-1", "http://h/hook", "escalation.raised", 2, True, 204, None)
    repo.log_delivery("al-2", "http://h/hook", "escalation.raised", 1, False, None, "refused")
    rows = repo.deliveries("al-1")
    assert [(d["attempt"], d["ok"], d["status_code"], d["error"]) for d in rows] == [(1, 0, 500, "HTTP 500"), (2, 1, 204, None)]
    assert rows[0]["id"] < rows[1]["id"] and all(before <= d["at"] <= time.time() for d in rows)
    assert rows[0]["url"] == "http://h/hook" and rows[0]["event_type"] == "escalation.raised"
    assert repo.deliveries("al-3") == []


# --------------------------------------------------------------------------- transactions, probe, purge


def test_transaction_commits_together_and_rolls_back_on_error(repo: Repository) -> None:
    with repo.transaction():
        repo.upsert_call(call("c1"))
        repo.append_event("c1", 1, "call.started", 0.0, NOW, "{}")
        assert repo.get_call("c1")["last_seq"] == 1  # a read in the transaction sees its writes
    with pytest.raises(RuntimeError, match="boom"):
        with repo.transaction():
            repo.append_event("c1", 2, "transcript.final", 1.0, NOW, "{}")
            repo.update_call("c1", status="ended")
            raise RuntimeError("boom")
    with pytest.raises(Exception):
        with repo.transaction():
            repo.append_event("c1", 3, "transcript.final", 1.0, NOW, "{}")
            repo.append_event("c1", 1, "call.started", 0.0, NOW, "{}")  # duplicate: the statement fails
    assert [s for s, _, _ in repo.events("c1")] == [1]
    assert repo.get_call("c1")["status"] == "live" and repo.last_seq("c1") == 1
    with repo.transaction():
        pass  # an empty transaction is fine
    with repo.transaction():  # the connection is usable after a rollback
        repo.append_event("c1", 2, "transcript.final", 1.0, NOW, "{}")
    assert repo.last_seq("c1") == 2


def test_interrupt_live(repo: Repository) -> None:
    repo.upsert_call(call("a"))
    repo.upsert_call(call("b"))
    repo.upsert_call(call("c", status="ended"))
    assert repo.interrupt_live() == 2
    assert {r["call_id"]: r["status"] for r in repo.list_calls()} == {"a": "interrupted", "b": "interrupted", "c": "ended"}
    assert repo.interrupt_live() == 0


def test_probe_rewrites_one_row(repo: Repository) -> None:
    repo.probe()
    repo.probe()
    with repo.transaction():
        repo.probe()


def test_purge_old_calls_with_their_events_alerts_and_deliveries(repo: Repository) -> None:
    old = NOW - 40 * 86400
    with repo.transaction():
        for i in range(PURGE_CHUNK + 3):  # more than one chunk of ids
            repo.upsert_call(call(f"old-{i}", old - i, status="ended"))
            repo.append_event(f"old-{i}", 1, "call.started", 0.0, old, "{}")
        repo.upsert_call(call("old-live", old))  # still streaming: kept
        repo.upsert_call(call("recent", NOW, status="ended"))
        for call_id in ("old-0", "old-502", "recent"):
            repo.insert_alert(alert(f"al-{call_id}", call_id))
            repo.log_delivery(f"al-{call_id}", "http://h", "escalation.raised", 1, True, 204, None)
    purged = repo.purge(NOW - 30 * 86400)
    assert sorted(purged) == sorted(f"old-{i}" for i in range(PURGE_CHUNK + 3))
    assert repo.get_call("old-0") is None and repo.events("old-502") == [] and repo.get_alert("al-old-0") is None
    assert repo.deliveries("al-old-502") == []
    assert {r["call_id"] for r in repo.list_calls(limit=500)} == {"old-live", "recent"}
    assert [a["alert_id"] for a in repo.list_alerts()] == ["al-recent"] and len(repo.deliveries("al-recent")) == 1
    assert repo.purge(NOW - 30 * 86400) == []


# --------------------------------------------------------------------------- AsyncStore on top


def test_async_store_orders_and_batches_writes_and_isolates_a_bad_one(repo: Repository) -> None:
    store = AsyncStore(repo)
    try:
        store.submit(lambda r: r.upsert_call(call("c1"))).result()
        futs = [store.submit(lambda r, i=i: r.append_event("c1", i, "transcript.final", i, NOW, f'{{"seq":{i}}}'))
                for i in range(1, 201)]
        for f in futs:
            f.result(timeout=30)
        assert [s for s, _, _ in repo.events("c1")] == list(range(1, 201)) and repo.last_seq("c1") == 200
        assert store.write_batches < 200  # queued writes were batched
        results = [store.submit(lambda r: r.append_event("c1", 201, "x", 0, NOW, "{}")),
                   store.submit(lambda r: r.append_event("c1", 1, "x", 0, NOW, "{}")),  # duplicate seq
                   store.submit(lambda r: r.append_event("c1", 202, "x", 0, NOW, "{}")),
                   store.submit(lambda r: r.last_seq("c1"))]
        assert results[0].result(timeout=30) is None and results[2].result(timeout=30) is None
        with pytest.raises(Exception) as info:
            results[1].result(timeout=30)
        assert not store.is_storage_failure(info.value)
        assert results[3].result(timeout=30) == 202
        assert store.failure is None and store.write_errors == 1  # a bad write is not a store failure
        assert store.is_storage_failure(StoreUnavailable("refused")) and store.is_storage_failure(OSError("EIO"))

        async def reads() -> tuple:
            return await store.read(lambda r: r.last_seq("c1")), await store.write(lambda r: r.interrupt_live()), \
                await store.probe()

        assert asyncio.run(reads()) == (202, 1, True)
    finally:
        store.close()
    with pytest.raises(RuntimeError, match="closed"):
        store.submit(lambda r: r.probe()).result()


# --------------------------------------------------------------------------- PostgreSQL's connections


def _terminate_backends(server: PgServer, url: str) -> int:
    import psycopg

    dbname = url.rsplit("/", 1)[1]
    with psycopg.connect(server.url(), autocommit=True) as conn:
        rows = conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname=%s AND pid<>pg_backend_pid()",
                            (dbname,)).fetchall()
    return len(rows)


def test_postgres_connections_killed_are_replaced_unnoticed(postgres: PgServer) -> None:
    """Connections the server dropped while idle (a restart, an idle timeout) are checked when taken from the
    pool: the next write gets a fresh one and the store never fails."""
    from calltone.server.postgres import PostgresRepository

    url = postgres.create_database()
    store = AsyncStore(PostgresRepository(url))
    try:
        store.submit(lambda r: r.upsert_call(call("c1"))).result(timeout=30)
        assert asyncio.run(store.read(lambda r: r.get_call("c1")))["status"] == "live"
        assert _terminate_backends(postgres, url) >= 1
        store.submit(lambda r: r.append_event("c1", 1, "call.started", 0.0, NOW, "{}")).result(timeout=30)
        assert asyncio.run(store.read(lambda r: r.last_seq("c1"))) == 1
        assert store.failure is None and store.write_errors == 0
    finally:
        store.close()


def test_postgres_server_down_fails_the_store_until_a_probe_gets_through(postgres: PgServer) -> None:
    """With the server gone, a write fails as a storage failure, the writes queued behind it are not tried
    (each would wait on the pool), reads fail, probes fail; once the server is back a probe gets through,
    the failure clears and writes go on."""
    from calltone.server.postgres import PostgresRepository

    url = postgres.create_database()
    store = AsyncStore(PostgresRepository(url, pool_timeout_s=1.0))
    try:
        store.submit(lambda r: r.upsert_call(call("c1"))).result(timeout=30)
        postgres.stop()
        try:
            first = store.submit(lambda r: r.append_event("c1", 1, "call.started", 0.0, NOW, "{}"))
            time.sleep(0.2)  # the writer is on the first write: these three queue up and form one batch
            queued = [store.submit(lambda r, i=i: r.append_event("c1", i, "x", 0.0, NOW, "{}")) for i in (2, 3, 4)]
            with pytest.raises(Exception) as info:
                first.result(timeout=30)
            assert store.is_storage_failure(info.value) and store.failure
            for fut in queued:
                with pytest.raises(StoreUnavailable, match="not written: the store failed"):
                    fut.result(timeout=30)
            assert store.write_errors == 4
            with pytest.raises(Exception) as read_error:
                asyncio.run(store.read(lambda r: r.get_call("c1")))
            assert store.is_storage_failure(read_error.value)
            assert asyncio.run(store.probe()) is False
        finally:
            postgres.start()
        deadline = time.monotonic() + 30
        while not asyncio.run(store.probe()):
            assert time.monotonic() < deadline, f"the store did not come back: {store.failure}"
            time.sleep(0.2)
        assert store.failure is None
        store.submit(lambda r: r.append_event("c1", 1, "call.started", 0.0, NOW, "{}")).result(timeout=30)
        assert [s for s, _, _ in repo_events(store, "c1")] == [1]
    finally:
        store.close()


def repo_events(store: AsyncStore, call_id: str) -> list[tuple[int, str, str]]:
    return asyncio.run(store.read(lambda r: r.events(call_id)))


def test_postgres_connection_lost_while_committing_is_in_doubt_and_not_retried(postgres: PgServer) -> None:
    """The server ends the session during COMMIT (a deferred trigger terminates its own backend, once): every
    write of the batch fails as CommitInDoubt, none is retried (it might have been stored), the store is
    failed until a probe gets through, and then writes go on."""
    import psycopg

    from calltone.server.postgres import PostgresRepository
    from calltone.server.store import CommitInDoubt

    url = postgres.create_database()
    store = AsyncStore(PostgresRepository(url))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE SEQUENCE kills")  # nextval is not rolled back: the trigger kills one commit only
        conn.execute("CREATE FUNCTION kill_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                     "IF nextval('kills') = 1 THEN PERFORM pg_terminate_backend(pg_backend_pid()); END IF; "
                     "RETURN NULL; END $$")
        conn.execute("CREATE CONSTRAINT TRIGGER kill AFTER INSERT ON events DEFERRABLE INITIALLY DEFERRED "
                     "FOR EACH ROW EXECUTE FUNCTION kill_at_commit()")
    try:
        store.submit(lambda r: r.upsert_call(call("c1"))).result(timeout=30)
        running, release = threading.Event(), threading.Event()
        busy = store.submit(lambda r: (running.set(), release.wait(30)))
        assert running.wait(30)
        batch = [store.submit(lambda r, i=i: r.append_event("c1", i, "x", 0.0, NOW, "{}")) for i in (1, 2, 3)]
        release.set()  # the three queued behind it: one batch
        busy.result(timeout=30)
        for fut in batch:
            with pytest.raises(CommitInDoubt, match="lost while committing"):
                fut.result(timeout=30)
        assert store.failure and store.is_storage_failure(CommitInDoubt("x"))
        assert asyncio.run(store.probe()) is True and store.failure is None
        assert repo_events(store, "c1") == []  # not retried (the server had not committed it)
        store.submit(lambda r: r.append_event("c1", 1, "x", 0.0, NOW, "{}")).result(timeout=30)
        assert [s for s, _, _ in repo_events(store, "c1")] == [1]
    finally:
        store.close()
