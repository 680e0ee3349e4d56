"""Genesys AudioHook (v2) and signed Twilio streams against a real server: real uvicorn on
loopback, the test's own AudioHook client (tests/audiohook_client.py), real audio, the
real Whisper model."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
import uuid

import numpy as np
import pytest
import soundfile as sf
import soxr
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from calltone.server.app import ServerThread, create_app
from calltone.server.signature import AudioHookVerifier, LocalNonces, SignatureError, twilio_signature
from calltone.settings import ServerSettings, Settings
from calltone.speech.g711 import ulaw_encode

from .audiohook_client import OFFERS, STEREO, AudioHookClient, signed_headers
from .conftest import SPEECH, require
from .redis_server import redis_server  # noqa: F401 -- the fixture

API_KEY = "SGVsbG8sIEkgYW0gdGhlIEFQSSBrZXkh"
SECRET = base64.b64encode(b"MySuperSecretKeyTellNo-1!2@3#4$5").decode()
TWILIO_TOKEN = "twilio-auth-token-0123456789abcdef"
TOKENS = {"ingest-token-0001": "ingest", "supervisor-tok-01": "supervisor:sam"}
INGEST, SUP = TOKENS


@pytest.fixture(scope="module")
def server(tmp_path_factory, runtime):
    s = Settings()
    s.server = ServerSettings(data_dir=tmp_path_factory.mktemp("data"), tokens=dict(TOKENS),
                              audiohook_keys={API_KEY: SECRET}, twilio_auth_token=TWILIO_TOKEN)
    with ServerThread(create_app(s, runtime), s) as srv:
        srv.wait_ready()
        yield srv


@pytest.fixture(scope="module")
def pcmu() -> bytes:
    """The 5 s two-speaker recording as 8 kHz stereo PCMU, external (customer) first."""
    x, sr = sf.read(str(require(SPEECH / "stereo_diarization.wav")), dtype="float32", always_2d=True)
    return ulaw_encode(soxr.resample(x, sr, 8000).reshape(-1))


def url(srv) -> str:
    return f"{srv.ws}/v1/audiohook"


def events(srv, call_id: str, until: str = "call.ended", timeout: float = 60) -> list[dict]:
    out: list[dict] = []
    with connect(f"{srv.ws}/v1/calls/{call_id}/events", additional_headers={"Authorization": f"Bearer {SUP}"}) as ws:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                out.append(json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic()))))
            except (ConnectionClosed, TimeoutError):
                break
            if out[-1]["type"] == until:
                break
    return out


def call_row(srv, call_id: str) -> tuple[int, dict]:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(f"{srv.http}/v1/calls/{call_id}", headers={"Authorization": f"Bearer {SUP}"})
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, {}


def refused_status(srv, headers: dict[str, str]) -> int:
    with pytest.raises(InvalidStatus) as exc:
        connect(url(srv), additional_headers=headers, open_timeout=20)
    return exc.value.response.status_code


# --------------------------------------------------------------------------- signatures


def test_genesys_documented_signature_verifies():
    """The signed request of Genesys's AudioHook documentation (its published test vector)."""
    headers = {"host": "audiohook.example.com", "audiohook-organization-id": "d7934305-0972-4844-938e-9060eef73d05",
               "audiohook-correlation-id": "e160e428-53e2-487c-977d-96989bf5c99d",
               "audiohook-session-id": "30b0e395-84d3-4570-ac13-9a62d8f514c0", "x-api-key": API_KEY,
               "signature": "sig1=:NZBwyBHRRyRoeLqy1IzOa9VYBuI8TgMFt2GRDkDuJh4=:",
               "signature-input": 'sig1=("@request-target" "@authority" "audiohook-organization-id" '
                                  '"audiohook-session-id" "audiohook-correlation-id" "x-api-key");'
                                  'keyid="SGVsbG8sIEkgYW0gdGhlIEFQSSBrZXkh";nonce="VGhpc0lzQVVuaXF1ZU5vbmNl";'
                                  'alg="hmac-sha256";created=1641013200;expires=3282026430'}
    verifier = AudioHookVerifier({API_KEY: "TXlTdXBlclNlY3JldEtleVRlbGxOby0xITJAMyM0JDU="})
    signed = verifier.verify(headers, "/api/v1/voicebiometrics/ws", now=1641013201)
    assert (signed.api_key, signed.nonce) == (API_KEY, "VGhpc0lzQVVuaXF1ZU5vbmNl")
    with pytest.raises(SignatureError, match="does not verify"):
        verifier.verify(headers, "/api/v1/other", now=1641013201)
    with pytest.raises(SignatureError, match="too old"):
        verifier.verify(headers, "/api/v1/voicebiometrics/ws", now=1641013200 + 14)
    nonces = LocalNonces()
    assert asyncio.run(nonces.use(signed.nonce)) and not asyncio.run(nonces.use(signed.nonce))  # once only


@pytest.mark.parametrize("case", ["unknown key", "wrong secret", "expired", "no signature", "unsigned component"])
def test_bad_upgrades_are_refused_with_401_and_make_no_call(server, case):
    conv = str(uuid.uuid4())
    session = str(uuid.uuid4())
    kw = dict(org_id="d7934305-0972-4844-938e-9060eef73d05", session_id=session, correlation_id=str(uuid.uuid4()))
    if case == "unknown key":
        headers = signed_headers(url(server), "not-a-configured-key", SECRET, **kw)
    elif case == "wrong secret":
        headers = signed_headers(url(server), API_KEY, base64.b64encode(b"another secret").decode(), **kw)
    elif case == "expired":
        headers = signed_headers(url(server), API_KEY, SECRET, created=int(time.time()) - 120, expires_in=30, **kw)
    elif case == "no signature":
        headers = {k: v for k, v in signed_headers(url(server), API_KEY, SECRET, **kw).items() if not k.startswith("Signature")}
    else:
        headers = signed_headers(url(server), API_KEY, SECRET, **kw)
        headers["Audiohook-Session-Id"] = str(uuid.uuid4())  # covered by the signature: changed after signing
    assert refused_status(server, headers) == 401
    assert call_row(server, conv)[0] == 404


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname} {record.getMessage()}")


def test_refused_upgrades_log_no_error(server):
    """uvicorn logs an ERROR after every HTTP-refused upgrade; calltone drops that noise (and logs the refusal)."""
    logs = Collect()
    for name in ("uvicorn.error", "calltone.server.audiohook"):
        logging.getLogger(name).addHandler(logs)
    try:
        headers = signed_headers(url(server), API_KEY, base64.b64encode(b"wrong").decode(), org_id=str(uuid.uuid4()),
                                 session_id=str(uuid.uuid4()), correlation_id=str(uuid.uuid4()))
        assert refused_status(server, headers) == 401
        deadline = time.monotonic() + 10
        while not any("refused" in line for line in logs.lines) and time.monotonic() < deadline:
            time.sleep(0.05)
        quiet_until = time.monotonic() + 1.0  # uvicorn would log its line just after the response has gone
        while not any(line.startswith("ERROR") for line in logs.lines) and time.monotonic() < quiet_until:
            time.sleep(0.05)
    finally:
        for name in ("uvicorn.error", "calltone.server.audiohook"):
            logging.getLogger(name).removeHandler(logs)
    assert any(line.startswith("WARNING AudioHook upgrade refused") for line in logs.lines), logs.lines
    assert not [line for line in logs.lines if line.startswith("ERROR")], logs.lines


def test_replayed_nonce_is_refused(server):
    headers = signed_headers(url(server), API_KEY, SECRET, org_id="d7934305-0972-4844-938e-9060eef73d05",
                             session_id=str(uuid.uuid4()), correlation_id=str(uuid.uuid4()))
    with connect(url(server), additional_headers=headers, open_timeout=20):
        pass
    assert refused_status(server, headers) == 401


def test_a_request_replayed_to_another_node_is_refused(tmp_path, runtime, redis_server):
    """With server.bus_url the nodes share their nonces (in Redis): a signed upgrade is good once, on any node."""
    nodes = []
    for name in ("a", "b"):
        s = Settings()
        s.server = ServerSettings(data_dir=tmp_path / name, tokens=dict(TOKENS), audiohook_keys={API_KEY: SECRET},
                                  bus_url=redis_server.url)
        nodes.append(ServerThread(create_app(s, runtime), s))
    with nodes[0] as a, nodes[1] as b:
        a.wait_ready()
        b.wait_ready()
        headers = signed_headers(url(a), API_KEY, SECRET, org_id="d7934305-0972-4844-938e-9060eef73d05",
                                 session_id=str(uuid.uuid4()), correlation_id=str(uuid.uuid4()))
        headers_b = {**headers}  # the same request sent to node b (its @authority differs: re-sign with the same nonce)
        nonce = headers["Signature-Input"].split('nonce="')[1].split('"')[0]
        headers_b.update(signed_headers(url(b), API_KEY, SECRET, org_id="d7934305-0972-4844-938e-9060eef73d05",
                                        session_id=headers["Audiohook-Session-Id"],
                                        correlation_id=headers["Audiohook-Correlation-Id"], nonce=nonce))
        with connect(url(a), additional_headers=headers, open_timeout=20):
            pass
        assert refused_status(b, headers_b) == 401


# --------------------------------------------------------------------------- sessions


def test_probe_is_answered_and_makes_no_call(server):
    zero = "00000000-0000-0000-0000-000000000000"
    with AudioHookClient(url(server), API_KEY, SECRET) as c:
        opened = c.open(zero, participant={"id": zero, "ani": "", "aniName": "", "dnis": ""})
        assert opened["parameters"]["media"] == [STEREO]
        c.send("ping")
        assert c.recv()["type"] == "pong"
        assert c.close()["type"] == "closed"
    assert call_row(server, zero)[0] == 404


def test_media_negotiation_echoes_one_offer(server):
    mono = {"type": "audio", "format": "PCMU", "channels": ["internal"], "rate": 8000}
    reversed_stereo = {**STEREO, "channels": ["internal", "external"]}
    for offers, chosen in (([mono, reversed_stereo], reversed_stereo), ([mono], mono),
                           ([{**STEREO, "format": "L16"}, STEREO], STEREO)):
        with AudioHookClient(url(server), API_KEY, SECRET) as c:
            opened = c.open(str(uuid.uuid4()), media=offers)
            assert opened["parameters"]["media"] == [chosen]
            assert c.close()["type"] == "closed"
    with AudioHookClient(url(server), API_KEY, SECRET) as c:  # nothing usable: disconnect with a reason
        c.send("open", {"organizationId": c.org_id, "conversationId": str(uuid.uuid4()), "participant": {},
                        "media": [{**STEREO, "rate": 16000}]})
        msg = c.recv()
        assert msg["type"] == "disconnect" and msg["parameters"]["reason"] == "error"
        assert "8 kHz" in msg["parameters"]["info"]
        closed = c.close(reason="disconnect")
        assert closed["type"] == "closed" and closed["clientseq"] == c.seq
    with AudioHookClient(url(server), API_KEY, SECRET) as c:  # the client asks which languages calltone takes
        c.send("open", {"organizationId": c.org_id, "conversationId": str(uuid.uuid4()), "participant": {},
                        "media": [STEREO], "supportedLanguages": True})
        opened = c.recv()
        assert opened["type"] == "opened" and {"zh-CN", "en-US"} <= set(opened["parameters"]["supportedLanguages"])
        assert c.close()["type"] == "closed"


def test_l16_call_and_a_language_update(server):
    """L16 (16-bit little-endian) audio is transcribed; update changes the call's language from then on."""
    x, sr = sf.read(str(require(SPEECH / "stereo_diarization.wav")), dtype="float32", always_2d=True)
    l16 = (np.clip(soxr.resample(x, sr, 8000), -1, 1) * 32767).astype("<i2").tobytes()
    conv = str(uuid.uuid4())
    offer = {**STEREO, "format": "L16"}
    with AudioHookClient(url(server), API_KEY, SECRET) as c:
        assert c.open(conv, media=[offer], language="en-US")["parameters"]["media"] == [offer]
        c.audio(l16, bytes_per_sample=2)
        c.send("update", {"language": "zh-CN"})
        assert c.recv()["type"] == "updated"
        c.close()
    evs = events(server, conv)
    assert evs[0]["language"] == "en" and evs[-1]["summary"]["language"] == "zh"
    assert any(e["type"] == "transcript.final" and "horizon" in e["text"].lower() for e in evs), evs


def test_stereo_call_in_real_time(server, pcmu):
    """200 ms frames at real time: transcripts and the customer's grades on the call's feed; close ends the call."""
    conv = str(uuid.uuid4())
    with AudioHookClient(url(server), API_KEY, SECRET) as c:
        opened = c.open(conv, custom={"agent_id": "a7", "language": "en"})
        assert opened["parameters"]["media"] == [STEREO] and opened["seq"] == 1 and opened["clientseq"] == 1
        c.send("ping")
        pong = c.recv()
        assert pong["type"] == "pong" and pong["seq"] == 2 and pong["clientseq"] == 2
        c.audio(pcmu, realtime=1.0)
        closed = c.close()
        assert closed["clientseq"] == c.seq
    evs = events(server, conv)
    assert evs[0]["type"] == "call.started" and evs[-1]["type"] == "call.ended"
    started = evs[0]
    assert started["agent_id"] == "a7" and started["metadata"]["source"] == "audiohook"
    assert started["metadata"]["ani"] != "+1-555-555-1234" and "*" in started["metadata"]["ani"]  # masked
    text = {ch: " ".join(e["text"] for e in evs if e["type"] == "transcript.final" and e["channel"] == ch)
            for ch in ("customer", "agent")}
    assert "complaint" in text["customer"].lower() and "horizon" in text["agent"].lower(), text
    assert any(e["type"] == "emotion.update" and e["channel"] == "customer" for e in evs)
    assert evs[-1]["summary"]["end_reason"] == "stopped"
    assert abs(evs[-1]["summary"]["duration_s"] - 5.0) < 0.25
    status, row = call_row(server, conv)
    assert status == 200 and row["status"] == "ended"


def test_discarded_and_paused_audio_keep_call_time(server, pcmu):
    """1.5 s discarded and 2 s not sent while paused: call time skips 3.5 s; no silence is invented."""
    conv = str(uuid.uuid4())
    half = len(pcmu) // 2 // 2 * 2  # 2.5 s, whole stereo samples
    with AudioHookClient(url(server), API_KEY, SECRET) as c:
        c.open(conv, custom={"language": "en"})
        c.audio(pcmu[:half])
        c.discard(1.5)
        c.send("paused")
        c.send("resumed", {"start": c.position, "discarded": "PT2S"})
        c.discarded_s += 2.0
        c.send("update", {"language": "en-US"})
        assert c.recv()["type"] == "updated"
        c.audio(pcmu[half:])
        c.close()
    evs = events(server, conv)
    ended = evs[-1]
    assert ended["type"] == "call.ended"
    assert abs(ended["summary"]["duration_s"] - 8.5) < 0.25, ended["summary"]
    finals = [e for e in evs if e["type"] == "transcript.final"]
    # the utterances run across the gap (no silence was invented, so the VAD hears no pause there):
    # their ends and the words spoken after the gap lie 3.5 s later than in the recording
    assert 7.0 < max(e["end"] for e in finals) <= 8.6, [(e["start"], e["end"]) for e in finals]
    words = [w for e in finals for w in e["words"]]
    assert words and not [w for w in words if 2.6 < w["start"] < 6.0], words
    talk = sum(ended["summary"]["talk_s"].values())
    assert talk < 2 * 5.0  # speech is only what was sent: 5 s per channel at most


def test_audio_while_paused_or_out_of_order_seq_is_a_disconnect(server, pcmu):
    with AudioHookClient(url(server), API_KEY, SECRET) as c:
        c.open(str(uuid.uuid4()))
        c.send("ping", seq=c.seq + 2)  # skips one
        msg = c.recv()
        assert msg["type"] == "disconnect" and msg["parameters"]["reason"] == "error" and "seq" in msg["parameters"]["info"]
        assert c.close(reason="disconnect")["type"] == "closed"
    with AudioHookClient(url(server), API_KEY, SECRET) as c:  # hostile nesting: refused before it is parsed
        c.open(str(uuid.uuid4()))
        assert c.ws is not None
        c.ws.send('{"version": "2", "type": "update", "parameters": ' + '{"a": ' * 300 + "1" + "}" * 301)
        msg = c.recv()
        assert msg["type"] == "disconnect" and "bad_json" in msg["parameters"]["info"]
    with AudioHookClient(url(server), API_KEY, SECRET) as c:
        c.open(str(uuid.uuid4()))
        c.send("paused")
        c.audio(pcmu[:3200])
        msg = c.recv()
        assert msg["type"] == "disconnect" and "paused" in msg["parameters"]["info"]


def test_reconnect_resumes_the_call(server, pcmu):
    """A session that drops without close leaves the call resumable; the next session continues it."""
    conv = str(uuid.uuid4())
    half = len(pcmu) // 2 // 2 * 2
    first = AudioHookClient(url(server), API_KEY, SECRET)
    with first as c:
        c.open(conv, custom={"language": "en"})
        c.audio(pcmu[:half])
        c.send("ping")
        assert c.recv()["type"] == "pong"  # everything before it was received
    deadline = time.monotonic() + 30
    while call_row(server, conv)[1].get("status") != "interrupted" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert call_row(server, conv)[1]["status"] == "interrupted"
    with AudioHookClient(url(server), API_KEY, SECRET) as c:
        c.open(conv, custom={"language": "en"},
               continued=[{"id": first.session_id, "serverseq": first.server_seq, "clientseq": first.seq}])
        c.audio(pcmu[half:])
        c.close()
    evs = events(server, conv)
    assert [e["seq"] for e in evs] == list(range(1, len(evs) + 1))
    starts = [e for e in evs if e["type"] == "call.started"]
    assert len(starts) == 2 and starts[1]["metadata"]["resumed"] is True
    assert abs(starts[1]["metadata"]["resumed_at_t"] - 2.5) < 0.1
    assert abs(evs[-1]["summary"]["duration_s"] - 5.0) < 0.25


# --------------------------------------------------------------------------- Twilio signatures


def twilio_start(call_sid: str) -> str:
    return json.dumps({"event": "start", "sequenceNumber": "1", "streamSid": "MZ" + "1" * 32,
                       "start": {"streamSid": "MZ" + "1" * 32, "accountSid": "AC" + "2" * 32, "callSid": call_sid,
                                 "tracks": ["inbound", "outbound"], "customParameters": {"language": "en"},
                                 "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}})


def test_twilio_signed_upgrade_is_accepted_and_forged_one_refused(server, pcmu):
    host = server.ws.split("://", 1)[1]
    good = twilio_signature(TWILIO_TOKEN, f"wss://{host}/v1/twilio")
    forged = twilio_signature("some-other-token", f"wss://{host}/v1/twilio")
    with pytest.raises(InvalidStatus) as exc:
        connect(f"{server.ws}/v1/twilio", additional_headers={"X-Twilio-Signature": forged}, open_timeout=20)
    assert exc.value.response.status_code == 403
    with pytest.raises(InvalidStatus):
        connect(f"{server.ws}/v1/twilio", open_timeout=20)  # no signature at all
    call_sid = "CA" + uuid.uuid4().hex
    mono = np.frombuffer(pcmu, np.uint8).reshape(-1, 2)
    with connect(f"{server.ws}/v1/twilio", additional_headers={"X-Twilio-Signature": good}, open_timeout=20) as ws:
        ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        ws.send(twilio_start(call_sid))  # no bearer token: the signature is the credential
        for n, i in enumerate(range(0, len(mono), 160)):
            for col, track in ((0, "inbound"), (1, "outbound")):
                payload = base64.b64encode(mono[i : i + 160, col].tobytes()).decode()
                ws.send(json.dumps({"event": "media", "media": {"track": track, "chunk": str(n + 1),
                                                                "timestamp": str(n * 20), "payload": payload}}))
        ws.send(json.dumps({"event": "stop"}))
    evs = events(server, call_sid)
    assert evs[-1]["type"] == "call.ended"
    assert any(e["type"] == "transcript.final" and "horizon" in e["text"].lower() for e in evs)
