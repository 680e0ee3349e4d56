"""The wallboard's feed, GET /v1/live, with 200 simulated live calls (no ASR: call rows and events are written
to the store and published on the bus as LiveCall does): a real server, a real websocket client and the
supervisor page in Chromium.  The feed coalesces (a call is updated at most once a second however fast its
events come), ends with each call's latest state, drops calls that end; the page shows all 200 from this one
socket (no event feed per call); and through Redis a viewer on one node follows calls written by another."""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from pathlib import Path

import pytest
from websockets.sync.client import connect

from calltone.events import CallEnded, EmotionUpdate, EscalationRaised, Probs
from calltone.server.app import ServerThread, create_app
from calltone.server.bus import Message
from calltone.server.live import UPDATE_EVERY_S
from calltone.settings import ServerSettings, Settings

from .redis_server import RedisServer, redis_server  # noqa: F401 -- the fixture
from .conftest import BROWSER_ARGS, CHROMIUM
from .test_pages import new_page, playwright_sync, until

CALLS = 200
TOKENS = {"super-token-0001": "supervisor:sam", "agent-a1-token-01": "agent:a1"}
SUP, AGENT = TOKENS
GRADE_OF = [(35, "calm"), (70, "anxious"), (101, "angry")]  # index below -> grade


def grade(index: float) -> str:
    return next(g for top, g in GRADE_OF if index < top)


class Calls:
    """Simulated live calls on one node: rows and events in its store, events on its bus (stored, then published)."""

    def __init__(self, srv: ServerThread, n: int, prefix: str = "wb", owner: str | None = None) -> None:
        self.srv, self.ids = srv, [f"{prefix}-{i:03d}" for i in range(n)]
        self.seq = {c: 0 for c in self.ids}
        self.last_index: dict[str, float] = {}
        now = time.time()
        rows = [{"call_id": c, "status": "live", "agent_id": f"a{i % 7}", "started_at": now - i, "owner_node": owner,
                 "metadata": {"queue": "billing" if i % 2 else "support"}, "roles": ["customer", "agent"]}
                for i, c in enumerate(self.ids)]
        srv.call(lambda: srv.services.store.write(lambda r: [r.upsert_call(row) for row in rows]))

    def emit(self, events: list) -> None:
        s = self.srv.services

        async def go() -> None:
            for ev in events:
                self.seq[ev.call_id] += 1
                ev.seq = self.seq[ev.call_id]
            bodies = [(ev, ev.model_dump_json()) for ev in events]

            def write(r) -> None:
                for ev, body in bodies:
                    r.append_event(ev.call_id, ev.seq, ev.type, ev.t, time.time(), body)
                    if ev.type == "call.ended":
                        r.update_call(ev.call_id, status="ended", ended_at=time.time())

            await s.store.write(write)
            for ev, body in bodies:
                s.bus.publish(f"call:{ev.call_id}", Message.of(ev.type, body, ev.seq, getattr(ev, "channel", None)))

        self.srv.call(go)

    def round(self, k: int, t: float) -> None:
        """One emotion.update of the customer of every call (a different index each round)."""
        events = []
        for i, c in enumerate(self.ids):
            index = float((i * 7 + k * 13) % 100)
            self.last_index[c] = index
            events.append(EmotionUpdate(call_id=c, t=t, channel="customer", grade=grade(index), index=index,
                                        trend=float(k), probs=Probs(calm=0.4, anxious=0.3, angry=0.3)))
        self.emit(events)


class Viewer(threading.Thread):
    """A websocket client of /v1/live keeping every frame with the time it arrived."""

    def __init__(self, srv: ServerThread, token: str = SUP) -> None:
        super().__init__(daemon=True)
        self.url, self.token = f"{srv.ws}/v1/live", token
        self.frames: list[dict] = []
        self.bytes = 0
        self.stop = threading.Event()
        self.ready = threading.Event()

    def run(self) -> None:
        with connect(self.url, additional_headers={"Authorization": f"Bearer {self.token}"}, max_size=None) as ws:
            while not self.stop.is_set():
                try:
                    raw = ws.recv(timeout=0.2)
                except TimeoutError:
                    continue
                self.bytes += len(raw)
                self.frames.append(json.loads(raw))
                self.ready.set()

    def latest(self) -> dict[str, dict]:
        out: dict[str, dict] = {}
        for f in self.frames:
            for c in f["calls"]:
                out[c["call_id"]] = c
        return out


def make_server(tmp: Path, runtime, **server) -> ServerThread:
    s = Settings()
    s.server = ServerSettings(data_dir=tmp, tokens=dict(TOKENS), **server)
    return ServerThread(create_app(s, runtime), s)


@pytest.fixture
def server(tmp_path, runtime):
    with make_server(tmp_path / "data", runtime) as srv:
        yield srv


def drive(calls: Calls, seconds: float, per_second: int) -> None:
    t0 = time.monotonic()
    for k in range(int(seconds * per_second)):
        calls.round(k, t=1.0 + k / per_second)
        time.sleep(max(0.0, t0 + (k + 1) / per_second - time.monotonic()))


def test_feed_coalesces_200_calls(server):
    calls = Calls(server, CALLS)
    viewer = Viewer(server)
    viewer.start()
    assert viewer.ready.wait(20), "no snapshot"
    snapshot = viewer.frames[0]
    assert snapshot["type"] == "live.snapshot"
    assert sorted(c["call_id"] for c in snapshot["calls"]) == calls.ids
    assert {c["queue"] for c in snapshot["calls"]} == {"billing", "support"}
    drive(calls, seconds=4, per_second=5)  # 20 updates of every call
    ended, alerted = calls.ids[:10], calls.ids[10]
    calls.emit([EscalationRaised(call_id=alerted, t=9.0, channel="customer", alert_id="al-wb-1", reason="rose")]
               + [CallEnded(call_id=c, t=10.0) for c in ended])
    until(lambda: viewer.latest().get(ended[-1], {}).get("status") == "ended", 15, "the ended calls")
    until(lambda: viewer.latest()[alerted]["alerts_open"] == ["al-wb-1"], 15, "the alert")
    viewer.stop.set()
    viewer.join(10)

    updates = viewer.frames[1:]
    assert all(f["type"] == "live.update" for f in updates)
    gaps = [b["at"] - a["at"] for a, b in zip(viewer.frames, viewer.frames[1:])]
    assert min(gaps) >= UPDATE_EVERY_S - 0.01, gaps  # one frame a second at most, so a call at most once a second
    per_call: dict[str, int] = defaultdict(int)
    for f in updates:
        names = [c["call_id"] for c in f["calls"]]
        assert len(names) == len(set(names))  # a call once per frame
        for n in names:
            per_call[n] += 1
    assert set(per_call) == set(calls.ids)
    assert max(per_call.values()) < 20  # 20 events a call were published: the feed coalesced them
    latest = viewer.latest()
    for c in calls.ids[11:]:  # the last state published, whatever was coalesced on the way
        assert latest[c]["index"] == calls.last_index[c] and latest[c]["grade"] == grade(calls.last_index[c])
        assert latest[c]["status"] == "live"
    assert all(latest[c]["status"] == "ended" for c in ended)


def test_feed_refuses_agents(server):
    with connect(f"{server.ws}/v1/live", additional_headers={"Authorization": f"Bearer {AGENT}"}) as ws:
        assert json.loads(ws.recv(timeout=10))["code"] == "forbidden"
    with connect(f"{server.ws}/v1/live") as ws:
        assert json.loads(ws.recv(timeout=10))["code"] == "unauthorized"


def test_wallboard_page_shows_200_calls(server):
    """The supervisor page in Chromium: every call on the board from the one /v1/live socket (no per-call feeds),
    the latest grade of each, and a call that ends leaves the board."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} missing: `make test` installs Debian's chromium")
    calls = Calls(server, CALLS)
    with playwright_sync.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=BROWSER_ARGS)
        page = new_page(browser, locale="zh-CN")
        sockets: list[str] = []
        page.on("websocket", lambda ws: sockets.append(ws.url))
        page.goto(f"{server.http}/supervisor#token={SUP}")
        rows = page.locator("[data-testid=wallboard] tr.call-row")
        until(lambda: rows.count() == CALLS, 30, "200 rows on the board")
        drive(calls, seconds=2, per_second=4)
        probe = calls.ids[123]
        want = str(round(calls.last_index[probe]))
        until(lambda: page.locator(f"tr[data-call='{probe}'] .idx").inner_text().strip().endswith(want), 15,
              "the latest index of a call")
        assert page.locator(f"tr[data-call='{probe}'] .badge").inner_text().strip() != ""
        calls.emit([CallEnded(call_id=probe, t=30.0)])
        until(lambda: page.locator(f"tr[data-call='{probe}']").count() == 0, 15, "the ended call to leave")
        assert rows.count() == CALLS - 1
        paths = sorted({u.split("?")[0].replace(server.ws, "") for u in sockets})
        assert paths == ["/v1/alerts", "/v1/live"], paths
        assert page.locator("th").first.inner_text() == "通话"  # the Chinese page
        assert not page.errors, page.errors  # type: ignore[attr-defined]
        browser.close()


def test_feed_through_redis_from_another_node(tmp_path, runtime, redis_server: RedisServer):  # noqa: F811
    """Node A writes the calls (shared store, Redis bus); a viewer of node B's /v1/live sees them and their
    updates, which reach B only through Redis."""
    data = tmp_path / "data"  # one SQLite file for both nodes (one store, as PostgreSQL would be)
    with make_server(data, runtime, bus_url=redis_server.url) as a, make_server(data, runtime, bus_url=redis_server.url) as b:
        calls = Calls(a, 20, prefix="rb", owner=a.services.registry.ownership.node_id)
        viewer = Viewer(b)
        viewer.start()
        assert viewer.ready.wait(20)
        assert len(viewer.frames[0]["calls"]) == 20
        drive(calls, seconds=2, per_second=4)
        until(lambda: all(viewer.latest()[c]["index"] == calls.last_index[c] for c in calls.ids), 20,
              "node B's viewer to see node A's updates")
        viewer.stop.set()
        viewer.join(10)
