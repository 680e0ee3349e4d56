"""Call time on a real server: audio discarded upstream (``LiveCall.skip``) moves later events on,
and a producer that vanished (``finish("interrupted")``) leaves a call the same id resumes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from websockets.sync.client import connect

from calltone.pipeline import PipelineOptions
from calltone.server.app import ServerThread, create_app
from calltone.speech.audio import encode_pcm

from .conftest import needs_shared
from .test_server import INGEST, STEREO, SUP, check_seqs, load_stereo, make_settings, read_events, rest, start_msg, ws_url
from .test_store_failures import sync

pytestmark = needs_shared(STEREO)


@pytest.fixture(scope="module")
def server(tmp_path_factory, runtime):
    s = make_settings(tmp_path_factory.mktemp("data"))
    with ServerThread(create_app(s, runtime), s) as srv:
        srv.wait_ready()
        yield srv


def agent_finals(events: list[dict]) -> list[dict]:
    return [e for e in events if e["type"] == "transcript.final" and e["channel"] == "agent"]


def two_copies(server, call_id: str, audio: np.ndarray, rate: int, skips: tuple[float, ...] = ()) -> list[dict]:
    """Stream ``audio`` twice as one call, with ``skips`` (seconds discarded upstream) between the copies."""
    step = rate // 5
    echoed: list[dict] = []
    with connect(ws_url(server, f"/v1/calls/{call_id}/audio", INGEST), max_size=None) as ws:
        ws.send(start_msg(events=True))
        assert json.loads(ws.recv(timeout=10))["type"] == "started"
        for i in range(0, len(audio), step):
            ws.send(encode_pcm(audio[i : i + step], "pcm_s16le"))
        sync(ws, echoed)  # all of the first copy is in the pipeline
        live = server.call(lambda: server.services.registry.live[call_id])
        for seconds in skips:
            server.call(live.skip, seconds)
        for i in range(0, len(audio), step):
            ws.send(encode_pcm(audio[i : i + step], "pcm_s16le"))
        ws.send(json.dumps({"type": "stop"}))
        while not echoed or echoed[-1]["type"] != "call.ended":
            echoed.append(json.loads(ws.recv(timeout=60)))
    check_seqs(echoed)
    return echoed


def test_skip_moves_later_events_on(server):
    audio, rate = load_stereo()  # 5.0 s, the agent's one line ends near 2.7 s
    plain = two_copies(server, "skip-0", audio, rate)
    skipped = two_copies(server, "skip-1", audio, rate, skips=(2.0, 1.0))  # skips add up
    (first0, second0), (first, second) = agent_finals(plain), agent_finals(skipped)
    assert second0["start"] > 5.0 and second["text"] == second0["text"]
    assert (first["start"], first["end"]) == (first0["start"], first0["end"])  # audio before the skips: unchanged
    assert second["start"] == pytest.approx(second0["start"] + 3.0, abs=1e-3)  # audio after them: 3 s later
    assert second["end"] == pytest.approx(second0["end"] + 3.0, abs=1e-3)
    for w, w0 in zip(second["words"] or [], second0["words"] or []):
        assert (w["start"], w["end"]) == pytest.approx((w0["start"] + 3.0, w0["end"] + 3.0), abs=1e-3)
    assert skipped[-1]["summary"]["duration_s"] == pytest.approx(13.0, abs=1e-3)
    assert rest(server, "/v1/calls/skip-1", SUP)[1]["duration_s"] == pytest.approx(13.0, abs=1e-3)


def test_interrupted_end_is_resumable(server):
    audio, rate = load_stereo()
    options = PipelineOptions(language="en", roles=["customer", "agent"], agent_id="a1")
    live = server.call(server.services.registry.open, "vanish-1", options)
    half = audio[: 2 * rate]
    server.call(live.push, {"customer": np.ascontiguousarray(half[:, 0]), "agent": np.ascontiguousarray(half[:, 1])})
    server.call(live.finish, "interrupted", timeout=60)  # the producer vanished without saying goodbye
    status, call = rest(server, "/v1/calls/vanish-1", SUP)
    assert status == 200 and call["status"] == "interrupted"
    assert call["duration_s"] == pytest.approx(2.0, abs=1e-3)
    stored = read_events(server, "vanish-1", until="never", timeout=2)
    assert stored and "call.ended" not in {e["type"] for e in stored}
    assert server.services.metrics.value("calltone_calls_ended_total", how="interrupted") >= 1
    with connect(ws_url(server, "/v1/calls/vanish-1/audio", INGEST), max_size=None) as ws:
        ws.send(start_msg(events=True))
        started = json.loads(ws.recv(timeout=10))
        assert started["resumed"] is True and started["seq"] == stored[-1]["seq"]
        assert started["t_offset"] == pytest.approx(2.0, abs=1e-3)
        for i in range(2 * rate, len(audio), rate // 5):
            ws.send(encode_pcm(audio[i : i + rate // 5], "pcm_s16le"))
        ws.send(json.dumps({"type": "stop"}))
        after: list[dict] = []
        while not after or after[-1]["type"] != "call.ended":
            after.append(json.loads(ws.recv(timeout=60)))
    everything = read_events(server, "vanish-1")
    check_seqs(everything)
    assert everything[-1]["summary"]["duration_s"] == pytest.approx(5.0, abs=0.02)
