"""The one call summary (calltone/summary.py): each figure's definition (docs/events.md, "The call summary") on
hand-made events, then the invariant on a real call: the same recording scored as a job (stored call, API, JSON
report, HTML report, summary.csv, /qa page) and streamed live into the same server (call.ended, API, /qa page)
gives one summary, figure for figure, from one computation."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import math
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from calltone.emotion.escalation import reason_text
from calltone.events import parse_event
from calltone.summary import CallSummary, summarize

from .conftest import EMOTION_SPEECH, MAKE_CALLS, page_server, require

TOKENS = {"ingest-token-0001": "ingest", "qa-token-00000001": "qa:quinn", "supervisor-tok-01": "supervisor:sam"}
INGEST, QA, SUP = TOKENS


def ev(typ: str, t: float, **kw) -> dict:
    return {"type": typ, "call_id": "c", "t": t, **kw}


def update(t: float, grade: str, index: float, channel: str = "customer") -> dict:
    probs = {"calm": 0.2, "anxious": 0.3, "angry": 0.5}
    return ev("emotion.update", t, channel=channel, grade=grade, index=index, probs=probs, trend=0.0, cues=[])


def final(channel: str, start: float, end: float, text: str, language: str = "en") -> dict:
    return ev("transcript.final", end, channel=channel, start=start, end=end, text=text, final=True, language=language)


CALL = [
    ev("call.started", 0.0, channels={"customer": 0, "agent": 1}, language="auto"),
    final("customer", 0.0, 4.0, "my card was charged twice"),
    update(2.0, "calm", 10.0), update(3.0, "anxious", 55.0),
    final("agent", 3.5, 10.0, "I am sorry to hear that let me check it for you right now"),
    final("customer", 10.0, 14.0, "this is the third time I call"),
    update(12.0, "angry", 81.4),
    ev("escalation.raised", 12.5, channel="customer", alert_id="a1", reason="caller angry for 3 s",
       reason_code="angry_sustained", reason_figures={"angry_s": 3.0}),
    update(13.0, "angry", 78.0),
]
VAD = {"customer": [(0.0, 4.0), (10.0, 14.0)], "agent": [(3.5, 10.0)]}


def test_time_in_each_grade_is_the_speakers_own_speech_under_each_update():
    s = summarize(CALL, 20.0, VAD)
    g = s.grades["customer"]
    # calm holds to 3 s (and covers the speech before the first update), anxious 3-12 s, angry from 12 s;
    # the agent's turn (4-10 s) and the silence after 14 s are not the customer's speech
    assert g.seconds == {"calm": 3.0, "anxious": 3.0, "angry": 2.0}
    assert sum(g.seconds.values()) == s.talk_s["customer"] == 8.0
    assert g.share == {"calm": 0.375, "anxious": 0.375, "angry": 0.25}
    assert g.angry_s == 2.0 and g.reached_angry and g.updates == 4
    assert (g.peak_grade, g.peak_index, g.peak_t) == ("angry", 81.4, 12.0)
    assert "agent" not in s.grades  # not scored: no emotion updates
    assert (s.peak_grade, s.peak_index, s.peak_channel, s.peak_t) == ("angry", 81.4, "customer", 12.0)


def test_conversation_figures_from_the_speech_intervals():
    s = summarize(CALL, 20.0, VAD)
    assert s.speech_source == "vad" and s.duration_s == 20.0
    assert s.talk_s == {"customer": 8.0, "agent": 6.5}
    assert s.talk_share == {"customer": round(8 / 14.5, 3), "agent": round(6.5 / 14.5, 3)}
    assert s.overtalk_s == 0.5  # 3.5-4 s
    assert s.silence_s == 6.0 and s.longest_silence_s == 6.0 and s.silence_share == 0.3  # 14-20 s
    # the agent started at 3.5 s, 3.5 s into the customer's turn, which went on 0.5 s more: an interruption;
    # starting 0.1 s later, with only 0.4 s of the customer's turn left, is not one
    assert s.interruptions == {"customer": 0, "agent": 1}
    assert summarize(CALL, 20.0, {**VAD, "agent": [(3.6, 10.0)]}).interruptions == {"customer": 0, "agent": 0}
    assert (s.escalations, s.first_escalation_t, s.final_segments) == (1, 12.5, 3)


def test_finals_stand_in_for_the_vad_and_models_equal_dicts():
    by_finals = summarize(CALL, 20.0)
    assert by_finals.speech_source == "finals" and by_finals.talk_s == {"customer": 8.0, "agent": 6.5}
    models = [parse_event(e) for e in CALL]
    assert summarize(models, 20.0, VAD) == summarize(CALL, 20.0, VAD)
    assert summarize(CALL, 0.0).duration_s == 14.0  # at least as long as its last event
    silent = summarize([CALL[0]], 5.0)
    assert silent.talk_s == {"customer": 0.0, "agent": 0.0} and silent.talk_share == {} and silent.silence_s == 5.0
    assert silent.grades == {} and silent.peak_grade is None and silent.agent_speech_rate is None


def test_speech_rate_unit_follows_the_calls_language():
    en = summarize(CALL, 20.0, VAD)
    assert en.language == "en" and en.agent_speech_rate_unit == en.speech_rate_unit == "words/min"
    assert en.agent_speech_rate == round(14 / 6.5 * 60, 1)  # 14 words in 6.5 s of speech
    zh_call = [CALL[0], final("agent", 0.0, 6.0, "您好，请问有什么可以帮您", "zh")]
    zh = summarize(zh_call, 6.0)
    assert zh.language == "zh" and zh.agent_speech_rate_unit == "characters/min"
    assert zh.agent_speech_rate == round(11 / 6.0 * 60, 1)  # 11 Han characters; the comma is not one
    unknown = [CALL[0], {**final("agent", 0.0, 6.0, "您好，请问有什么可以帮您"), "language": None}]
    assert summarize(unknown, 6.0).agent_speech_rate_unit == "characters/min"  # the transcript decides
    assert summarize(zh_call, 6.0, language="en").agent_speech_rate_unit == "words/min"  # the pipeline's language first


def test_the_peak_is_the_highest_grade_then_the_highest_index_in_it():
    calls = [CALL[0], final("customer", 0.0, 9.0, "x"), update(1.0, "anxious", 92.0), update(5.0, "angry", 74.0),
             update(7.0, "angry", 77.5), update(8.0, "anxious", 95.0)]
    g = summarize(calls, 10.0).grades["customer"]
    assert (g.peak_grade, g.peak_index, g.peak_t) == ("angry", 77.5, 7.0)


# --------------------------------------------------------------------------- the invariant on a real call


@pytest.fixture(scope="module")
def recording(tmp_path_factory) -> Path:
    require(EMOTION_SPEECH)
    out = tmp_path_factory.mktemp("calls")
    subprocess.run([sys.executable, str(require(MAKE_CALLS)), str(EMOTION_SPEECH), str(out), "--calls", "2", "--telephony",
                    "--lang", "en", "--seed", "5"], check=True, capture_output=True, timeout=120)
    return require(next(out.glob("*-escalate.wav")))


@pytest.fixture(scope="module")
def server(tmp_path_factory, runtime):
    with page_server(tmp_path_factory, runtime, TOKENS) as srv:
        yield srv


def http(srv, path: str, token: str, body: bytes | None = None, ctype: str | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(srv.http + path, data=body, method="POST" if body is not None else "GET",
                                 headers={"Authorization": f"Bearer {token}", **({"Content-Type": ctype} if ctype else {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def score_as_job(srv, path: Path) -> tuple[dict, dict]:
    """POST /v1/jobs with the recording uploaded; the finished job and its one result."""
    boundary = uuid.uuid4().hex
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="language"\r\n\r\nen\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{path.name}"\r\n'
            "Content-Type: audio/wav\r\n\r\n").encode() + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    status, raw = http(srv, "/v1/jobs", QA, body, f"multipart/form-data; boundary={boundary}")
    assert status == 202, raw
    job = json.loads(raw)
    deadline = time.monotonic() + 600  # a bound for a stuck job, not a speed requirement
    while job["status"] not in ("done", "failed"):
        assert time.monotonic() < deadline, job
        time.sleep(0.5)
        job = json.loads(http(srv, f"/v1/jobs/{job['job_id']}", QA)[1])
    assert job["status"] == "done" and not job["errors"], job
    (result,) = job["results"]
    return job, result


def stream_live(srv, path: Path, call_id: str) -> dict:
    """The recording through the native ingest websocket, as fast as the server takes it; its call.ended."""
    from calltone.server.replay import read_audio, stream_call

    audio, rate = read_audio(path)
    run = lambda: asyncio.run(stream_call(srv.ws, call_id, audio, rate, speed=0.0, token=INGEST, language="en",  # noqa: E731
                                          agent_id="a1", partials=False))
    with ThreadPoolExecutor(1) as pool:  # a thread of its own: Playwright's sync API holds this thread's loop
        ended = pool.submit(run).result()
    assert ended is not None and ended["type"] == "call.ended"
    return ended


def clock(s: float) -> str:
    """fmtClock of the pages: m:ss, seconds rounded half up."""
    s = math.floor(s + 0.5)
    return f"{s // 60}:{s % 60:02d}"


def pct(x: float) -> str:
    return f"{math.floor(x * 100 + 0.5)}%"


def page_metrics(browser, srv, call_id: str, locale: str) -> dict[str, str]:
    """The /qa call page's metrics panel as label -> value, in the browser's language."""
    ctx = browser.new_context(locale=locale)
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{srv.http}/qa?call={call_id}#token={QA}")
    page.wait_for_selector("[data-testid=metrics] .metric", timeout=20_000)
    got = dict(page.eval_on_selector_all("[data-testid=metrics] .metric",
                                         "els => els.map(e => [e.querySelector('.k').innerText, e.querySelector('.v').innerText])"))
    got["shares"] = page.inner_text("[data-testid=shares]")
    assert not errors, errors
    ctx.close()
    return got


def expected_metrics(s: CallSummary, names: dict[str, str], words_per_min: str) -> list[str]:
    """The metric values the page shows for summary ``s`` (the panel's order, to the escalations)."""
    def by_role(d: dict, fmt) -> str:
        return " · ".join(f"{names[r]} {fmt(v)}" for r, v in d.items())

    assert s.agent_speech_rate is not None and s.agent_speech_rate_unit == "words/min"
    return [clock(s.duration_s), by_role(s.talk_s, clock), by_role(s.talk_share, pct),
            f"{clock(s.silence_s)} ({pct(s.silence_share)})", clock(s.longest_silence_s), clock(s.overtalk_s),
            by_role(s.interruptions, str), f"{math.floor(s.agent_speech_rate + 0.5)} {words_per_min}",
            str(s.final_segments), str(s.escalations)]


def test_job_report_api_page_and_live_stream_agree_on_the_summary(server, recording, browser):
    job, result = score_as_job(server, recording)
    report = json.loads(http(server, result["report_json"], QA)[1])
    stored = json.loads(http(server, f"/v1/calls/{result['call_id']}", QA)[1])
    scored = CallSummary.model_validate(stored["summary"])
    # the stored call, the JSON report and the report's call.ended are one summary (the job adds its end reason)
    assert scored.end_reason == "scored" and scored.speech_source == "vad" and not scored.partial
    assert scored == CallSummary.model_validate({**report["summary"], "end_reason": "scored"})
    ended_in_report = next(e for e in report["events"] if e["type"] == "call.ended")
    assert CallSummary.model_validate(ended_in_report["summary"]) == CallSummary.model_validate(report["summary"])
    assert report["source"] == recording.name and stored["metadata"]["file"] == recording.name
    # the alerts the summary counts are stored alert rows, as a live call's are
    alerts = [a for a in json.loads(http(server, "/v1/alerts?limit=1000", QA)[1]) if a["call_id"] == result["call_id"]]
    assert len(alerts) == scored.escalations == stored["escalations"] >= 1
    raised = [e for e in report["events"] if e["type"] == "escalation.raised"]  # reasons: a code and its figures
    assert [a["reason"] for a in alerts] == [reason_text(e["reason_code"], e["reason_figures"]) for e in raised]

    # summary.csv and the HTML report print the same figures
    name = recording.stem
    (row,) = [r for r in csv.DictReader(io.StringIO(http(server, job["summary_csv"], QA)[1].decode())) if r["name"] == name]
    assert float(row["customer_talk_s"]) == scored.talk_s["customer"] and float(row["silence_s"]) == scored.silence_s
    assert float(row["overtalk_s"]) == scored.overtalk_s and int(row["escalations"]) == scored.escalations
    assert float(row["angry_share"]) == scored.grades["customer"].share["angry"]
    assert float(row["peak_index"]) == scored.peak_index and row["peak_grade"] == scored.peak_grade
    html = http(server, result["report"], QA)[1].decode()
    cells = {th: re.findall(r"<td>(.*?)</td>", tds) for th, tds in re.findall(r"<tr><th>([^<]+)</th>(.*?)</tr>", html)}
    assert cells["Talk time"] == [f"{scored.talk_s[r]:.1f} s" for r in ("customer", "agent")]
    assert cells["Overtalk"] == [f"{scored.overtalk_s:.1f} s"] and cells["Escalations"] == [str(scored.escalations)]
    assert cells["Silence"][0].startswith(f"{scored.silence_s:.1f} s")

    # the same recording streamed live: call.ended, the API and the page carry one summary
    ended = stream_live(server, recording, "live-" + uuid.uuid4().hex[:8])
    live = CallSummary.model_validate(ended["summary"])
    live_api = json.loads(http(server, f"/v1/calls/{ended['call_id']}", QA)[1])
    assert CallSummary.model_validate(live_api["summary"]) == live
    assert live.speech_source == "vad" and live.end_reason == "stopped" and not live.partial

    # live and scored: the same audio, the same VAD, the same definitions.  The live path decodes and grades
    # each utterance as it arrives, so the grades may fall a little differently; the speech figures may not.
    print("scored:", scored.model_dump_json())
    print("live:  ", live.model_dump_json())
    assert live.duration_s == pytest.approx(scored.duration_s, abs=0.05)
    for r in ("customer", "agent"):
        assert live.talk_s[r] == pytest.approx(scored.talk_s[r], abs=0.3), r
    assert live.silence_s == pytest.approx(scored.silence_s, abs=0.5)
    assert live.overtalk_s == pytest.approx(scored.overtalk_s, abs=0.3)
    assert live.language == scored.language == "en" and live.speech_rate_unit == scored.speech_rate_unit == "words/min"
    assert live.peak_grade == scored.peak_grade == "angry" and live.escalations >= 1
    for s in (live, scored):  # the definition: a scored speaker's time in the grades is their speech
        assert sum(s.grades["customer"].seconds.values()) == pytest.approx(s.talk_s["customer"], abs=0.01)

    # the /qa page shows each call's summary, in English and in Chinese
    for summary, call_id in ((scored, result["call_id"]), (live, ended["call_id"])):
        for locale, names, talk_label, wpm in (("en-US", {"customer": "Customer", "agent": "Agent"}, "Talk time", "words/min"),
                                               ("zh-CN", {"customer": "客户", "agent": "坐席"}, "说话时长", "词/分钟")):
            shown = page_metrics(browser, server, call_id, locale)
            assert talk_label in shown
            assert list(shown.values())[:10] == expected_metrics(summary, names, wpm)
            g = summary.grades["customer"]
            assert f"{pct(g.share['angry'])} ({clock(g.seconds['angry'])})" in shown["shares"]


def test_a_cleared_alert_keeps_its_raised_reason_also_after_a_resume():
    """server/record.py: the cleared alert message carries the reason and evidence it was raised with."""
    from calltone.server.record import CallRecord

    raised = parse_event(CALL[7])
    raised.evidence = {"rule": "angry_sustained", "rules": [{"rule": "angry_sustained", "angry_s": 3.0}]}
    cleared = parse_event(ev("escalation.cleared", 40.0, channel="customer", alert_id="a1", reason="caller calm for 20 s",
                             reason_code="calm", reason_figures={"grade": "calm", "calm_s": 20.0}))
    live = CallRecord("c", "a1", {})
    for e in (raised, cleared):
        live.stamp(e, 1.0)
        got = live.record(e, 1.0).alert
    assert got is not None and (got.status, got.reason, got.evidence) == ("cleared", "caller angry for 3 s", raised.evidence)
    resumed = CallRecord("c", "a1", {}, seq=7, history=[json.loads(raised.model_dump_json())])
    resumed.stamp(cleared, 2.0)
    again = resumed.record(cleared, 2.0).alert
    assert again is not None and cleared.seq == 8
    assert (again.reason, again.evidence, again.t) == ("caller angry for 3 s", raised.evidence, raised.t)


def test_speech_heard_around_skipped_audio_is_split_at_the_skip():
    """A live call whose producer discarded audio upstream (server/calltime.py): a VAD segment across the skip is
    two spans of call time, and the skipped seconds are not talk."""
    from calltone.server.calltime import CallClock

    clock = CallClock(0.0)
    clock.skip(2.5, 1.5)
    clock.skip(2.5, 2.0)  # two skips at one instant: 3.5 s in all
    assert clock.spans(1.0, 4.0) == [(1.0, 2.5), (6.0, 7.5)] and clock.spans(0.0, 2.0) == [(0.0, 2.0)]
    s = summarize([CALL[0]], 9.0, {"customer": clock.spans(1.0, 4.0), "agent": clock.spans(4.0, 5.0)})
    assert s.talk_s == {"customer": 3.0, "agent": 1.0} and s.silence_s == 5.0  # 9 s of call time, 4 s heard as speech
