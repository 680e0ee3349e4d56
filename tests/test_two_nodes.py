"""Two real ``calltone serve`` nodes sharing a real PostgreSQL and redis-server: a call streamed into node A
and followed on node B's event and alert feeds; B's start leaves A's live call alone; A killed with SIGKILL
mid-call; the producer resumes the call on B (``resumed``; seq and call time go on); B's subscriber saw every
event once, in order, up to ``call.ended``, exactly as stored; the escalation raised on A reached B.  And a
node paused past its heartbeat (a zombie) whose call was resumed on the other node: it stores nothing more
of the call, its store stays up, and its producer is told to reconnect."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import soundfile as sf
from redis import Redis
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from calltone.server.database import open_repository
from calltone.server.ownership import NODE_KEY
from calltone.speech.audio import encode_pcm

from .conftest import EMOTION_SPEECH, MAKE_CALLS, needs_shared
from .pg import PgServer, postgres  # noqa: F401 -- the session's PostgreSQL server
from .redis_server import RedisServer, redis_server  # noqa: F401 -- the fixture
from .test_crash_resume import Serve, wait_position
from .test_server import ADMIN, INGEST, STEREO, SUP, check_seqs, load_stereo, rest, start_msg, wait_until, ws_url
from .test_store_failures import Listener, sync

pytestmark = needs_shared(MAKE_CALLS, EMOTION_SPEECH, STEREO)

CALL = "two-nodes-1"
KILL_AT_S = 60.0  # node A is killed once it has stored a position past 60 s (the anger onset is near 42 s)
SENT_TO_A_S = 62.0  # what the producer sends A (a streaming resampler holds the last few ms back)
FRAME_S = 0.2


def escalating_call(folder: Path) -> tuple[object, int, float]:
    """A composed escalate call (real Mandarin speech, 8 kHz telephony): (stereo audio, rate, anger onset s)."""
    subprocess.run([sys.executable, str(MAKE_CALLS), str(EMOTION_SPEECH), str(folder), "--calls", "2", "--lang", "zh",
                    "--telephony", "--seed", "21"], check=True, capture_output=True)
    truth = json.loads((folder / "call001-escalate.json").read_text(encoding="utf-8"))
    audio, rate = sf.read(str(folder / "call001-escalate.wav"), dtype="float32", always_2d=True)
    return audio, rate, truth["escalation_onset_s"]


def send(ws, audio, rate: int, start_s: float, end_s: float | None = None) -> None:
    """µ-law frames of the call's audio from ``start_s`` (to ``end_s``), as fast as the socket takes them."""
    step = int(rate * FRAME_S)
    end = len(audio) if end_s is None else int(round(end_s * rate))
    for i in range(int(round(start_s * rate)), end, step):
        ws.send(encode_pcm(audio[i : min(i + step, end)], "mulaw"))


def subscribers(srv: Serve) -> float:
    """Feed subscribers on the node (its ``calltone_subscribers`` gauge)."""
    status, text = rest(srv, "/metrics", ADMIN)
    assert status == 200 and isinstance(text, str)
    return next(float(line.split()[-1]) for line in text.splitlines() if line.startswith("calltone_subscribers "))


def check_resumed(everything: list[dict], before: list[dict], position: float) -> None:
    """A call's stored events: seqs from 1 without gaps up to call.ended; what the first node stored, unchanged;
    then the resumed part, from its call.started at the stored position."""
    check_seqs(everything)
    assert everything[0]["seq"] == 1 and everything[-1]["type"] == "call.ended"
    assert everything[: len(before)] == before
    seam = everything[len(before)]
    assert seam["type"] == "call.started" and seam["metadata"]["resumed"] is True
    assert seam["seq"] == before[-1]["seq"] + 1 and seam["t"] == pytest.approx(position, abs=1e-3)


@pytest.fixture
def nodes_env(monkeypatch: pytest.MonkeyPatch, postgres: PgServer, redis_server: RedisServer) -> str:  # noqa: F811
    """Both nodes' settings (Serve passes the environment on): the shared database and Redis, short heartbeats."""
    url = postgres.create_database()
    monkeypatch.setenv("CALLTONE_SERVER__DATABASE_URL", url)
    monkeypatch.setenv("CALLTONE_SERVER__BUS_URL", redis_server.url)
    monkeypatch.setenv("CALLTONE_SERVER__NODE_HEARTBEAT_S", "0.5")
    monkeypatch.setenv("CALLTONE_SERVER__NODE_TTL_S", "2.0")
    return url


def test_a_call_survives_its_node_on_the_other_node(tmp_path: Path, nodes_env: str, redis_server: RedisServer):  # noqa: F811
    audio, rate, onset = escalating_call(tmp_path / "calls")
    db = open_repository(nodes_env, tmp_path)
    redis = Redis.from_url(redis_server.url, decode_responses=True)
    a = Serve(tmp_path / "a", tmp_path / "a.log").wait_ready()
    b: Serve | None = None
    try:
        with connect(ws_url(a, f"/v1/calls/{CALL}/audio", INGEST), max_size=None) as ws:
            ws.send(start_msg(sample_rate=rate, encoding="mulaw", language="zh"))
            assert json.loads(ws.recv(timeout=10))["type"] == "started"
            send(ws, audio, rate, 0.0, 1.0)
            owner_a = db.get_call(CALL)["owner_node"]
            assert redis.exists(NODE_KEY + owner_a)
            b = Serve(tmp_path / "b", tmp_path / "b.log").wait_ready()  # B starts while A's call is live
            assert db.get_call(CALL)["status"] == "live"  # B's start sweep left it alone
            feed = Listener(ws_url(b, f"/v1/calls/{CALL}/events", SUP))
            alerts = Listener(ws_url(b, "/v1/alerts", SUP))
            wait_until(lambda: subscribers(b) >= 2, "B's feeds to subscribe")
            send(ws, audio, rate, 1.0, SENT_TO_A_S)
            sync(ws, [])  # A has taken it all
            wait_until(lambda: any(m["type"] == "escalation.raised" and m["call_id"] == CALL for m in alerts.got),
                       "the escalation raised on A to reach B's alert feed", timeout=300)
            wait_position(a, CALL, KILL_AT_S)
            assert db.get_call(CALL)["status"] == "live"  # B's periodic sweeps left it alone too
            a.kill9()  # mid-call: the producer is still connected
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=30)
        stored = [json.loads(body) for _, _, body in db.events(CALL)]
        position = db.get_call(CALL)["duration_s"]  # where A stopped
        wait_until(lambda: not redis.exists(NODE_KEY + owner_a), "A's heartbeat to lapse")
        with connect(ws_url(b, f"/v1/calls/{CALL}/audio", INGEST), max_size=None) as ws:
            ws.send(start_msg(sample_rate=rate, encoding="mulaw", language="zh"))
            started = json.loads(ws.recv(timeout=10))
            assert started["type"] == "started" and started["resumed"] is True, started
            assert started["seq"] == stored[-1]["seq"] and started["t_offset"] == pytest.approx(position, abs=1e-3)
            send(ws, audio, rate, started["t_offset"])
            ws.send(json.dumps({"type": "stop"}))
            feed.join(300)  # the feed closes after call.ended
            assert not feed.is_alive(), "B's event feed never got call.ended"
        everything = [json.loads(body) for _, _, body in db.events(CALL)]
        row = db.get_call(CALL)
        raised = [m for m in alerts.close() if m["type"] == "escalation.raised" and m["call_id"] == CALL]
    finally:
        for srv in (a, b):
            if srv is not None:
                srv.stop()
        redis.close()
        db.close()
    check_resumed(everything, stored, position)
    assert feed.got == everything  # every event once, in order, as stored: A's, then B's
    assert everything[-1]["summary"]["duration_s"] == pytest.approx(len(audio) / rate, abs=0.05)
    assert row is not None and row["status"] == "ended" and row["owner_node"] not in (None, owner_a)
    assert raised and not raised[0]["replay"] and raised[0]["t"] >= onset  # raised on A, live on B's feed
    assert raised[0]["seq"] <= stored[-1]["seq"]


def test_a_paused_node_cannot_write_to_a_call_taken_over(tmp_path: Path, nodes_env: str, redis_server: RedisServer):  # noqa: F811
    audio, rate = load_stereo()  # 5 s, 16 kHz
    step = rate // 5
    db = open_repository(nodes_env, tmp_path)
    redis = Redis.from_url(redis_server.url, decode_responses=True)
    a = Serve(tmp_path / "a", tmp_path / "a.log").wait_ready()
    b = Serve(tmp_path / "b", tmp_path / "b.log").wait_ready()
    try:
        with connect(ws_url(a, "/v1/calls/zombie-1/audio", INGEST), max_size=None) as zombie:
            zombie.send(start_msg())
            assert json.loads(zombie.recv(timeout=10))["type"] == "started"
            for i in range(0, 3 * rate, step):
                zombie.send(encode_pcm(audio[i : i + step], "pcm_s16le"))
            sync(zombie, [])
            wait_position(a, "zombie-1", 2.0)
            owner_a = db.get_call("zombie-1")["owner_node"]
            os.kill(a.proc.pid, signal.SIGSTOP)  # A stalls with the call open
            try:
                wait_until(lambda: not redis.exists(NODE_KEY + owner_a), "the paused node's heartbeat to lapse")
                with connect(ws_url(b, "/v1/calls/zombie-1/audio", INGEST), max_size=None) as ws:
                    ws.send(start_msg(events=True))
                    started = json.loads(ws.recv(timeout=10))
                    assert started["type"] == "started" and started["resumed"] is True, started
                    taken_over = [json.loads(body) for _, _, body in db.events("zombie-1")]
                    assert started["seq"] == taken_over[-1]["seq"]
                    os.kill(a.proc.pid, signal.SIGCONT)  # the zombie wakes up, mid-call as far as it knows
                    deadline = time.monotonic() + 60
                    with pytest.raises(ConnectionClosed) as cut_off:
                        for i in range(3 * rate, len(audio) * 20, step):  # until A cuts its producer off
                            assert time.monotonic() < deadline, "the zombie never cut its producer off"
                            zombie.send(encode_pcm(audio[i % len(audio) : i % len(audio) + step], "pcm_s16le"))
                            time.sleep(0.05)
                    for i in range(int(round(started["t_offset"] * rate)), len(audio), step):
                        ws.send(encode_pcm(audio[i : i + step], "pcm_s16le"))
                    ws.send(json.dumps({"type": "stop"}))
                    echoed: list[dict] = []
                    while not echoed or echoed[-1]["type"] != "call.ended":
                        echoed.append(json.loads(ws.recv(timeout=60)))
            finally:
                os.kill(a.proc.pid, signal.SIGCONT)
        refusal = cut_off.value.rcvd
        ready = rest(a, "/readyz")[0]
        everything = [json.loads(body) for _, _, body in db.events("zombie-1")]
        row = db.get_call("zombie-1")
    finally:
        for srv in (a, b):
            srv.stop()
        redis.close()
        db.close()
    assert refusal is not None and refusal.code == 1012 and refusal.reason == "lease_lost"
    assert ready == 200  # the refused writes did not fail A's store
    check_resumed(everything, taken_over, started["t_offset"])  # the zombie stored nothing after the takeover
    assert everything[len(taken_over):] == echoed
    assert row is not None and row["status"] == "ended" and row["owner_node"] != owner_a
