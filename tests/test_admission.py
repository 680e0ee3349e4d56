"""Admission control and graceful overload (server/admission.py) on a real server: uvicorn on loopback, the
real models, composed calls from ../shared streamed faster than real time so that the ASR falls behind.

A full node refuses new calls on every ingest protocol with 1013 and a reason, leaves no call for them,
answers /readyz 503 until a call ends, sheds partials first, and its running calls keep every final."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import uuid

import numpy as np
import pytest
import soundfile as sf
from websockets.asyncio.client import connect as aconnect
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from calltone.server.admission import CALLS_PER_ASR_WORKER, AdmissionPolicy
from calltone.server.app import ServerThread, create_app
from calltone.server.replay import stream_call
from calltone.runtime import Runtime, asr_workers
from calltone.settings import ServerSettings, Settings
from calltone.speech.audio import encode_pcm
from calltone.speech.g711 import ulaw_encode

from .audiohook_client import AudioHookClient
from .conftest import EMOTION_SPEECH, MAKE_CALLS, needs_shared, require
from .test_server import ADMIN, INGEST, SUP, TOKENS, rest, start_msg, twilio_messages, wait_until

pytestmark = needs_shared(EMOTION_SPEECH, MAKE_CALLS)

API_KEY = "SGVsbG8sIEkgYW0gdGhlIEFQSSBrZXkh"
SECRET = base64.b64encode(b"MySuperSecretKeyTellNo-1!2@3#4$5").decode()
CALL_S = 30.0  # of each composed call: enough utterances to fall behind, little enough for a short module
FRAME_S = 0.2
SPEED = 4.0  # two calls at 4 x real time: more audio than one unbatched decoder keeps up with


@pytest.fixture(scope="module")
def calls(tmp_path_factory) -> list[tuple[str, np.ndarray]]:
    """Two composed 8 kHz stereo calls, one Mandarin and one English: (language, frames x 2 float32)."""
    out = []
    for lang, seed in (("zh", 5), ("en", 6)):
        d = tmp_path_factory.mktemp(f"calls-{lang}")
        subprocess.run([sys.executable, str(require(MAKE_CALLS)), str(require(EMOTION_SPEECH)), str(d), "--calls", "1",
                        "--lang", lang, "--seed", str(seed), "--telephony"], check=True, capture_output=True)
        x, rate = sf.read(str(next(d.glob("*.wav"))), dtype="float32", always_2d=True)
        assert rate == 8000
        out.append((lang, x[: int(CALL_S * rate)]))
    return out


def settings_for(tmp_path, **server) -> Settings:
    s = Settings()
    s.server = ServerSettings(data_dir=tmp_path, tokens=dict(TOKENS), audiohook_keys={API_KEY: SECRET}, **server)
    return s


@pytest.fixture(scope="module")
def small_asr():
    """A runtime with one unbatched ASR decoder (whatever the machine's cores): smaller than the load offered here."""
    s = Settings()
    s.asr.workers, s.asr.max_batch = 1, 1
    rt = Runtime.create(s)
    yield rt
    rt.close()


@pytest.fixture(scope="module")
def full_node(tmp_path_factory, small_asr):
    """Two calls at most; no lag guard (tested on its own)."""
    s = settings_for(tmp_path_factory.mktemp("data"), max_calls=2, max_asr_lag_s=0.0)
    with ServerThread(create_app(s, small_asr), s) as srv:
        srv.wait_ready()
        yield srv


# --------------------------------------------------------------------------- helpers


def metric(srv, name: str, **labels: str) -> float:
    status, text = rest(srv, "/metrics", ADMIN)
    assert status == 200
    want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
    for line in text.splitlines():
        if line.startswith(want + " "):
            return float(line.split()[-1])
    return 0.0


def final_spans(events: list[dict]) -> list[tuple[str, float, float]]:
    """Each final's channel and span, in order (a final's text is conditioned on the channel's previous final as
    far as it had come back when the utterance was queued: under load that depends on timing; its span does not)."""
    spans = [(e["channel"], e["start"], e["end"]) for e in events if e["type"] == "transcript.final"]
    assert all(e["text"] for e in events if e["type"] == "transcript.final")
    return spans


async def held_call(srv, call_id: str, lang: str, audio: np.ndarray, started: asyncio.Event,
                    release: asyncio.Event) -> list[dict]:
    """Stream a call at ``SPEED`` x real time, then wait for ``release`` before the stop; its events."""
    events: list[dict] = []
    async with aconnect(f"{srv.ws}/v1/calls/{call_id}/audio", additional_headers={"Authorization": f"Bearer {INGEST}"},
                        max_size=None) as ws:
        await ws.send(start_msg(sample_rate=8000, encoding="mulaw", language=lang, events=True))
        assert json.loads(await ws.recv())["type"] == "started"
        started.set()

        async def receive() -> None:
            async for raw in ws:
                events.append(json.loads(raw))
                if events[-1]["type"] == "call.ended":
                    return

        receiver = asyncio.ensure_future(receive())
        step, loop = int(8000 * FRAME_S), asyncio.get_running_loop()
        t0 = loop.time()
        for i in range(0, len(audio), step):
            await ws.send(encode_pcm(audio[i : i + step], "mulaw"))
            await asyncio.sleep(max(0.0, t0 + (i + step) / 8000 / SPEED - loop.time()))
        await release.wait()
        await ws.send(json.dumps({"type": "stop"}))
        await receiver
    return events


def refused_native(srv, call_id: str) -> None:
    with connect(f"{srv.ws}/v1/calls/{call_id}/audio", additional_headers={"Authorization": f"Bearer {INGEST}"}) as ws:
        ws.send(start_msg(sample_rate=8000, encoding="mulaw"))
        error = json.loads(ws.recv(timeout=20))
        assert error["type"] == "error" and error["code"] == "at_capacity", error
        assert "at capacity (2 of 2 calls live)" in error["message"]
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=20)
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1013, "at_capacity")


def refused_twilio(srv, call_sid: str) -> None:
    messages = twilio_messages(np.zeros((1600, 2), np.float32), call_sid, INGEST)
    with connect(f"{srv.ws}/v1/twilio") as ws:
        for m in messages[:3]:  # connected, start, a first media message
            ws.send(m)
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=20)
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1013, "at_capacity")


def refused_audiohook(srv, conversation_id: str) -> None:
    with AudioHookClient(f"{srv.ws}/v1/audiohook", API_KEY, SECRET) as c:
        c.send("open", {"organizationId": c.org_id, "conversationId": conversation_id, "participant": {},
                        "media": [{"type": "audio", "format": "PCMU", "channels": ["external", "internal"], "rate": 8000}]})
        msg = c.recv()
        assert msg["type"] == "disconnect" and msg["parameters"]["reason"] == "error", msg
        assert msg["parameters"]["info"].startswith("at_capacity: this node is at capacity")
        assert c.close(reason="error")["type"] == "closed"
        with pytest.raises(ConnectionClosed) as closed:
            c.ws.recv(timeout=20)
    assert closed.value.rcvd.code == 1013


# --------------------------------------------------------------------------- tests


def test_capacity_is_six_calls_per_asr_worker_unless_set():
    s = Settings()
    assert AdmissionPolicy.from_settings(s).capacity == CALLS_PER_ASR_WORKER * asr_workers(s.asr)
    s.asr.workers = 3
    assert AdmissionPolicy.from_settings(s).capacity == 18
    s.server.max_calls = 5
    assert AdmissionPolicy.from_settings(s).capacity == 5
    s.server.max_calls = 0
    assert AdmissionPolicy.from_settings(s).capacity is None  # no limit


def test_a_full_node_refuses_new_calls_and_keeps_every_final_of_its_own(full_node, calls):
    srv = full_node
    alone = []  # each call streamed on its own first (as fast as the server takes it): the finals it must keep
    for i, (lang, audio) in enumerate(calls):
        events: list[dict] = []
        asyncio.run(stream_call(srv.ws, f"alone-{i}", audio, 8000, speed=0, token=INGEST, language=lang,
                                on_event=events.append))
        alone.append(final_spans(events))
    assert all(alone)
    assert rest(srv, "/readyz")[0] == 200
    shed_before = metric(srv, "calltone_partials_shed_total")
    refused = {"native": "full-native", "twilio": "CA" + "f" * 32, "audiohook": str(uuid.uuid4())}

    async def overload() -> list[list[dict]]:
        started = [asyncio.Event(), asyncio.Event()]
        release = [asyncio.Event(), asyncio.Event()]
        tasks = [asyncio.ensure_future(held_call(srv, f"busy-{i}", lang, audio, started[i], release[i]))
                 for i, (lang, audio) in enumerate(calls)]
        await asyncio.gather(*(e.wait() for e in started))
        # the node is full while both calls stream: every protocol's new call is refused
        await asyncio.to_thread(refused_native, srv, refused["native"])
        await asyncio.to_thread(refused_twilio, srv, refused["twilio"])
        await asyncio.to_thread(refused_audiohook, srv, refused["audiohook"])
        status, ready = await asyncio.to_thread(rest, srv, "/readyz")
        assert status == 503 and ready["reason"].startswith("at_capacity") and ready["headroom"] == 0, ready
        assert ready["capacity"] == 2 and ready["active_calls"] == 2
        assert rest(srv, "/readyz?for=api")[0] == 200  # REST and feeds are still served
        assert await asyncio.to_thread(metric, srv, "calltone_call_headroom") == 0
        release[0].set()
        first = await tasks[0]
        await asyncio.to_thread(wait_until, lambda: rest(srv, "/readyz")[0] == 200, "readiness after a call ended")
        assert await asyncio.to_thread(metric, srv, "calltone_call_headroom") == 1  # the other call still runs
        release[1].set()
        return [first, await tasks[1]]

    loaded = asyncio.run(overload())
    for got, want in zip(loaded, alone):
        assert got[-1]["type"] == "call.ended"
        assert final_spans(got) == want  # every final, as alone (the VAD is deterministic)
    assert metric(srv, "calltone_partials_shed_total") > shed_before  # the partials went first
    assert metric(srv, "calltone_calls_refused_total", reason="at_capacity") == 3
    for call_id in refused.values():  # a refused call leaves nothing behind
        assert rest(srv, f"/v1/calls/{call_id}", SUP)[0] == 404
    assert metric(srv, "calltone_call_capacity") == 2
    wait_until(lambda: metric(srv, "calltone_call_headroom") == 2, "both calls gone")  # (after their call.ended)


def test_a_call_in_progress_resumes_on_a_full_node(full_node, calls):
    """A call left interrupted (its AudioHook session dropped) is taken back although the node is full."""
    srv = full_node
    _, audio = calls[1]
    pcmu = ulaw_encode(audio[: 8000 * 2].reshape(-1))
    conv = str(uuid.uuid4())
    with AudioHookClient(f"{srv.ws}/v1/audiohook", API_KEY, SECRET) as c:
        c.open(conv, custom={"language": "en"})
        c.audio(pcmu)
    wait_until(lambda: rest(srv, f"/v1/calls/{conv}", SUP)[1].get("status") == "interrupted", "the call interrupted")
    headers = {"Authorization": f"Bearer {INGEST}"}
    with connect(f"{srv.ws}/v1/calls/fill-1/audio", additional_headers=headers) as a, \
            connect(f"{srv.ws}/v1/calls/fill-2/audio", additional_headers=headers) as b:
        for ws in (a, b):
            ws.send(start_msg(sample_rate=8000, encoding="mulaw"))
            assert json.loads(ws.recv(timeout=20))["type"] == "started"
        assert rest(srv, "/readyz")[1]["headroom"] == 0
        with AudioHookClient(f"{srv.ws}/v1/audiohook", API_KEY, SECRET) as c:
            c.open(conv, custom={"language": "en"})  # resumed: opened, not refused
            status, ready = rest(srv, "/readyz")
            assert status == 503 and ready["headroom"] == -1 and ready["active_calls"] == 3
            c.audio(pcmu)
            c.close()
        for ws in (a, b):
            ws.send(json.dumps({"type": "stop"}))
    row = rest(srv, f"/v1/calls/{conv}", SUP)[1]
    assert row["status"] == "ended" and row["summary"]["resumed"] is True


def test_a_lagging_asr_refuses_new_calls(tmp_path, small_asr, calls):
    """No call limit, but a lag guard: while one call floods the ASR, new calls are refused with asr_lagging."""
    s = settings_for(tmp_path, max_calls=0, max_asr_lag_s=0.5)
    lang, audio = calls[0]
    with ServerThread(create_app(s, small_asr), s) as srv:
        srv.wait_ready()

        async def probe() -> tuple[dict | None, list[str]]:
            flood = asyncio.ensure_future(stream_call(srv.ws, "flood", audio, 8000, speed=0, token=INGEST,
                                                      language=lang))
            refusal, reasons, n = None, [], 0
            while refusal is None and not flood.done():
                n += 1
                status, ready = await asyncio.to_thread(rest, srv, "/readyz")
                reasons.append(ready["reason"] if status == 503 else "ready")
                async with aconnect(f"{srv.ws}/v1/calls/probe-{n}/audio",
                                    additional_headers={"Authorization": f"Bearer {INGEST}"}) as ws:
                    await ws.send(start_msg(sample_rate=8000, encoding="mulaw"))
                    first = json.loads(await ws.recv())
                    if first["type"] != "error":
                        await ws.send(json.dumps({"type": "stop"}))
                        continue
                    await ws.wait_closed()
                    refusal = {**first, "close": (ws.close_code, ws.close_reason)}
            ended = await flood
            assert ended is not None and ended["type"] == "call.ended"
            return refusal, reasons

        refusal, reasons = asyncio.run(probe())
    assert refusal is not None, reasons
    assert refusal["code"] == "asr_lagging" and "behind (limit 0.5 s)" in refusal["message"]
    assert refusal["close"] == (1013, "asr_lagging")
