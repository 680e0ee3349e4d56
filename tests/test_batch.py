"""QA batch scoring end to end: ``calltone score`` on a folder of composed calls (16 kHz
and 8 kHz telephone, a mono mix, a corrupt file) with real models in worker processes;
the reports validate against the committed schemas, escalate calls alert after their
anger onset and steady calls do not, a re-run skips, the HTML renders in Chromium.
Then the same scoring as a server job (POST /v1/jobs) on a real server on loopback."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from calltone.batch.report import CallReport, report_json_schema
from calltone.events import valid_call_id
from calltone.settings import ServerSettings, Settings

from .conftest import EMOTION_SPEECH, MAKE_CALLS, REPO, require

CHROMIUM = Path("/usr/bin/chromium")
QA, AGENT = "qa-token-batch-01", "agent-token-batch"


def compose(out: Path, lang: str, calls: int, telephony: bool, mono: bool = False) -> Path:
    args = [sys.executable, str(require(MAKE_CALLS)), str(require(EMOTION_SPEECH)), str(out), "--calls", str(calls),
            "--lang", lang, "--seed", "21"]
    subprocess.run(args + (["--telephony"] if telephony else []) + (["--mono"] if mono else []),
                   check=True, capture_output=True, timeout=180)
    return out


@pytest.fixture(scope="module")
def recordings(tmp_path_factory) -> tuple[Path, dict[str, dict]]:
    """in/ holds the recordings; truth maps each name to its ground truth (make_calls' JSON)."""
    gen = tmp_path_factory.mktemp("gen")
    folder = tmp_path_factory.mktemp("in")
    truth: dict[str, dict] = {}
    sources = {
        "en-steady": compose(gen / "en", "en", 2, False) / "call000-steady",
        "en-escalate": gen / "en" / "call001-escalate",
        "zh-steady": compose(gen / "zh", "zh", 2, True) / "call000-steady",
        "zh-escalate": gen / "zh" / "call001-escalate",
    }
    for name, stem in sources.items():
        shutil.copy(stem.with_suffix(".wav"), folder / f"{name}.wav")
        truth[name] = json.loads(stem.with_suffix(".json").read_text())
    mono = compose(gen / "mono", "en", 1, True, mono=True) / "call000-steady"
    shutil.copy(mono.with_name(mono.name + ".mono.wav"), folder / "en-mono.wav")
    truth["en-mono"] = json.loads(mono.with_suffix(".json").read_text())
    sub = folder / "more"
    sub.mkdir()
    (sub / "broken.wav").write_bytes((folder / "zh-steady.wav").read_bytes()[:5000])  # a header promising more audio
    return folder, truth


def score(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "calltone.cli", "score", *args], capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def scored(recordings, tmp_path_factory):
    folder, truth = recordings
    out = tmp_path_factory.mktemp("reports")
    run = score(str(folder), "--out", str(out), "--workers", "2")
    return out, truth, run


def test_committed_report_schema_is_current():
    committed = json.loads((REPO / "docs" / "report.schema.json").read_text(encoding="utf-8"))
    assert committed == report_json_schema(), "run: calltone schema --report > docs/report.schema.json"


def test_bad_file_is_reported_and_the_rest_scored(scored):
    out, truth, run = scored
    assert run.returncode == 1, run.stderr  # a file failed
    assert "broken.wav" in run.stderr and "truncated" in run.stderr
    assert "6 recording(s) found" in run.stderr and "scored 5 call(s)" in run.stderr
    assert sorted(p.stem for p in out.glob("*.json")) == sorted(truth)
    index = (out / "index.html").read_text(encoding="utf-8")
    assert "broken.wav" in index and "truncated" in index


def test_reports_validate_against_the_schemas(scored):
    import jsonschema

    out, truth, _ = scored
    report_schema = json.loads((REPO / "docs" / "report.schema.json").read_text(encoding="utf-8"))
    event_schema = json.loads((REPO / "docs" / "events.schema.json").read_text(encoding="utf-8"))
    for name in truth:
        data = json.loads((out / f"{name}.json").read_text(encoding="utf-8"))
        jsonschema.validate(data, report_schema)
        for e in data["events"]:
            jsonschema.validate(e, event_schema)
        r = CallReport.model_validate(data)
        assert abs(r.duration_s - truth[name]["duration_s"]) < 0.1
        assert r.language == truth[name]["language"]
        assert r.segments and all(s.end > s.start for s in r.segments)
        m = r.summary
        assert m.speech_source == "vad" and 0 < m.talk_s["customer"] < r.duration_s
        assert m.speech_rate["customer"] and m.speech_rate_unit == ("characters/min" if r.language == "zh" else "words/min")
        assert abs(m.silence_s + sum(m.talk_s.values()) - m.overtalk_s - r.duration_s) < 0.5
        assert m.longest_silence_s <= m.silence_s
        assert abs(sum(m.grades["customer"].share.values()) - 1) < 0.01
        assert sum(m.grades["customer"].seconds.values()) == pytest.approx(m.talk_s["customer"], abs=0.01)
        assert r.timeline and {p.channel for p in r.timeline} == {"customer"}  # the agent is not graded by default
        if not r.mono:
            assert r.channels == {"customer": 0, "agent": 1}
            assert {s.channel for s in r.segments} == {"customer", "agent"}
            assert all(s.grade is None for s in r.segments if s.channel == "agent")
            ref = " ".join(s["text"] for s in truth[name]["segments"] if s["channel"] == "agent")
            assert _overlap(ref, " ".join(s.text for s in r.segments if s.channel == "agent"), r.language) > 0.6


def _overlap(ref: str, hyp: str, language: str) -> float:
    """Share of the reference's words (characters for Chinese) found in the transcript."""
    import re

    split = (lambda s: re.findall(r"[\u4e00-\u9fff]", s)) if language == "zh" else (lambda s: re.findall(r"[a-z']+", s.lower()))
    r, h = split(ref), set(split(hyp))
    return sum(w in h for w in r) / max(1, len(r))


def test_escalations_follow_anger_onset_and_steady_calls_have_none(scored):
    out, truth, _ = scored
    for name, t in truth.items():
        r = CallReport.model_validate_json((out / f"{name}.json").read_text(encoding="utf-8"))
        if t["escalation_expected"]:
            assert r.alerts, f"{name}: no alert"
            first = r.summary.first_escalation_t
            assert first == r.alerts[0].t and t["escalation_onset_s"] <= first <= t["escalation_onset_s"] + 20, (name, first)
            assert r.alerts[0].evidence and r.alerts[0].reason
            assert r.summary.peak_grade == "angry"
        else:
            assert not r.alerts, f"{name}: false alert {r.alerts}"
            assert r.summary.first_escalation_t is None


def test_mono_recording_is_one_speaker_and_says_so(scored):
    out, _, _ = scored
    r = CallReport.model_validate_json((out / "en-mono.json").read_text(encoding="utf-8"))
    assert r.mono and r.channels == {"customer": 0} and list(r.summary.talk_s) == ["customer"]
    assert any("mono" in n and "one speaker" in n for n in r.notes)
    assert "one speaker" in (out / "en-mono.html").read_text(encoding="utf-8")


def test_summary_csv_has_a_row_per_call(scored):
    out, truth, _ = scored
    rows = list(csv.DictReader((out / "summary.csv").open(encoding="utf-8")))
    assert sorted(r["name"] for r in rows) == sorted(truth)
    by = {r["name"]: r for r in rows}
    assert int(by["en-escalate"]["escalations"]) >= 1 and by["en-steady"]["escalations"] == "0"
    assert float(by["zh-escalate"]["duration_s"]) > 30 and by["zh-escalate"]["rate_unit"] == "characters/min"


def test_rerun_skips_scored_files_and_force_redoes(scored, recordings):
    out, truth, _ = scored
    folder, _ = recordings
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.json")}
    again = score(str(folder / "en-mono.wav"), str(folder / "zh-steady.wav"), "--out", str(out))
    assert again.returncode == 0, again.stderr
    assert "2 already scored" in again.stderr and "0 to score" in again.stderr
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.json")} == before
    assert len(list(csv.DictReader((out / "summary.csv").open(encoding="utf-8")))) == len(truth)  # the folder's reports
    forced = score(str(folder / "en-mono.wav"), "--out", str(out), "--force", "--workers", "1", "--mono")
    assert forced.returncode == 0 and "1 to score" in forced.stderr, forced.stderr
    assert (out / "en-mono.json").stat().st_mtime_ns > before["en-mono.json"]


def test_html_report_renders_offline_in_chromium(scored):
    from playwright.sync_api import sync_playwright

    out, truth, _ = scored
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} missing: `make test` installs Debian's chromium")
    shots = REPO / "test-output" / "batch"
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.route("http*://**", lambda route: (errors.append(f"network: {route.request.url}"), route.abort()))
        page.goto((out / "index.html").as_uri())
        assert page.locator("a[href='zh-escalate.html']").count() >= 1
        for name in ("zh-escalate", "en-mono"):
            page.goto((out / f"{name}.html").as_uri())
            page.wait_for_selector("#timeline.rendered canvas", timeout=15000)
            r = CallReport.model_validate_json((out / f"{name}.json").read_text(encoding="utf-8"))
            assert page.locator(".seg").count() == len(r.segments)
            if r.alerts:
                assert page.locator(".seg.grade-angry").count() >= 1
            page.screenshot(path=str(shots / f"{name}.png"), full_page=True)
        browser.close()
    assert not errors, errors


# --------------------------------------------------------------------------- the server job


@pytest.fixture(scope="module")
def server(tmp_path_factory, runtime):
    from calltone.server.app import ServerThread, create_app

    s = Settings()
    s.server = ServerSettings(data_dir=tmp_path_factory.mktemp("data"), tokens={QA: "qa:quinn", AGENT: "agent:a1"})
    with ServerThread(create_app(s, runtime), s) as srv:
        srv.wait_ready()
        yield srv


def http(method: str, url: str, token: str, body: bytes | None = None, ctype: str | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method, headers={"Authorization": f"Bearer {token}"})
    if ctype:
        req.add_header("Content-Type", ctype)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def multipart(files: list[Path], fields: dict[str, str]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = []
    for k, v in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode())
    for f in files:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{f.name}"\r\n'
                     f"Content-Type: audio/wav\r\n\r\n".encode() + f.read_bytes() + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_job_scores_uploads_in_the_server_and_calls_appear(server, recordings):
    folder, truth = recordings
    body, ctype = multipart([folder / "zh-escalate.wav", folder / "more" / "broken.wav"], {"language": "auto"})
    status, _ = http("POST", f"{server.http}/v1/jobs", AGENT, body, ctype)
    assert status == 403  # scoring is for the qa role
    status, raw = http("POST", f"{server.http}/v1/jobs", QA, json.dumps({"paths": ["/etc"]}).encode(), "application/json")
    assert status == 403 and b"recordings_dir" in raw  # server-side paths are off unless configured
    status, raw = http("POST", f"{server.http}/v1/jobs", QA, body, ctype)
    assert status == 202, raw
    job = json.loads(raw)
    assert job["status"] in ("queued", "running") and job["progress"]["files_total"] == 2
    seen_fractions = []
    deadline = time.time() + 300
    while time.time() < deadline:
        job = json.loads(http("GET", f"{server.http}/v1/jobs/{job['job_id']}", QA)[1])
        seen_fractions.append(job["progress"]["fraction"])
        if job["status"] in ("done", "failed"):
            break
        time.sleep(0.5)
    assert job["status"] == "done", job
    assert seen_fractions == sorted(seen_fractions) and seen_fractions[-1] == 1.0, seen_fractions  # only rises, to 1
    assert [e["file"] for e in job["errors"]] == ["broken.wav"] and "truncated" in job["errors"][0]["error"]
    (result,) = job["results"]
    assert result["file"] == "zh-escalate.wav" and result["escalations"] >= 1 and result["language"] == "zh"
    assert valid_call_id(result["call_id"])
    status, raw = http("GET", f"{server.http}{result['report_json']}", QA)
    report = CallReport.model_validate_json(raw)
    assert report.alerts[0].t >= truth["zh-escalate"]["escalation_onset_s"]
    assert report.source == "zh-escalate.wav"  # as uploaded, not the server's path
    status, raw = http("GET", f"{server.http}{job['index']}", QA)
    assert status == 200 and b"zh-escalate" in raw and b"broken.wav" in raw
    assert http("GET", f"{server.http}/v1/jobs/{job['job_id']}/reports/../../../calltone.db", QA)[0] == 404
    calls = json.loads(http("GET", f"{server.http}/v1/calls", QA)[1])["calls"]
    (call,) = [c for c in calls if c["call_id"] == result["call_id"]]
    assert call["status"] == "ended" and call["metadata"]["source"] == "batch" and call["escalations"] >= 1
    detail = json.loads(http("GET", f"{server.http}/v1/calls/{result['call_id']}", QA)[1])
    assert detail["transcript"] and detail["emotion"]
    alerts = [a for a in json.loads(http("GET", f"{server.http}/v1/alerts", QA)[1]) if a["call_id"] == result["call_id"]]
    assert len(alerts) == call["escalations"] == report.summary.escalations  # stored as a live call's alerts are
    assert {a["alert_id"] for a in alerts} == {a.alert_id for a in report.alerts}
    assert not (Path(server.services.settings.server.data_dir) / "jobs" / job["job_id"] / "input").exists()  # uploads not kept


# --------------------------------------------------------------------------- the decoding pieces batch mode adds


def test_cut_repeated_phrase_keeps_one_copy_of_a_hallucinated_repeat():
    from calltone.speech.asr import cut_repeated_phrase

    a = [11, 12, 13, 14, 15, 16, 17, 18]
    assert cut_repeated_phrase([9] + a + a + a[:5]) == [9] + a  # "... door. Dogs are sitting by the door. Dogs are sitting"
    assert cut_repeated_phrase(a + a[:1]) == a + a[:1]  # a short tail may be real speech
    assert cut_repeated_phrase([1, 2, 1, 2, 1, 2]) == [1, 2, 1, 2, 1, 2]  # "no no no": short periods are left alone
    assert cut_repeated_phrase(a) == a


def test_packed_decode_hands_each_utterance_its_words(runtime, recordings):
    """Two utterances joined by speech/packing.py, decoded once by the real model, split back."""
    import numpy as np

    from calltone.speech.asr import DecodeRequest
    from calltone.speech.audio import load_recording
    from calltone.speech.packing import pack, unpack

    folder, truth = recordings
    rec = load_recording(folder / "zh-escalate.wav")
    segs = [s for s in truth["zh-escalate"]["segments"] if s["channel"] == "agent"][:2]  # CASIA: made-up sentences
    audio = [rec.channels["agent"][int((s["start"] - 0.2) * 16000): int((s["end"] + 0.2) * 16000)] for s in segs]
    (p,) = pack([DecodeRequest(a, "zh", word_timestamps=False, packable=True) for a in audio], max_speech_s=8.0)
    assert len(p.offsets) == 2 and p.request.packed_parts == 2 and p.request.word_timestamps
    result = runtime.asr.submit("test/pack", p.request, final=True).result(timeout=120)
    parts = unpack(p, result, [True, False])
    singles = [runtime.asr.submit("test/one", DecodeRequest(a, "zh", word_timestamps=False), final=True).result(timeout=120)
               for a in audio]
    for part, single in zip(parts, singles):  # each utterance gets what it gets when decoded alone
        assert part.text and _overlap(single.text, part.text, "zh") >= 0.6, (single.text, part.text)
    assert parts[0].words and all(0 <= w.start <= w.end <= len(audio[0]) / 16000 + 1e-3 for w in parts[0].words)
    assert not parts[1].words  # word timings only where asked for
    assert np.isclose(p.offsets[1], len(audio[0]) / 16000 + 0.8, atol=1e-3)
