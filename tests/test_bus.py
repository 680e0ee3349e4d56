"""The bus contract, the same tests on the in-process bus and on the Redis Streams bus (a real redis-server),
and Redis restarted with its append-only file while a call streams."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable

import pytest
from redis.asyncio import Redis

from calltone.server.bus import Bus, Message, SubscriberTooSlow, Subscription
from calltone.server.redisbus import PREFIX, RedisBus
from calltone.server.store import AsyncStore
from tests.redis_server import RedisServer, redis_server  # noqa: F401 -- the fixture

TIMEOUT_S = 30.0


@dataclass
class BusKind:
    name: str
    make: Callable[..., Bus]  # make(maxsize, **redis_options)
    retained: Callable[[str], Awaitable[int]]  # entries the bus still holds for a topic


@pytest.fixture(params=["memory", "redis"])
def kind(request: pytest.FixtureRequest) -> BusKind:
    if request.param == "memory":
        async def nothing(topic: str) -> int:
            return 0

        return BusKind("memory", lambda maxsize=256, **_: Bus(maxsize), nothing)
    server: RedisServer = request.getfixturevalue("redis_server")

    async def xlen(topic: str) -> int:
        async with Redis.from_url(server.url) as r:
            return await r.xlen(PREFIX + topic)

    return BusKind("redis", lambda maxsize=256, **kw: RedisBus(server.url, maxsize, **kw), xlen)


def run(kind: BusKind, body: Callable[[Bus], Awaitable[None]], maxsize: int = 256, **options) -> None:
    async def go() -> None:
        bus = kind.make(maxsize, **options)
        await bus.start()
        try:
            await asyncio.wait_for(body(bus), TIMEOUT_S)
        finally:
            await bus.close()

    asyncio.run(go())


def event(typ: str, seq: int, channel: str | None = "customer") -> Message:
    return Message.of(typ, json.dumps({"type": typ, "seq": seq, "channel": channel}), seq, channel)


async def drain(sub: Subscription, n: int) -> list[Message]:
    return [await sub.get() for _ in range(n)]


class Follower:
    """A consumer as the event feed is one (server/feeds.py): subscribe, send the stored events after ``after``,
    then bus messages, skipping seqs already sent and refilling from the store a gap the bus never brought."""

    def __init__(self, bus: Bus, store: AsyncStore, call_id: str, after: int = 0) -> None:
        self.sub = bus.subscribe(f"call:{call_id}")
        self.store, self.call_id, self.last = store, call_id, after
        self.seqs: list[int] = []
        self.fills = 0

    async def replay(self) -> None:
        after = self.last
        for seq, _, _ in await self.store.read(lambda r: r.events(self.call_id, after)):
            self.seqs.append(seq)
            self.last = seq

    async def until(self, seq: int) -> None:
        while self.last < seq:
            msg = await self.sub.get()
            if msg.seq > self.last + 1 and self.sub.missed(self.last, msg.seq):
                self.fills += 1
                await self.replay()
            if msg.seq > self.last:
                self.seqs.append(msg.seq)
                self.last = msg.seq


def store_event(store: AsyncStore, call_id: str, seq: int, typ: str = "transcript.final") -> Message:
    """Write one event (as LiveCall does, before publishing it); the message to publish."""
    msg = event(typ, seq)
    store.submit(lambda r: r.append_event(call_id, seq, typ, float(seq), time.time(), msg.json)).result(10)
    return msg


@pytest.fixture
def store(tmp_path: Path):
    s = AsyncStore.sqlite(tmp_path / "calltone.db")
    yield s
    s.close()


# --------------------------------------------------------------------------- the contract, on both buses


def test_order_to_several_subscribers(kind):
    async def body(bus: Bus) -> None:
        subs = [bus.subscribe("call:a") for _ in range(3)]
        other = bus.subscribe("call:b")
        for seq in range(1, 201):
            bus.publish("call:a", event("transcript.final" if seq % 3 else "guidance", seq))
            if seq % 10 == 0:
                bus.publish("call:b", event("transcript.final", seq // 10))
        for sub in subs:
            assert [m.seq for m in await drain(sub, 200)] == list(range(1, 201))
        assert [m.seq for m in await drain(other, 20)] == list(range(1, 21))
        assert bus.subscriber_count("call:a") == 3 and bus.subscriber_count() == 4
        for sub in (*subs, other):
            sub.close()
        assert bus.subscriber_count() == 0

    run(kind, body)


def test_repeated_publish_is_delivered_once(kind):
    async def body(bus: Bus) -> None:
        sub = bus.subscribe("call:d")
        for seq in (1, 2, 2, 1, 3, 3):
            bus.publish("call:d", event("transcript.final", seq))
        assert [m.seq for m in await drain(sub, 3)] == [1, 2, 3]
        bus.publish("call:d", event("call.ended", 4))  # nothing else came between
        assert (await sub.get()).seq == 4
        assert len(sub) == 0
        assert await kind.retained("call:d") in ({0} if kind.name == "memory" else {4})  # Redis refused the repeats

    run(kind, body)


def test_replay_from_after_then_live(kind, store):
    async def body(bus: Bus) -> None:
        for seq in range(1, 6):
            bus.publish("call:r", store_event(store, "r", seq))
        follower = Follower(bus, store, "r", after=3)
        await follower.replay()
        for seq in range(6, 11):
            bus.publish("call:r", store_event(store, "r", seq))
        await follower.until(10)
        assert follower.seqs == list(range(4, 11))

    run(kind, body)


def test_a_gap_on_the_bus_is_filled_from_the_store(kind, store):
    async def body(bus: Bus) -> None:
        follower = Follower(bus, store, "g")
        await follower.replay()
        for seq in (1, 2):
            bus.publish("call:g", store_event(store, "g", seq))
        await follower.until(2)
        store_event(store, "g", 3)  # stored, never published (lost on the way to the bus)
        for seq in (4, 5):
            bus.publish("call:g", store_event(store, "g", seq))
        await follower.until(5)
        assert follower.seqs == [1, 2, 3, 4, 5] and follower.fills == 1

    run(kind, body)


def test_slow_subscriber_coalesces_partials_and_keeps_finals(kind):
    async def body(bus: Bus) -> None:
        slow, fast = bus.subscribe("call:x"), bus.subscribe("call:x")
        seq, got_fast = 0, []
        for _ in range(10):
            for typ in ["transcript.partial"] * 5 + ["transcript.final"]:
                seq += 1
                bus.publish("call:x", event(typ, seq))
                got_fast.append((await fast.get()).seq)
        assert got_fast == list(range(1, seq + 1))  # the fast one saw everything
        items = await drain(slow, len(slow))
        assert [m.seq for m in items if m.type == "transcript.final"] == [6 * (i + 1) for i in range(10)]
        assert len([m for m in items if m.type == "transcript.partial"]) <= 4
        assert [m.seq for m in items] == sorted(m.seq for m in items)
        assert not slow.missed(0, items[-1].seq)  # coalesced, not lost: nothing to refill
        assert bus.stats.dropped + bus.stats.coalesced >= 46

    run(kind, body, maxsize=4)


def test_slow_subscriber_is_cut_off_past_its_cap(kind):
    async def body(bus: Bus) -> None:
        slow, other = bus.subscribe("alerts"), bus.subscribe("alerts")
        for i in range(20):
            bus.publish("alerts", event("escalation.raised", i + 1))
            assert (await other.get()).seq == i + 1
        with pytest.raises(SubscriberTooSlow):
            await slow.get()
        assert bus.stats.overflowed == 1

    run(kind, body, maxsize=2)


def test_alerts_topic_in_order_and_capped(kind):
    async def body(bus: Bus) -> None:
        sub = bus.subscribe("alerts")
        bodies = [json.dumps({"type": "escalation.raised", "alert_id": f"al-{i}"}) for i in range(300)]
        got = []
        for b in bodies:  # a reader that keeps up sees every alert; one further behind than the cap would not
            bus.publish("alerts", Message.of("escalation.raised", b))
            got.append((await sub.get()).json)
        assert got == bodies
        assert await kind.retained("alerts") <= 10 + 100  # MAXLEN ~ 10: trimmed by whole stream nodes

    run(kind, body, alerts_maxlen=10)


def test_an_alert_from_another_node_reaches_a_new_follower(kind):
    """A supervisor's feed subscribes, waits until it follows the topic, then reads the stored alerts: an alert
    another node publishes from then on must reach it (on Redis the new subscription's stream position is read
    first; without waiting, an alert added before that read would be neither delivered nor yet stored)."""
    async def body(bus: Bus) -> None:
        other = kind.make() if kind.name == "redis" else bus
        if other is not bus:
            await other.start()
        try:
            for i in range(5):  # fresh subscriptions, each followed before the other node publishes
                sub = bus.subscribe("alerts")
                await bus.following("alerts")
                other.publish("alerts", Message.of("escalation.raised", json.dumps({"alert_id": f"x{i}"})))
                assert json.loads((await sub.get()).json) == {"alert_id": f"x{i}"}
                sub.close()
        finally:
            if other is not bus:
                await other.close()

    run(kind, body)


def test_call_expires_after_call_ended(kind):
    async def body(bus: Bus) -> None:
        sub = bus.subscribe("call:e")
        for seq in range(1, 5):
            bus.publish("call:e", event("transcript.final", seq))
        bus.publish("call:e", event("call.ended", 5, None))
        assert [m.type for m in await drain(sub, 5)][-1] == "call.ended"
        sub.close()
        deadline = time.monotonic() + 5
        while await kind.retained("call:e") and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert await kind.retained("call:e") == 0

    run(kind, body, ended_ttl_s=1.0)


# --------------------------------------------------------------------------- Redis only


def test_redis_stream_ids_are_seqs_and_streams_expire(redis_server):
    async def go() -> None:
        bus = RedisBus(redis_server.url, ended_ttl_s=60)
        await bus.start()
        try:
            with pytest.raises(ValueError):
                bus.publish("call:k", Message.of("guidance", "{}"))
            sub = bus.subscribe("call:k")
            for seq in (1, 2, 3):
                bus.publish("call:k", event("transcript.final", seq))
            await drain(sub, 3)
            async with Redis.from_url(redis_server.url, decode_responses=True) as r:
                assert [i for i, _ in await r.xrange("calltone:call:k")] == ["1-0", "2-0", "3-0"]
                assert [i for i, _ in await r.xrange("calltone:call:k", min="2-0")] == ["2-0", "3-0"]  # replay from 1
                assert 3600 < await r.ttl("calltone:call:k")  # an idle call still expires, a day after its last event
                bus.publish("call:k", event("call.ended", 4))
                await sub.get()
                assert 0 < await r.ttl("calltone:call:k") <= 60
        finally:
            await bus.close()

    asyncio.run(go())


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["restart", "crash"])
def test_redis_restarted_while_a_call_streams(redis_server, store, sig):
    n = 300

    async def go() -> None:
        bus = RedisBus(redis_server.url)
        await bus.start()
        try:
            follower = Follower(bus, store, "live")
            await follower.replay()
            following = asyncio.ensure_future(follower.until(n))
            restart: asyncio.Future | None = None
            back = 0  # the first seq published once Redis was up again
            for seq in range(1, n + 1):
                bus.publish("call:live", store_event(store, "live", seq, "transcript.final" if seq % 2 else "guidance"))
                if seq == 50:  # keep publishing while Redis is down and while it loads its append-only file
                    restart = asyncio.ensure_future(asyncio.to_thread(redis_server.restart, sig))
                elif restart is not None and restart.done() and not back:
                    back = seq
                await asyncio.sleep(0.01)
            assert restart is not None
            await asyncio.wait_for(restart, TIMEOUT_S)
            assert 50 < back < n  # Redis was away while seqs 51..back were published, and back before the end
            await asyncio.wait_for(following, TIMEOUT_S)
            assert follower.seqs == list(range(1, n + 1))
            async with Redis.from_url(redis_server.url) as r:  # what Redis kept, it kept in order, each seq once
                ids = [int(i.split(b"-")[0]) for i, _ in await r.xrange("calltone:call:live")]
            assert ids == sorted(set(ids)) and ids[-1] == n
        finally:
            await bus.close()

    asyncio.run(go())
