"""The typed seam between speech and emotion (issue 11, part 3), on a real call with the real models.

The demo call (samples/demo_en.wav) has a customer who says lexicon phrases ("the third time I've
called", "cancel my account").  It is scored live (fed 20 ms at a time, each block's partial work
settled, as tests/test_transcription.py does) and as a recording, with an escalation policy that
alerts on a phrase alone (the other rules off), so that the alert's evidence is that phrase's.  The
ASR worker is the real one, with a note kept of what each request asked for.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace

import numpy as np
import pytest

from calltone.emotion.escalation import EscalationConfig
from calltone.events import Event, EscalationRaised, TranscriptFinal, TranscriptPartial
from calltone.pipeline import CallPipeline, PipelineOptions, feed_recording
from calltone.server.native import NativeProtocol
from calltone.server.protocol import Limits
from calltone.speech.asr import DecodeRequest
from calltone.speech.audio import SAMPLE_RATE, load_recording
from calltone.speech.decoding import LIVE, RECORDING, DecodePolicy
from calltone.speech.streaming import CallLanguage, ChannelTranscriber
from calltone.speech.utterance import Heard, SpeechSoFar, Utterance
from calltone.speech.vad import StreamingVad

from .conftest import REPO, require

DEMO_EN = REPO / "samples" / "demo_en.wav"
PHRASE_CATEGORIES = ("escalation", "churn", "repeat_contact")
PHRASE_ONLY = f"""
[angry_sustained]
enabled = false
[index_rise]
enabled = false
[phrase]
categories = {list(PHRASE_CATEGORIES)}
while_grades = ["calm", "anxious", "angry"]
""".replace("'", '"')
MODES: dict[str, tuple[DecodePolicy, float]] = {  # policy, block seconds
    "live": (LIVE, 0.02),
    "live-no-partials": (LIVE.without_partials(), 0.02),
    "recording": (RECORDING, 0.5),
}


@dataclass(frozen=True)
class Submitted:
    stream: str
    request: DecodeRequest
    final: bool
    background: bool


class NotingWorker:
    """The real ASR worker; notes what each request asked for."""

    def __init__(self, worker) -> None:
        self.worker = worker
        self.submitted: list[Submitted] = []

    def submit(self, stream_id: str, request: DecodeRequest, final: bool, background: bool = False):
        self.submitted.append(Submitted(stream_id, request, final, background))
        return self.worker.submit(stream_id, request, final, background)

    def __getattr__(self, name: str):
        return getattr(self.worker, name)


@dataclass(frozen=True)
class Scored:
    policy: DecodePolicy
    channel_policies: dict[str, DecodePolicy]
    events: list[Event]
    submitted: list[Submitted]


def score(runtime, mode: str) -> Scored:
    policy, block_s = MODES[mode]
    worker = NotingWorker(runtime.asr)
    events: list[Event] = []
    pipe = CallPipeline(f"seam-{mode}", replace(runtime, asr=worker), PipelineOptions(language="en", decode=policy),
                        events.append)
    asyncio.run(feed_recording(pipe, dict(load_recording(require(DEMO_EN)).channels), block_s=block_s))
    return Scored(policy, {r: c.transcriber.policy for r, c in pipe.channels.items()}, events, worker.submitted)


@pytest.fixture(scope="module")
def phrase_runtime(runtime, tmp_path_factory):
    """The session's runtime (models, ASR worker, CPU pool) with an escalation policy that alerts on a phrase alone."""
    path = tmp_path_factory.mktemp("seam") / "escalation.toml"
    path.write_text(PHRASE_ONLY, encoding="utf-8")
    return replace(runtime, emotion=replace(runtime.emotion, escalation=EscalationConfig.load(path)))


@pytest.fixture(scope="module")
def scored(phrase_runtime):
    return {mode: score(phrase_runtime, mode) for mode in MODES}


def customer_finals(events: list[Event]) -> list[TranscriptFinal]:
    return [e for e in events if isinstance(e, TranscriptFinal) and e.channel == "customer"]


@pytest.mark.parametrize("mode", ["live", "recording"])
def test_phrase_evidence_carries_its_utterance_time(phrase_runtime, scored, mode):
    """The alert's phrase is stamped with the end of the utterance that said it; nothing in its evidence
    (phrases, words) is from before the utterance it came from or after the alert."""
    events = scored[mode].events
    finals = customer_finals(events)
    lexicon = phrase_runtime.emotion.lexicon
    with_phrase = [f for f in finals if any(m.category in PHRASE_CATEGORIES for m in lexicon.match(f.text))]
    assert len(with_phrase) >= 2, [f.text for f in finals]
    alert = next(e for e in events if isinstance(e, EscalationRaised))
    rule = alert.evidence["rules"][0]
    assert rule["rule"] == "phrase" and rule["phrase_t"] == with_phrase[0].end
    assert alert.t >= with_phrase[0].end
    ends = {f.end: f for f in finals}
    assert alert.evidence["phrases"]
    for p in alert.evidence["phrases"]:
        assert p["t"] in ends and p["text"].lower() in ends[p["t"]].text.lower() and p["t"] <= alert.t, p
    assert alert.evidence["words"]
    for w in alert.evidence["words"]:
        said = [f for f in finals if f.text == w["text"]]
        assert said and any(f.end <= w["t"] <= alert.t for f in said), (w, [(f.start, f.end) for f in said])


def test_the_final_is_out_before_its_voice_score(scored):
    """Live: an utterance's final is published when its voice score has only been scheduled, so every
    emotion update for the utterance's end comes after it."""
    events = scored["live"].events
    finals = {f.end: i for i, f in enumerate(events) if isinstance(f, TranscriptFinal) and f.channel == "customer"}
    at_ends = [(i, e) for i, e in enumerate(events) if e.type == "emotion.update" and e.t in finals]
    assert at_ends
    assert all(i > finals[e.t] for i, e in at_ends)


def test_a_recording_scores_the_same_every_time(phrase_runtime, scored):
    """Voice scores read and update the speaker baseline in the order the speech was heard, whatever the
    CPU pool's timing: the same recording gives the same events."""
    again = score(phrase_runtime, "recording").events

    def key(e: Event) -> tuple:
        return e.t, e.type, getattr(e, "channel", ""), e.model_dump_json()

    first = sorted(scored["recording"].events, key=key)
    assert [e.model_dump_json() for e in sorted(again, key=key)] == [e.model_dump_json() for e in first]
    assert sum(e.type == "emotion.update" for e in first) >= 5


@pytest.mark.parametrize("mode", list(MODES))
def test_the_pipeline_decodes_by_its_policy(scored, runtime, mode):
    s = scored[mode]
    assert s.channel_policies == {"customer": s.policy, "agent": s.policy.without_partials()}  # asr.partial_roles
    finals = [x for x in s.submitted if x.final]
    partials = [x for x in s.submitted if not x.final]
    customer = [x.request for x in finals if x.stream.endswith("/customer")]
    agent = [x.request for x in finals if x.stream.endswith("/agent")]
    assert customer and agent
    assert {x.background for x in finals} == {s.policy.background}
    assert {r.word_timestamps for r in customer + agent} == {s.policy.word_timestamps and runtime.settings.asr.word_timestamps}
    texts = {f.text for f in s.events if isinstance(f, TranscriptFinal)}
    prompts = {r.previous_text for r in customer + agent} - {""}
    assert prompts <= texts if s.policy.condition_on_previous_text else not prompts  # (fed this fast, a live prompt may be "")
    assert all(r.embed for r in customer) and not any(r.embed for r in agent)  # the customer's voice is graded
    assert {r.packable for r in agent} == {s.policy.packable} and not any(r.packable for r in customer)
    # the encoder rows come back only for views of the speech so far to cut embeddings from (recording, and only with
    # emotion.score_speech_so_far on: by default the voice is scored once per whole utterance)
    views_scored = s.policy.defer_views_to_final and runtime.settings.emotion.score_speech_so_far
    assert any(r.embed_frames for r in customer) == views_scored
    shown = [e for e in s.events if isinstance(e, TranscriptPartial)]
    assert bool(partials) == bool(shown) == s.policy.show_partials
    assert all(e.channel == "customer" for e in shown)
    words = [w for f in s.events if isinstance(f, TranscriptFinal) for w in f.words]
    assert bool(words) == s.policy.word_timestamps


def test_a_producer_without_partials_gets_the_live_policy_without_them():
    start = {"type": "start", "sample_rate": 8000, "encoding": "mulaw", "channels": 2}
    for partials, policy in ((True, LIVE), (False, LIVE.without_partials())):
        opened = NativeProtocol("c1", Limits(), 1 << 20).text({**start, "partials": partials})[0]
        assert opened.options.decode == policy
    assert RECORDING.without_partials() is RECORDING


def heard_by_transcriber(runtime, audio: np.ndarray, policy: DecodePolicy, block_s: float,
                         voice_views: bool) -> tuple[list[Heard], list]:
    heard: list[Heard] = []

    async def run() -> list:
        vad = StreamingVad(runtime.settings.vad, runtime.vad_model)
        tr = ChannelTranscriber("order", "customer", runtime.asr, runtime.cpu, vad, CallLanguage("en"),
                                runtime.settings.asr, heard.append, policy=policy, voice=True, voice_views=voice_views)
        step = int(block_s * SAMPLE_RATE)
        for i in range(0, len(audio), step):
            await tr.push(audio[i : i + step])
            await tr.settle()
        await tr.finish()
        return tr.segments

    return heard, asyncio.run(run())


@pytest.mark.parametrize("mode, voice_views", [("live", False), ("live", True), ("recording", False), ("recording", True)])
def test_the_items_arrive_in_order(runtime, mode, voice_views):
    """One Utterance per VAD segment, in order, each with its final; each view of an utterance (speech so
    far) comes before that utterance, the views at rising times.  A recording hands each utterance's views
    (only made when the speech so far is scored: emotion.score_speech_so_far) right before it, with embeddings
    cut from its decode."""
    policy, block_s = MODES[mode]
    heard, segments = heard_by_transcriber(runtime, load_recording(require(DEMO_EN)).channels["customer"], policy, block_s,
                                           voice_views)
    utterances = [h for h in heard if isinstance(h, Utterance)]
    views = [h for h in heard if isinstance(h, SpeechSoFar)]
    assert [(u.start, u.end) for u in utterances] == [(s.start, s.end) for s in segments] and len(utterances) >= 5
    for u in utterances:
        assert u.final is not None and (u.final.start, u.final.end, u.final.text) == (u.start, u.end, u.text) and u.text
        assert u.embedding is not None and len(u.audio) == pytest.approx((u.end - u.start) * SAMPLE_RATE, abs=2)
    if voice_views or policy.show_partials:
        assert len(views) >= len(utterances)
    else:
        assert views == []  # nothing looks at the speech so far: the voice is scored once per whole utterance
    assert [v.end for v in views] == sorted(v.end for v in views)
    for v in views:
        owner = next(u for u in utterances if v.start == pytest.approx(u.start, abs=1e-3))
        assert heard.index(v) < heard.index(owner) and v.end - v.start >= 0.5
        assert len(v.audio) == pytest.approx((v.end - v.start) * SAMPLE_RATE, abs=2)
    if mode == "recording":
        grouped = [h for u in utterances for h in [*(v for v in views if v.start == pytest.approx(u.start, abs=1e-3)), u]]
        assert [id(h) for h in heard] == [id(h) for h in grouped]
        assert all(v.embedding is not None and v.partial is None for v in views)
    else:
        shown = [v for v in views if v.partial is not None]
        assert shown and all((v.partial.start, v.partial.end) == (v.start, v.end) for v in shown)
        embedded = [v for v in views if v.embedding is not None]
        assert bool(embedded) == voice_views  # the partial decodes return a voice embedding only to be scored
