"""Whole calls through CallPipeline: composed from real emotional speech by
../shared/tools/make_calls.py (steady / escalate calls, English and Mandarin,
16 kHz and 8 kHz telephony), graded with the shipped models."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

from calltone.events import INDEX_BANDS
from calltone.pipeline import PipelineOptions, run_recording
from calltone.speech.audio import load_recording
from calltone.summary import summarize

from .conftest import EMOTION_SPEECH, MAKE_CALLS, require


@pytest.fixture(scope="module")
def calls(tmp_path_factory):
    """{(lang, telephony, kind): wav path} for steady and escalate calls."""
    out = {}
    for lang in ("en", "zh"):
        for tel in (False, True):
            d = tmp_path_factory.mktemp(f"calls-{lang}-{'tel' if tel else 'clean'}")
            args = [sys.executable, str(require(MAKE_CALLS)), str(EMOTION_SPEECH), str(d), "--calls", "2", "--lang", lang, "--seed", "21"]
            subprocess.run(args + (["--telephony"] if tel else []), check=True, capture_output=True)
            for wav in d.glob("*.wav"):
                truth = json.loads(wav.with_suffix(".json").read_text(encoding="utf-8"))
                out[(lang, tel, truth["kind"])] = (wav, truth)
    return out


def grade_call(runtime, wav, truth):
    rec = load_recording(wav)
    roles = {v: k for k, v in truth["channels"].items()}
    channels = {roles[i]: rec.channels[r] for i, r in enumerate(rec.roles)}
    return asyncio.run(run_recording(truth["call"], channels, runtime, PipelineOptions(language="auto")))


CASES = [(lang, tel) for lang in ("en", "zh") for tel in (False, True)]


@pytest.mark.parametrize("lang,tel", CASES, ids=[f"{l}-{'tel' if t else 'clean'}" for l, t in CASES])
def test_steady_call_raises_no_alert(runtime, calls, lang, tel):
    wav, truth = calls[(lang, tel, "steady")]
    events = grade_call(runtime, wav, truth)
    updates = [e for e in events if e.type == "emotion.update"]
    assert updates, "no emotion updates for the customer"
    assert all(e.channel == "customer" for e in updates), "the agent is graded only when opted in"
    assert [e for e in events if e.type == "escalation.raised"] == []
    assert all(in_band(e) for e in updates), "an update's index lies in its grade's band"


def in_band(update) -> bool:
    lo, hi = INDEX_BANDS[update.grade]
    return lo <= update.index <= hi and lo <= round(update.index) <= hi


def in_phase(t: float, truth: dict, grade: str) -> bool:
    return any(p["start"] <= t <= p["end"] for p in truth["phases"] if p["grade"] == grade)


@pytest.mark.parametrize("lang,tel", CASES, ids=[f"{l}-{'tel' if t else 'clean'}" for l, t in CASES])
def test_escalate_call_alerts_after_anger_onset(runtime, calls, lang, tel):
    wav, truth = calls[(lang, tel, "escalate")]
    events = grade_call(runtime, wav, truth)
    onset = truth["escalation_onset_s"]
    alerts = [e for e in events if e.type == "escalation.raised"]
    assert alerts, "no escalation alert"
    assert all(a.t >= onset for a in alerts), f"alert before the anger onset at {onset} s: {[a.t for a in alerts]}"
    first = alerts[0]
    assert first.channel == "customer" and first.reason and first.evidence
    assert {a.reason_code for a in alerts} <= {"angry_confirmed", "phrase"}  # the rules on by default
    print(f"{lang} {'tel' if tel else 'clean'}: alert {first.t - onset:.1f} s after onset ({first.reason})")
    updates = [e for e in events if e.type == "emotion.update"]
    assert all(in_band(e) for e in updates), "an update's index lies in its grade's band"
    angry = [e for e in updates if e.grade == "angry"]
    assert angry and all(e.cues for e in angry), "angry grades must say which cues drove them"
    # the angry phase reads angry: each whole angry utterance is graded on its own (no dwell, no carry-over)
    in_anger = [e for e in updates if in_phase(e.t, truth, "angry")]
    share = sum(e.grade == "angry" for e in in_anger) / max(1, len(in_anger))
    print(f"  angry phase: {share:.0%} of {len(in_anger)} updates read angry; calm phase:",
          sorted({e.grade for e in updates if in_phase(e.t, truth, "calm")}))
    assert share >= 0.5, f"the angry phase reads angry in {share:.0%} of its updates"
    guidance = [e for e in events if e.type == "guidance" and e.card.grade == "angry"]
    assert guidance and guidance[0].card.language == lang
    summary = summarize(events, 0.0)
    assert summary.grades["customer"].peak_grade == "angry" and summary.escalations >= 1
