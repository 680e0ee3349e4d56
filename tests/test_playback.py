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
import soxr

from calltone.events import EmotionUpdate, Probs, TranscriptFinal
from calltone.server.app import ServerThread, create_app
from calltone.server.audiokeeper import AudioKeeper
from calltone.settings import ServerSettings, Settings

from .conftest import SPEECH, needs_shared
from .test_pages import new_page

pytestmark = needs_shared(SPEECH / "stereo_diarization.wav", SPEECH / "jfk.flac")

TOKENS = {"admin-token-00001": "admin", "super-token-0001": "supervisor:sam", "qa-token-0000001": "qa:quinn",
          "agent-a1-token-01": "agent:a1", "agent-a2-token-01": "agent:a2"}
ADMIN, SUP, QA, A1, A2 = TOKENS
REVIEW_LINES = [(0.3, 2.5, "And so my fellow Americans"), (3.0, 5.5, "ask not what your country can do for you"),
                (6.0, 8.0, "ask what you can do"), (8.5, 10.8, "for your country")]  # (start, end, text) of review-1


def seed_review(srv: ServerThread) -> None:
    """review-1: 11 s of real speech kept per speaker (AudioKeeper), four finals and an emotion update a second."""
    s = srv.services
    audio, rate = sf.read(str(SPEECH / "jfk.flac"), dtype="float32", always_2d=True)
    speech = soxr.resample(audio.mean(axis=1), rate, 16000).astype(np.float32)
    keeper = AudioKeeper(s.audio_dir / "review-1", ["customer", "agent"])
    keeper.write({"customer": speech, "agent": speech * 0.5})
    keeper.close()
    events = [TranscriptFinal(call_id="review-1", t=end, channel="customer", start=start, end=end, text=text, language="en")
              for start, end, text in REVIEW_LINES]
    events += [EmotionUpdate(call_id="review-1", t=float(k), channel="customer", grade="anxious" if k > 5 else "calm",
                             index=20.0 + 5 * k, probs=Probs(calm=0.5, anxious=0.3, angry=0.2)) for k in range(1, 11)]
    events.sort(key=lambda e: e.t)
    now = time.time()

    def write(r):
        r.upsert_call({"call_id": "review-1", "status": "ended", "agent_id": "a1", "started_at": now - 30,
                       "ended_at": now - 19, "duration_s": 11.0, "metadata": {}, "roles": ["customer", "agent"]})
        for seq, ev in enumerate(events, 1):
            ev.seq = seq
            r.append_event("review-1", seq, ev.type, ev.t, now, ev.model_dump_json())

    srv.call(lambda: s.store.write(write))


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
        seed_review(srv)
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


PLAYER_READY = "() => { const a = document.querySelector('[data-testid=player]'); return a && a.readyState >= 1; }"


def heard(page) -> tuple[float, list[int], float]:
    """The audio's position, the transcript lines highlighted, and the playhead's time on the chart."""
    return page.evaluate("""() => [document.querySelector('[data-testid=player]').currentTime,
        [...document.querySelectorAll('[data-testid=qa-transcript] .line')].flatMap((l, i) => l.classList.contains('playing') ? [i] : []),
        +document.querySelector('[data-testid=playhead]').dataset.t]""")


def test_review_playback_seeks_and_follows(server, browser):
    """On /qa a click on a transcript line seeks the audio to its start and highlights it, the playhead moves
    there; a click on the chart seeks to that time and highlights the line being heard; switching to one
    speaker keeps the place; the browser's range requests are in the access log as the QA user's."""
    before = len(audit(server, "review-1"))
    page = new_page(browser)
    page.goto(f"{server.http}/qa?call=review-1#token={QA}")
    page.wait_for_function(PLAYER_READY, timeout=20_000)
    lines = page.locator("[data-testid=qa-transcript] .line")
    assert lines.count() == len(REVIEW_LINES)
    lines.nth(2).click()
    page.wait_for_function("() => Math.abs(document.querySelector('[data-testid=player]').currentTime - 6.0) < 0.05")
    position, playing, playhead = heard(page)
    assert abs(position - 6.0) < 0.05 and playing == [2] and abs(playhead - 6.0) < 0.05
    box = page.locator("[data-testid=timeline] .u-over").bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.2, box["y"] + box["height"] / 2)
    page.wait_for_function("() => document.querySelector('[data-testid=player]').currentTime < 5.9")
    position, playing, playhead = heard(page)
    expected = max(i for i, (start, _, _) in enumerate(REVIEW_LINES) if start <= position + 0.05)
    assert abs(position - playhead) < 0.05 and playing == [expected]
    page.select_option("[data-testid=audio-kind]", "customer")
    page.wait_for_function("() => document.querySelector('[data-testid=player]').src.includes('kind=customer')")
    page.wait_for_function(PLAYER_READY)
    page.wait_for_function(f"() => Math.abs(document.querySelector('[data-testid=player]').currentTime - {position}) < 0.05")
    assert not page.errors, page.errors  # type: ignore[attr-defined]
    log = audit(server, "review-1")[: len(audit(server, "review-1")) - before]
    assert log and {e["principal"] for e in log} == {"qa:quinn"} and {e["kind"] for e in log} == {"stereo", "customer"}
    page.context.close()


def test_review_page_in_chinese_and_without_audio(server, browser):
    page = new_page(browser, locale="zh-CN")
    page.goto(f"{server.http}/qa?call=review-1#token={QA}")
    page.wait_for_function(PLAYER_READY, timeout=20_000)
    panel = page.locator("[data-testid=recording]").inner_text()
    assert "收听" in panel and "每次播放都会记入音频访问日志" in panel and "双方（立体声）" in panel
    page.goto(f"{server.http}/qa?call=mute-1")
    page.wait_for_function("() => document.querySelector('[data-testid=no-audio]')?.textContent.includes('此通话没有录音')",
                           timeout=20_000)
    assert page.locator("[data-testid=player]").count() == 0
    assert not page.errors, page.errors  # type: ignore[attr-defined]
    page.context.close()
