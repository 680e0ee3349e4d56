"""Exactly-one-node work on two real ``calltone serve`` nodes sharing PostgreSQL and Redis (``server.bus_url``):
a webhook delivery cut off by a SIGKILL of the node making it is finished by the other node (same delivery id,
every attempt logged), and the retention purge runs on one node per interval.  Also, in one process: a node whose
delivery outlasts ``webhook_claim_idle_s`` keeps it (it re-claims it) while another node looks for idle ones."""

from __future__ import annotations

import asyncio
import http.server
import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import redis
import soundfile as sf

from calltone.server.metrics import Metrics
from calltone.server.sqlite import SqliteRepository
from calltone.server.store import AsyncStore
from calltone.server.webhooks import Deliverer, verify
from calltone.server.workqueue import GROUP, STREAM, RedisWebhookQueue

from .conftest import EMOTION_SPEECH, MAKE_CALLS, require
from .pg import PgServer, postgres  # noqa: F401 -- the session's PostgreSQL server
from .redis_server import RedisServer, redis_server  # noqa: F401 -- a redis-server per test
from .test_crash_resume import Serve
from .test_server import SECRET, SUP, rest, stream, wait_until

HOLD_S = 120.0  # how long the receiver holds the attempt it hangs (the node is killed long before)


class Receiver(http.server.ThreadingHTTPServer):
    """Webhook receiver on loopback.  The first ``escalation.raised`` alert it hears is the victim: its first
    ``fails`` attempts are answered 500, the next is held open (``hanging`` set) until ``release``, the rest 204."""

    daemon_threads = True

    def __init__(self, fails: int) -> None:
        super().__init__(("127.0.0.1", 0), ReceiverHandler)
        self.fails = fails
        self.lock = threading.Lock()
        self.requests: list[tuple[float, dict, bytes]] = []  # (monotonic time, headers, body)
        self.victim: str | None = None  # its alert id
        self.hanging = threading.Event()
        self.release = threading.Event()
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"

    def victim_requests(self) -> list[tuple[float, dict, bytes]]:
        with self.lock:
            return [r for r in self.requests if r[1]["X-Calltone-Event"] == "escalation.raised"
                    and json.loads(r[2])["alert_id"] == self.victim]

    def answer(self, headers: dict, body: bytes) -> int | None:
        """The status for this request (None: hold it)."""
        with self.lock:
            self.requests.append((time.monotonic(), headers, body))
            if self.victim is None and headers["X-Calltone-Event"] == "escalation.raised":
                self.victim = json.loads(body)["alert_id"]
        n = len(self.victim_requests())
        is_victim = headers["X-Calltone-Event"] == "escalation.raised" and json.loads(body)["alert_id"] == self.victim
        if is_victim and n <= self.fails:
            return 500
        if is_victim and n == self.fails + 1:
            return None
        return 204


class ReceiverHandler(http.server.BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        status = self.server.answer(dict(self.headers), body)
        if status is None:
            self.server.hanging.set()
            self.server.release.wait(HOLD_S)
            status = 503
        try:
            self.send_response(status)
            self.end_headers()
        except OSError:  # the node that sent it is gone
            pass

    def log_message(self, *args: object) -> None:
        pass


def serve_in(folder: Path, env: dict[str, str]) -> Serve:
    """A node with its own data folder and log in ``folder``."""
    folder.mkdir(parents=True)
    return Serve(folder / "data", folder / "serve.log", env)


def cluster_env(database_url: str, bus_url: str, **extra: str) -> dict[str, str]:
    return {"CALLTONE_SERVER__DATABASE_URL": database_url, "CALLTONE_SERVER__BUS_URL": bus_url, **extra}


def consumers(r: redis.Redis) -> list[dict]:
    try:
        return r.xinfo_consumers(STREAM, GROUP)
    except redis.ResponseError:  # no group yet
        return []


def raised_deliveries(node: Serve, alert_id: str | None) -> list[dict]:
    """The logged attempts of the alert's escalation.raised delivery (through the REST API)."""
    status, alert = rest(node, f"/v1/alerts/{alert_id}", SUP)
    assert status == 200, alert
    return [d for d in alert["deliveries"] if d["event_type"] == "escalation.raised"]


def test_a_delivery_cut_off_by_a_node_kill_is_finished_by_the_other_node(tmp_path: Path, postgres: PgServer,
                                                                          redis_server: RedisServer) -> None:
    calls = tmp_path / "calls"
    subprocess.run([sys.executable, str(require(MAKE_CALLS)), str(require(EMOTION_SPEECH)), str(calls),
                    "--calls", "2", "--lang", "zh", "--telephony", "--seed", "21"], check=True, capture_output=True)
    audio, rate = sf.read(str(calls / "call001-escalate.wav"), dtype="float32", always_2d=True)
    receiver = Receiver(fails=1)
    env = cluster_env(postgres.create_database(), redis_server.url, CALLTONE_SERVER__WEBHOOKS=json.dumps([receiver.url]),
                      CALLTONE_SERVER__WEBHOOK_SECRET=SECRET, CALLTONE_SERVER__WEBHOOK_TIMEOUT_S="300",
                      CALLTONE_SERVER__WEBHOOK_CLAIM_IDLE_S="3")
    r = redis.Redis.from_url(redis_server.url, decode_responses=True)
    a = serve_in(tmp_path / "a", env)
    b: Serve | None = None
    try:
        a.wait_for("/readyz")
        events = stream(a, "esc-node", audio, rate, encoding="mulaw", speed=2.0, frame_s=0.02, timeout=120)
        assert any(e["type"] == "escalation.raised" for e in events), "the call raised no escalation"
        assert receiver.hanging.wait(120), "node A never made the second attempt"
        # node A is mid-delivery (attempt 2 held open): a second node joins, then A dies
        b = serve_in(tmp_path / "b", env).wait_for("/healthz")
        wait_until(lambda: len(consumers(r)) == 2, "node B to join the webhook consumer group", timeout=120)
        killed_at = time.monotonic()
        a.kill9()
        wait_until(lambda: any(d["ok"] for d in raised_deliveries(b, receiver.victim)), "node B to deliver the alert",
                   timeout=120)
        wait_until(lambda: r.xpending(STREAM, GROUP)["pending"] == 0, "node B to acknowledge it")
        log = raised_deliveries(b, receiver.victim)
    finally:
        receiver.release.set()
        a.stop()
        if b is not None:
            b.stop()
        receiver.shutdown()
    tries = receiver.victim_requests()
    assert len(tries) == 3  # A: 500, A: held (killed), B: 204
    assert len({h["X-Calltone-Delivery"] for _, h, _ in tries}) == 1  # the same delivery id from both nodes
    assert len({body for _, _, body in tries}) == 1
    for _, h, body in tries:
        assert verify(SECRET, h["X-Calltone-Timestamp"], body, h["X-Calltone-Signature"])
    assert tries[2][0] > killed_at  # not before node A was gone: A kept its delivery while alive
    assert [(d["attempt"], d["ok"], d["status_code"]) for d in log] == [(1, 0, 500), (2, 1, 204)]
    assert r.xlen(STREAM) == 0
    assert "taking over delivery" in b.output() and "taking over delivery" not in a.output()


def purge_turns(node: Serve) -> list[int]:
    return [int(t) for t in re.findall(r"retention purge \(turn (\d+)\)", node.log.read_text(errors="replace"))]


def test_the_retention_purge_runs_on_one_node_per_interval(tmp_path: Path, postgres: PgServer,
                                                           redis_server: RedisServer) -> None:
    from calltone.server.postgres import PostgresRepository

    url = postgres.create_database()
    repo = PostgresRepository(url)  # creates the schema
    old = time.time() - 3 * 86400
    try:
        repo.upsert_call({"call_id": "old-call", "status": "ended", "started_at": old})
    finally:
        repo.close()
    env = cluster_env(url, redis_server.url, CALLTONE_PRIVACY__RETENTION_DAYS="1",
                      CALLTONE_PRIVACY__PURGE_INTERVAL_S="0.5")
    nodes = [serve_in(tmp_path / "a", env), serve_in(tmp_path / "b", env)]
    try:
        for node in nodes:
            node.wait_for("/healthz")
        wait_until(lambda: len(set(purge_turns(nodes[0]) + purge_turns(nodes[1]))) >= 8, "eight purge turns",
                   timeout=120)
        assert rest(nodes[1], "/v1/calls/old-call", SUP)[0] == 404
    finally:
        for node in nodes:
            node.stop()
    a, b = purge_turns(nodes[0]), purge_turns(nodes[1])
    assert len(set(a)) == len(a) and len(set(b)) == len(b)
    assert not set(a) & set(b), sorted(set(a) & set(b))  # no interval purged by both nodes


def test_a_live_node_keeps_its_delivery_while_another_node_looks_for_idle_ones(tmp_path: Path,
                                                                              redis_server: RedisServer) -> None:
    """Node X's delivery outlasts ``claim_idle_s`` several times over (the receiver holds it): X keeps re-claiming
    it, so node Y, claiming idle deliveries all along, never takes it; X delivers it once, attempt 1."""
    receiver = Receiver(fails=0)
    store = AsyncStore(SqliteRepository(tmp_path / "calltone.db"))
    claim_idle_s = 0.5

    def node(urls: list[str]) -> RedisWebhookQueue:
        deliverer = Deliverer(SECRET, store, Metrics(), attempts=1, timeout_s=60.0)
        return RedisWebhookQueue(redis_server.url, urls, deliverer, claim_idle_s=claim_idle_s)

    async def scenario() -> None:
        x, y = node([receiver.url]), node([])
        await x.start()
        x.send("al-x", "escalation.raised", json.dumps({"alert_id": "al-x"}))
        assert await asyncio.to_thread(receiver.hanging.wait, 30)  # X is in the attempt the receiver holds
        await y.start()
        await asyncio.sleep(6 * claim_idle_s)  # Y's claim passes run meanwhile (this window only bounds the test)
        receiver.release.set()  # the held attempt gets a 503: X gives up (one attempt) and acknowledges it
        await asyncio.to_thread(wait_until, lambda: r.xlen(STREAM) == 0, "X to acknowledge the delivery")
        await x.close()
        await y.close()

    r = redis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        asyncio.run(scenario())
        assert [(d["attempt"], d["status_code"]) for d in store.repo.deliveries("al-x")] == [(1, 503)]
        assert len(receiver.victim_requests()) == 1  # Y never made an attempt
    finally:
        receiver.shutdown()
        store.close()
