"""Call audio for review, against a real server on loopback with real HTTP clients: range requests (206,
Content-Range, Accept-Ranges, 416), the renditions (kept audio written by the real AudioKeeper; a scored
recording), who may play a call (a role that may not read it gets 403/404 and nothing is logged), the playback
ticket, and the audio access log that admins list."""

from __future__ import annotations

import http.client
import io
import json
import shutil
import time
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from calltone.server.app import ServerThread, create_app
from calltone.server.audiokeeper import AudioKeeper
from calltone.settings import ServerSettings, Settings

from .conftest import SPEECH, needs_shared

pytestmark = needs_shared(SPEECH / "stereo_diarization.wav", SPEECH / "jfk.flac")

TOKENS = {"admin-token-00001": "admin", "super-token-0001": "supervisor:sam", "qa-token-0000001": "qa:quinn",
          "agent-a1-token-01": "agent:a1", "agent-a2-token-01": "agent:a2"}
ADMIN, SUP, QA, A1, A2 = TOKENS


def seed(srv: ServerThread, recording: Path) -> None:
    """Four ended calls and a live one: kept audio (a1), a scored recording (a2), no audio, and a live call."""
    s = srv.services
    stereo, rate = sf.read(str(SPEECH / "stereo_diarization.wav"), dtype="float32")
    assert rate == 16000
    keeper = AudioKeeper(s.audio_dir / "kept-1", ["customer", "agent"])  # as a live call with keep_audio writes it
    keeper.write({"customer": stereo[:, 0], "agent": stereo[:, 1]})
    keeper.close()
    now = time.time()

    def write(r):
        for call_id, agent, status in (("kept-1", "a1", "ended"), ("scored-1", None, "ended"), ("mute-1", "a1", "ended"),
                                       ("live-1", "a1", "live")):
            r.upsert_call({"call_id": call_id, "status": status, "agent_id": agent, "started_at": now - 60,
                           "metadata": {}, "roles": ["customer", "agent"]})
        r.insert_job({"job_id": "job1", "status": "done", "engine": "local", "options": {"customer_channel": 1},
                      "uploaded": 0, "created_at": now},
                     [{"seq": 0, "file": str(recording), "name": "jfk", "status": "done", "call_id": "scored-1",
                       "finished_at": now}])

    srv.call(lambda: s.store.write(write))


@pytest.fixture(scope="module")
def server(tmp_path_factory, runtime):
    tmp = tmp_path_factory.mktemp("playback")
    recording = tmp / "recordings" / "jfk.flac"
    recording.parent.mkdir()
    shutil.copyfile(SPEECH / "jfk.flac", recording)
    s = Settings()
    s.server = ServerSettings(data_dir=tmp / "data", tokens=dict(TOKENS))
    s.privacy.keep_audio = True
    with ServerThread(create_app(s, runtime), s) as srv:
        seed(srv, recording)
        srv.recording = recording  # type: ignore[attr-defined]
        yield srv


def get(srv, path: str, token: str | None = None, headers: dict | None = None, method: str = "GET"):
    conn = http.client.HTTPConnection(srv.host, srv.port, timeout=30)
    h = dict(headers or {})
    if token:
        h["Authorization"] = f"Bearer {token}"
    conn.request(method, path, headers=h)
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, body


def audit(srv, call_id: str) -> list[dict]:
    status, _, body = get(srv, f"/v1/audit/audio?call_id={call_id}&limit=1000", ADMIN)
    assert status == 200, body
    return json.loads(body)["entries"]


def ticket_for(srv, call_id: str, token: str) -> tuple[int, dict]:
    status, _, body = get(srv, f"/v1/calls/{call_id}/playback-ticket", token, method="POST")
    return status, json.loads(body)


def test_range_requests(server):
    """Whole file (200, Accept-Ranges), a range, a suffix and an open range (206 with Content-Range and exactly
    those bytes), a range past the end (416, not logged), each served audio response logged once."""
    status, h, whole = get(server, "/v1/calls/scored-1/playback", QA)
    assert status == 200 and h["accept-ranges"] == "bytes" and h["content-type"] == "audio/flac"
    assert whole == server.recording.read_bytes()
    size = len(whole)
    for asked, first, last in (("bytes=0-99", 0, 99), ("bytes=1000-", 1000, size - 1), ("bytes=-500", size - 500, size - 1)):
        status, h, body = get(server, "/v1/calls/scored-1/playback", QA, {"Range": asked})
        assert status == 206, asked
        assert h["content-range"] == f"bytes {first}-{last}/{size}"
        assert body == whole[first : last + 1]
    status, h, _ = get(server, "/v1/calls/scored-1/playback", QA, {"Range": f"bytes={size}-{size + 10}"})
    assert status == 416 and h["content-range"] == f"bytes */{size}"
    log = audit(server, "scored-1")
    assert [(e["status"], e["byte_range"], e["bytes"]) for e in reversed(log)] == [
        (200, None, size), (206, "bytes=0-99", 100), (206, "bytes=1000-", size - 1000), (206, "bytes=-500", 500)]
    assert {e["principal"] for e in log} == {"qa:quinn"} and {e["kind"] for e in log} == {"stereo"}


def wav(body: bytes) -> tuple[np.ndarray, int]:
    data, rate = sf.read(io.BytesIO(body), dtype="int16", always_2d=True)
    return data, rate


def test_renditions(server):
    """Kept audio: stereo is customer left, agent right; one speaker is that speaker's kept file.  A scored
    recording with customer_channel 1: stereo is the file as it is, the customer is its second channel."""
    kept = {r: sf.read(str(next((server.services.audio_dir / "kept-1").glob(f"{r}-*.wav"))), dtype="int16")[0]
            for r in ("customer", "agent")}
    status, _, body = get(server, "/v1/calls/kept-1/playback?kind=stereo", SUP)
    assert status == 200
    data, rate = wav(body)
    assert rate == 16000 and data.shape[1] == 2
    assert np.array_equal(data[:, 0], kept["customer"]) and np.array_equal(data[:, 1], kept["agent"])
    status, _, body = get(server, "/v1/calls/kept-1/playback?kind=agent", SUP)
    assert status == 200 and np.array_equal(wav(body)[0][:, 0], kept["agent"])
    original, rate = sf.read(str(server.recording), dtype="int16", always_2d=True)
    status, h, body = get(server, "/v1/calls/scored-1/playback?kind=customer", QA)
    assert status == 200 and h["content-type"] == "audio/wav"
    data, got_rate = wav(body)
    assert got_rate == rate and np.array_equal(data[:, 0], original[:, 1])
    status, body = ticket_for(server, "kept-1", SUP)
    assert status == 200 and body["source"] == "kept" and body["kinds"] == ["stereo", "customer", "agent"]


def test_who_may_play(server):
    """Agents play only their own calls (another agent's call and an unknown id: 403, the same answer); other
    readers get 404 for an unknown call and for a call without audio; a live call is 409; none of it is logged.
    A ticket plays only its call, and only with it; the access log is for admins only."""
    before = {c: len(audit(server, c)) for c in ("kept-1", "mute-1", "live-1", "nope")}
    assert get(server, "/v1/calls/kept-1/playback", A2)[0] == 403
    assert ticket_for(server, "kept-1", A2)[0] == 403
    assert get(server, "/v1/calls/nope/playback", A2)[0] == 403
    assert get(server, "/v1/calls/nope/playback", SUP)[0] == 404
    assert get(server, "/v1/calls/mute-1/playback", A1)[0] == 404
    assert get(server, "/v1/calls/live-1/playback", A1)[0] == 409
    assert get(server, "/v1/calls/kept-1/playback")[0] == 401
    assert get(server, "/v1/calls/kept-1/playback?kind=agent", A1)[0] == 200  # a1's own call
    assert get(server, "/v1/audit/audio", SUP)[0] == 403 and get(server, "/v1/audit/audio", QA)[0] == 403
    status, t = ticket_for(server, "kept-1", A1)
    assert status == 200
    q = urllib.parse.urlencode({"kind": "customer", "ticket": t["ticket"]})
    for _ in range(3):  # an <audio> element asks many times with one ticket
        assert get(server, f"/v1/calls/kept-1/playback?{q}", headers={"Range": "bytes=0-"})[0] == 206
    assert get(server, f"/v1/calls/mute-1/playback?{q}")[0] == 401  # a ticket for kept-1 only
    after = {c: len(audit(server, c)) for c in before}
    assert after == {**before, "kept-1": before["kept-1"] + 4}
    newest = audit(server, "kept-1")[:4]
    assert {(e["principal"], e["role"]) for e in newest} == {("agent:a1", "agent")}
    assert [e["kind"] for e in newest] == ["customer"] * 3 + ["agent"]


def test_access_log_pages(server):
    """The log is paged newest first, with its total."""
    for _ in range(3):
        assert get(server, "/v1/calls/kept-1/playback?kind=customer", ADMIN, {"Range": "bytes=0-9"})[0] == 206
    status, _, body = get(server, "/v1/audit/audio?limit=2", ADMIN)
    first = json.loads(body)
    status2, _, body2 = get(server, "/v1/audit/audio?limit=2&offset=2", ADMIN)
    second = json.loads(body2)
    assert status == status2 == 200 and first["total"] == second["total"] >= 3
    entries = first["entries"] + second["entries"]
    times = [e["at"] for e in entries]
    assert times == sorted(times, reverse=True) and len({e["id"] for e in entries}) == 4
    assert first["entries"][0]["principal"] == "admin" and first["entries"][0]["bytes"] == 10
