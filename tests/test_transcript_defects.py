"""Transcript defects found on real audio (issue 16, item 8), with the real Whisper base model.

* A Mandarin final ended in U+FFFD: Whisper's byte-level BPE spreads a Chinese character over
  several tokens, and a token list cut by the length budget stopped inside one.
* An agent line came out twice, 7 s apart, in real time: the agent's next utterance, decoded
  conditioned on the agent's previous final, was decoded as (the tail of) that final.
"""

from __future__ import annotations

import asyncio
import csv
import subprocess
import sys
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from calltone.events import TranscriptFinal
from calltone.pipeline import PipelineOptions, run_recording
from calltone.speech.asr import DecodeOptions, DecodeRequest, repeats_prompt
from calltone.speech.audio import SAMPLE_RATE, load_recording
from calltone.speech.decoding import LIVE
from calltone.speech.packing import pack, unpack
from calltone.speech.streaming import CallLanguage, ChannelTranscriber
from calltone.speech.utterance import Heard, Utterance
from calltone.speech.vad import SpeechSegment, StreamingVad

from .conftest import EMOTION_SPEECH, MAKE_CALLS, REPO, require

REPLACEMENT = "\ufffd"


def _casia(text: str) -> np.ndarray:
    rows = csv.DictReader(open(require(EMOTION_SPEECH / "manifest.csv"), encoding="utf-8"))
    row = next(r for r in rows if r["corpus"] == "casia" and r["emotion"] == "neutral" and r["text"] == text)
    return sf.read(EMOTION_SPEECH / row["path"], dtype="float32")[0]


def _segments(runtime, audio: np.ndarray) -> list[SpeechSegment]:
    vad = StreamingVad(runtime.settings.vad, runtime.vad_model)
    return vad.feed(audio) + vad.flush()


def _segment_at(runtime, audio: np.ndarray, t: float) -> np.ndarray:
    seg = next(s for s in _segments(runtime, audio) if s.start <= t <= s.end)
    return audio[int(seg.start * SAMPLE_RATE) : int(seg.end * SAMPLE_RATE)]


def _has_replacement(result) -> bool:
    return REPLACEMENT in result.text or any(REPLACEMENT in w.word for w in result.words)


def test_token_budget_never_ends_inside_a_character(engine):
    """Three CASIA sentences as one utterance (小宝逮老鼠, 农民盖起厂房, 银行拥有保安: 9 characters of
    them take 2 tokens), decoded with every output budget from 8 to 30 tokens: before the fix, 5 of
    these budgets stopped inside a character (小宝袋老\ufffd, ... 农民盖棋\ufffd)."""
    gap = np.zeros(int(0.4 * SAMPLE_RATE), np.float32)
    audio = np.concatenate([x for t in ("小宝逮老鼠。", "农民盖起厂房", "银行拥有保安") for x in (_casia(t), gap)])
    seconds = len(audio) / SAMPLE_RATE
    full = engine.decode([DecodeRequest(audio, "zh")])[0]
    assert len(full.text) >= 12 and not _has_replacement(full), full.text
    for extra in range(0, 24, 2):  # output budget: 8 + ceil(seconds * tokens_per_second) tokens
        result = engine.decode([DecodeRequest(audio, "zh")], DecodeOptions(tokens_per_second=extra / seconds))[0]
        assert not _has_replacement(result), (extra, result.text, [w.word for w in result.words])
        assert full.text.startswith(result.text), (extra, result.text, full.text)
        assert "".join(w.word for w in result.words).replace(" ", "") == result.text.replace(" ", "")


@pytest.fixture(scope="module")
def mandarin_call(tmp_path_factory) -> Path:
    """A composed 8 kHz Mandarin call (make_calls seed 5): its agent's 团结产生力量 (57.5 s) and
    国家改革企业 (62.6 s) share one packed decode in batch scoring."""
    out = tmp_path_factory.mktemp("zh-calls")
    subprocess.run([sys.executable, str(require(MAKE_CALLS)), str(require(EMOTION_SPEECH)), str(out), "--calls", "3",
                    "--telephony", "--lang", "zh", "--seed", "5"], check=True, capture_output=True, timeout=180)
    return out / "call002-recover.wav"


def test_packed_mandarin_decode_ends_on_a_whole_character(runtime, mandarin_call):
    """The packed decode of those two utterances ran into its token budget inside 体 and the agent's
    final read 国家改革体验国家改革体验国家改革体\ufffd; whole characters also let the per-utterance
    repeated-phrase guard see the loop."""
    agent = load_recording(mandarin_call).channels["agent"]
    parts = [_segment_at(runtime, agent, t) for t in (58.3, 63.4)]
    (p,) = pack([DecodeRequest(a, "zh", word_timestamps=False, packable=True) for a in parts], max_speech_s=5.0)
    result = runtime.asr.submit("test/packed-zh", p.request, final=True).result(timeout=120)
    assert not _has_replacement(result), result.text
    for part in unpack(p, result, [True, True]):
        assert not _has_replacement(part), part.text
        assert len(part.text) <= 8, part.text  # a 6-character sentence, not a loop of it


DEMO_EN = REPO / "samples" / "demo_en.wav"  # the agent: "I understand. I'm doing everything I can." (43.9 s),
# then "Of course. Please hold while I transfer you." (51.2 s)


def test_final_conditioned_on_previous_final_does_not_copy_it(runtime):
    """As in a live call: the agent's utterance at 51 s decoded with the agent's previous final as
    context.  Before the fix the decoder returned the tail of that final (I'm doing everything I can.)."""
    agent = load_recording(require(DEMO_EN)).channels["agent"]
    first, second = (_segment_at(runtime, agent, t) for t in (45.0, 52.5))
    previous = runtime.asr.submit("test/prompt", DecodeRequest(first, "en"), final=True).result(timeout=120).text
    assert repeats_prompt("I'm doing everything I can", previous), previous
    result = runtime.asr.submit("test/prompt", DecodeRequest(second, "en", previous_text=previous), final=True).result(timeout=120)
    alone = runtime.asr.submit("test/prompt", DecodeRequest(second, "en"), final=True).result(timeout=120)
    assert result.text and not repeats_prompt(result.text, previous), (previous, result.text)
    assert result.text == alone.text


def test_agent_line_not_transcribed_twice_when_streamed(runtime):
    """The demo call's agent channel streamed in 20 ms frames, paced (4x real time) so that, as live,
    each final is back before the next utterance ends and is its context.  Before the fix the
    agent's line at 51 s came out as the one at 44 s again."""
    agent = load_recording(require(DEMO_EN)).channels["agent"]
    events = asyncio.run(run_recording("defects", {"agent": agent}, runtime, PipelineOptions(language="en", emotion=False),
                                       block_s=0.02, realtime=4.0))
    finals = sorted((e for e in events if isinstance(e, TranscriptFinal)), key=lambda e: e.start)
    assert len(finals) >= 5 and any("everything" in f.text for f in finals), [f.text for f in finals]
    for before, after in zip(finals, finals[1:]):
        assert not repeats_prompt(after.text, before.text), (before.start, before.text, after.start, after.text)


class FailFirstFinal:
    """The runtime's real ASR worker, except that the first final decode fails, as a decoder error
    (out of memory, a broken model file) would."""

    def __init__(self, worker) -> None:
        self.worker = worker
        self.failed = False

    def submit(self, stream_id: str, request: DecodeRequest, final: bool, background: bool = False) -> Future:
        if final and not self.failed:
            self.failed = True
            broken: Future = Future()
            broken.set_exception(RuntimeError("decoder failed"))
            return broken
        return self.worker.submit(stream_id, request, final, background)


def _channel_finals(runtime, audio: np.ndarray, worker) -> list[TranscriptFinal]:
    heard: list[Heard] = []

    async def run() -> None:
        vad = StreamingVad(runtime.settings.vad, runtime.vad_model)
        tr = ChannelTranscriber("fail", "agent", worker, runtime.cpu, vad, CallLanguage("en"), runtime.settings.asr,
                                heard.append, policy=LIVE.without_partials())
        for i in range(0, len(audio), SAMPLE_RATE // 2):
            await tr.push(audio[i : i + SAMPLE_RATE // 2])
        await tr.finish()

    asyncio.run(run())
    return [h.final for h in heard if isinstance(h, Utterance) and h.final is not None]


def test_a_failed_decode_loses_only_its_own_utterance(runtime):
    """Each final waits for the one before it; a decode that fails must not take every later final with it."""
    agent = load_recording(require(DEMO_EN)).channels["agent"]
    clean = _channel_finals(runtime, agent, runtime.asr)
    broken = _channel_finals(runtime, agent, FailFirstFinal(runtime.asr))
    assert len(clean) >= 4
    # every later utterance still has its final (its text may differ a little: its context is gone)
    assert [f.start for f in broken] == [f.start for f in clean[1:]] and all(f.text for f in broken)
