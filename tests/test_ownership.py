"""Call ownership (server/ownership.py) on a real redis-server and real stores: the fenced row writes on SQLite
and PostgreSQL, leases (a second producer refused, a dead node's lease taken over at once), the sweep that
interrupts only dead nodes' calls, and a paused node (a zombie) finding its call lost.  The whole service on
two nodes is tests/test_two_nodes.py."""

from __future__ import annotations

import asyncio
import time
from typing import Awaitable, Callable

import pytest
from redis import Redis

from calltone.server.ownership import LEASE_KEY, NODE_KEY, LocalOwnership, RedisOwnership
from calltone.server.store import AsyncStore, Repository

from .pg import postgres  # noqa: F401 -- the session's PostgreSQL server
from .redis_server import RedisServer, redis_server  # noqa: F401 -- the fixture
from .test_repository import call, repo, url  # noqa: F401 -- the fixtures: a new database of each kind

HEARTBEAT_S, TTL_S = 0.2, 0.6  # short, so that a node's death is seen within a test


def owned(call_id: str, owner: str | None, **kw) -> dict:
    return call(call_id, owner_node=owner, **kw)


def test_hold_call_fences_a_node_that_no_longer_owns_the_call(repo: Repository) -> None:
    repo.upsert_call(owned("c1", "node-a"))
    assert repo.hold_call("c1", "node-a", duration_s=1.5)
    assert not repo.hold_call("c1", "node-b", duration_s=9.0)  # not b's call: nothing changes
    assert not repo.hold_call("nope", "node-a", duration_s=1.0)
    repo.upsert_call(owned("c1", "node-b"))  # b resumes the call
    assert not repo.hold_call("c1", "node-a", duration_s=9.0)
    assert repo.hold_call("c1", "node-b", status="interrupted")
    assert not repo.hold_call("c1", "node-b", duration_s=9.0)  # interrupted: no longer live
    row = repo.get_call("c1")
    assert row is not None and row["duration_s"] == 1.5 and row["owner_node"] == "node-b"


def test_interrupt_owned_touches_only_the_dead_nodes_live_calls(repo: Repository) -> None:
    repo.upsert_call(owned("a1", "node-a"))
    repo.upsert_call(owned("a2", "node-a"))
    repo.upsert_call(owned("a3", "node-a", status="ended"))
    repo.upsert_call(owned("b1", "node-b"))
    repo.upsert_call(owned("old", None))  # from before calls had owners
    assert sorted(repo.live_owners(), key=str) == sorted(["node-a", "node-b", None], key=str)
    assert repo.interrupt_owned([]) == 0
    assert repo.interrupt_owned(["node-a"]) == 2
    assert repo.interrupt_owned([None]) == 1
    assert {c["call_id"]: c["status"] for c in repo.list_calls()} == {
        "a1": "interrupted", "a2": "interrupted", "a3": "ended", "b1": "live", "old": "interrupted"}
    assert repo.live_owners() == ["node-b"]


def run(repo: Repository, body: Callable[[AsyncStore], Awaitable[None]]) -> None:
    store = AsyncStore(repo)
    try:
        asyncio.run(asyncio.wait_for(body(store), 120))  # a bound, so that a hang fails with where it hung
    finally:
        store.close()


async def until(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Wait for an observable condition (a safety bound, not a speed requirement)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        await asyncio.sleep(0.01)


def node(server: RedisServer, store: AsyncStore, lost: list[tuple[list[str], str]] | None = None) -> RedisOwnership:
    return RedisOwnership(server.url, store, lambda ids, why: (lost if lost is not None else []).append((ids, why)),
                          heartbeat_s=HEARTBEAT_S, ttl_s=TTL_S)


async def pause(n: RedisOwnership) -> None:
    """The node stops beating (as if SIGSTOPped): its keys stay until they expire."""
    await n.stop_beating()


def test_leases_refuse_a_second_producer_and_pass_on_when_the_owner_dies(redis_server: RedisServer,
                                                                        repo: Repository) -> None:
    plain = Redis.from_url(redis_server.url, decode_responses=True)

    async def body(store: AsyncStore) -> None:
        a_lost: list[tuple[list[str], str]] = []
        a, b = node(redis_server, store, a_lost), node(redis_server, store)
        await a.start()
        await b.start()
        assert await a.claim("c1") is None
        assert await b.claim("c1") == a.node_id  # conflict while a is alive, however long it lives
        await until(lambda: plain.pttl(LEASE_KEY + "c1") > 0 and plain.exists(NODE_KEY + a.node_id) == 1, "a's keys")
        a.release("c1")
        await until(lambda: plain.exists(LEASE_KEY + "c1") == 0, "the lease to be released")
        assert await b.claim("c1") is None and await a.claim("c1") == b.node_id
        b.release("c1")
        assert await a.claim("c2") is None
        await pause(a)  # a stops beating: its lease on c2 is taken over once its heartbeat is gone
        await until(lambda: plain.exists(NODE_KEY + a.node_id) == 0, "a's heartbeat to lapse")
        assert await b.claim("c2") is None
        await a._beat()  # a wakes up: c2 is not its call any more
        assert a_lost == [(["c2"], "this node's heartbeat lapsed")]
        assert await a.claim("c2") == b.node_id
        await b.close()
        assert plain.exists(NODE_KEY + b.node_id, LEASE_KEY + "c2") == 0  # withdrawn at once
        await a.close()

    try:
        run(repo, body)
    finally:
        plain.close()


def test_the_sweep_interrupts_only_calls_of_nodes_without_a_heartbeat(redis_server: RedisServer,
                                                                      repo: Repository) -> None:
    async def body(store: AsyncStore) -> None:
        a, b = node(redis_server, store), node(redis_server, store)
        await a.start()
        await store.write(lambda r: r.upsert_call(owned("of-a", a.node_id)))
        await store.write(lambda r: r.upsert_call(owned("of-gone", "a-node-that-died")))
        await b.start()  # b's start sweeps: a is alive
        assert repo.get_call("of-a")["status"] == "live"  # type: ignore[index]
        assert repo.get_call("of-gone")["status"] == "interrupted"  # type: ignore[index]
        await pause(a)
        await until(lambda: repo.get_call("of-a")["status"] == "interrupted", "b's sweep to interrupt a's call")  # type: ignore[index]
        assert not repo.hold_call("of-a", a.node_id, duration_s=1.0)  # a's later writes are refused
        await a.close()
        await b.close()

    run(repo, body)


def test_one_node_interrupts_every_call_left_live_at_start(repo: Repository) -> None:
    async def body(store: AsyncStore) -> None:
        await store.write(lambda r: r.upsert_call(owned("left", "the-previous-process")))
        local = LocalOwnership(store)
        await local.start()
        assert repo.get_call("left")["status"] == "interrupted"  # type: ignore[index]
        assert await local.claim("left") is None  # the registry's live dict is the producer check

    run(repo, body)


def test_settings_refuse_a_ttl_the_heartbeat_cannot_keep(redis_server: RedisServer, repo: Repository) -> None:
    store = AsyncStore(repo)
    try:
        with pytest.raises(ValueError, match="node_ttl_s"):
            RedisOwnership(redis_server.url, store, lambda ids, why: None, heartbeat_s=2.0, ttl_s=3.0)
    finally:
        store.close()
