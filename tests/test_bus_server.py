"""The live service on the Redis Streams bus (``server.bus_url``, a real redis-server), and the event feed
filling a gap on the bus from the store (on both buses)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from redis import Redis
from websockets.sync.client import connect

from calltone.server.app import ServerThread, create_app
from calltone.server.bus import Message
from calltone.server.redisbus import PREFIX, RedisBus
from tests.redis_server import RedisServer, redis_server  # noqa: F401 -- the fixture
from tests.test_server import STEREO, SUP, check_seqs, load_stereo, make_settings, read_events, rest, stream, ws_url


@pytest.fixture(params=["memory", "redis"])
def bus_url(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        return ""
    server: RedisServer = request.getfixturevalue("redis_server")
    return server.url


def stored_events(srv: ServerThread, call_id: str) -> list[dict]:
    rows = srv.call(lambda: srv.services.store.read(lambda r: r.events(call_id, 0)))
    return [json.loads(body) for _, _, body in rows]


@pytest.mark.skipif(not STEREO.is_file(), reason=f"{STEREO} not available")
def test_live_call_on_the_redis_bus(tmp_path: Path, runtime, redis_server):
    settings = make_settings(tmp_path / "data", bus_url=redis_server.url, bus_ttl_s=120)
    audio, rate = load_stereo()
    with ServerThread(create_app(settings, runtime), settings) as srv:
        srv.wait_ready()
        assert isinstance(srv.services.bus, RedisBus)
        echoed: list[dict] = []
        producer = threading.Thread(target=lambda: echoed.extend(stream(srv, "rb-1", audio, rate, speed=2.0, frame_s=0.1)))
        producer.start()
        deadline = time.monotonic() + 10
        while rest(srv, "/v1/calls/rb-1", SUP)[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        followed = read_events(srv, "rb-1", timeout=60)  # joins the call while it streams
        producer.join(60)
        stored = stored_events(srv, "rb-1")
    check_seqs(followed)
    assert followed[0]["seq"] == 1 and followed[-1]["type"] == "call.ended"
    assert followed == stored == echoed  # the producer's own echo came over Redis too
    with Redis.from_url(redis_server.url) as r:
        assert r.xlen(f"{PREFIX}call:rb-1") > 0 and 0 < r.ttl(f"{PREFIX}call:rb-1") <= 120


def test_event_feed_fills_a_bus_gap_from_the_store(tmp_path: Path, runtime, bus_url: str):
    settings = make_settings(tmp_path / "data", bus_url=bus_url)
    with ServerThread(create_app(settings, runtime), settings) as srv:
        srv.wait_ready()
        s = srv.services

        async def add(seq: int, typ: str, publish: bool) -> None:
            body = json.dumps({"type": typ, "call_id": "gap-1", "seq": seq, "t": float(seq)})
            await s.store.write(lambda r: r.append_event("gap-1", seq, typ, float(seq), time.time(), body))
            if publish:  # stored, then published, as LiveCall does; a seq not published is one lost on the bus
                s.bus.publish("call:gap-1", Message.of(typ, body, seq))

        async def begin() -> None:
            now = time.time()
            await s.store.write(lambda r: r.upsert_call({"call_id": "gap-1", "status": "live", "agent_id": "a1",
                                                         "started_at": now, "updated_at": now}))
            await add(1, "call.started", True)
            await add(2, "transcript.final", True)

        async def go_on() -> None:
            await add(3, "transcript.final", False)
            await add(4, "transcript.final", True)
            await add(5, "call.ended", True)

        srv.call(begin)
        got = []
        with connect(ws_url(srv, "/v1/calls/gap-1/events", SUP)) as ws:
            got += [json.loads(ws.recv(timeout=10)) for _ in range(2)]  # replayed: the feed now follows the bus
            srv.call(go_on)
            got += [json.loads(ws.recv(timeout=10)) for _ in range(3)]
        assert [e["seq"] for e in got] == [1, 2, 3, 4, 5]
        assert got == stored_events(srv, "gap-1")
