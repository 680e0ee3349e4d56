"""Draining a node (docs/deploy.md): readiness turns 503 and new calls go elsewhere while live calls carry on
to their end; POST /v1/drain on a real server, SIGUSR1 to a real `calltone serve`."""

from __future__ import annotations

import json
import os
import signal

from websockets.sync.client import connect

from calltone.server.app import ServerThread, create_app
from calltone.speech.audio import encode_pcm

from .conftest import needs_shared
from .test_crash_resume import Serve
from .test_server import ADMIN, AGENT1, INGEST, STEREO, expect_refusal, finals, load_stereo, make_settings, rest, \
    start_msg, ws_url

pytestmark = needs_shared(STEREO)


def test_a_draining_node_refuses_new_calls_and_finishes_its_live_ones(tmp_path, runtime):
    audio, rate = load_stereo()
    settings = make_settings(tmp_path)
    with ServerThread(create_app(settings, runtime), settings) as srv:
        srv.wait_ready()
        assert rest(srv, "/v1/drain", AGENT1, "POST", {"draining": True})[0] == 403  # admins only
        with connect(ws_url(srv, "/v1/calls/drain-1/audio", INGEST)) as live:
            live.send(start_msg(events=True))
            assert json.loads(live.recv(timeout=10))["type"] == "started"
            for i in range(0, 2 * rate, rate // 10):
                live.send(encode_pcm(audio[i : i + rate // 10], "pcm_s16le"))
            status, body = rest(srv, "/v1/drain", ADMIN, "POST", {"draining": True})
            assert status == 200 and body["draining"] is True and body["active_calls"] == 1
            status, ready = rest(srv, "/readyz")
            assert status == 503 and ready["draining"] is True and ready["reason"].startswith("draining")
            with connect(ws_url(srv, "/v1/calls/drain-2/audio", INGEST)) as late:  # a new call goes elsewhere
                late.send(start_msg())
                expect_refusal(late, "shutting_down", 1012)
            for i in range(2 * rate, len(audio), rate // 10):  # the live call carries on to its end
                live.send(encode_pcm(audio[i : i + rate // 10], "pcm_s16le"))
            live.send(json.dumps({"type": "stop"}))
            events = []
            while not events or events[-1]["type"] != "call.ended":
                events.append(json.loads(live.recv(timeout=30)))
        assert events[-1]["summary"]["end_reason"] == "stopped" and "horizon" in finals(events)["agent"].lower()
        assert rest(srv, "/readyz")[1]["active_calls"] == 0
        assert rest(srv, "/v1/drain", ADMIN, "POST", {"draining": False})[0] == 200
        assert rest(srv, "/readyz")[0] == 200


def test_sigusr1_drains_calltone_serve(tmp_path):
    srv = Serve(tmp_path / "data", tmp_path / "serve.log").wait_ready()
    try:
        os.kill(srv.proc.pid, signal.SIGUSR1)
        status, ready = rest(srv, "/readyz")
        while status == 200:  # the signal is handled on the server's own loop
            status, ready = rest(srv, "/readyz")
        assert status == 503 and ready["draining"] is True
        assert srv.proc.poll() is None  # draining is not stopping
    finally:
        srv.stop()
