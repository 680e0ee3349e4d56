"""Incremental transcription of one channel.

Commit policy (see docs/asr.md for the measurements behind it): an utterance is
*final* when the VAD sees ``min_silence_ms`` of silence after it (or it reaches
``max_utterance_s``); it is then decoded once, in a short encoder window, with word
timings.  While someone is speaking, the audio of the utterance so far is decoded
every ``partial_interval_s`` as a *partial* hypothesis, which is shown in place and
replaced by the final.  Partials are best effort (the ASR worker may coalesce or
skip them under load, and a :class:`PartialGate` may shed them before they are queued);
finals are never dropped and come out in order.

What the transcriber hears goes to the pipeline as typed items, in order
(``calltone/speech/utterance.py``): the speech so far (about once a second, when the
channel's voice is graded or a partial is shown) and each finished utterance with its
final.  How it decodes is the pipeline's :class:`~calltone.speech.decoding.DecodePolicy`:
a recording (``RECORDING``) decodes no partials, and the once-a-second views of the
utterance so far are handed over at the same call times as live, but only once the
utterance's final decode is back, with embeddings cut from its encoder output
(``DecodeResult.embedding_between``).
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace
from typing import Callable, Protocol

import numpy as np

from calltone.events import TranscriptFinal, TranscriptPartial, Word
from calltone.settings import AsrSettings
from calltone.speech.asr import DecodeRequest, DecodeResult
from calltone.speech.audio import SAMPLE_RATE
from calltone.speech.decoding import LIVE, DecodePolicy
from calltone.speech.utterance import Heard, SpeechSoFar, Utterance
from calltone.speech.vad import SpeechSegment, StreamingVad
from calltone.speech.worker import AsrWorker

log = logging.getLogger("calltone.speech.streaming")


class AudioBuffer:
    """The recent audio of one channel, addressable by call time in seconds."""

    def __init__(self) -> None:
        self._chunks: list[np.ndarray] = []
        self._start = 0  # absolute sample index of the first kept sample
        self._length = 0  # samples kept

    @property
    def end_s(self) -> float:
        return (self._start + self._length) / SAMPLE_RATE

    def append(self, samples: np.ndarray) -> None:
        if len(samples):
            self._chunks.append(samples)
            self._length += len(samples)

    def slice(self, t0: float, t1: float) -> np.ndarray:
        a = max(0, int(round(t0 * SAMPLE_RATE)) - self._start)
        b = max(a, min(self._length, int(round(t1 * SAMPLE_RATE)) - self._start))
        if len(self._chunks) > 1:
            self._chunks = [np.concatenate(self._chunks)]
        return self._chunks[0][a:b].copy() if self._chunks else np.zeros(0, np.float32)

    def trim_before(self, t: float) -> None:
        drop = int(t * SAMPLE_RATE) - self._start
        if drop <= 0 or not self._chunks:
            return
        whole = np.concatenate(self._chunks) if len(self._chunks) > 1 else self._chunks[0]
        drop = min(drop, len(whole))
        self._chunks = [whole[drop:]]
        self._start += drop
        self._length -= drop


@dataclass
class CallLanguage:
    """A call's language: configured, or detected once from its first utterances and then fixed."""

    requested: str = "auto"
    detected: str | None = None
    _votes: dict[str, float] = field(default_factory=dict)  # language -> seconds of speech heard in it

    @property
    def current(self) -> str | None:
        return self.requested if self.requested != "auto" else self.detected

    def observe(self, result: DecodeResult, duration_s: float) -> None:
        if self.current is not None or not result.text:
            return
        self._votes[result.language] = self._votes.get(result.language, 0.0) + duration_s
        if sum(self._votes.values()) >= 2.0:
            self.settle()

    def settle(self) -> None:
        """Fix the language from what was heard so far (also at the end of a short call)."""
        if self.detected is None and self._votes:
            self.detected = max(self._votes, key=self._votes.get)


class PartialGate(Protocol):
    """Whether a partial decode may be queued now: the server's admission control sheds partials under load
    (``server/admission.py``); finals are never gated."""

    def allow_partial(self) -> bool: ...


class AllPartials:
    """No shedding (recordings, tools, tests)."""

    def allow_partial(self) -> bool:
        return True


ALL_PARTIALS = AllPartials()


class ChannelTranscriber:
    """VAD + partial/final decoding for one channel, by ``policy``; what it hears goes to ``hear``.

    ``voice``: the channel's voice is graded, so decodes also return the encoder embedding; with
    ``voice_views`` the speech so far is handed over about once a second too (for a voice score
    during the utterance).  With ``transcribe=False`` nothing is decoded, but the speech is still
    handed over (so the voice alone can be graded).  ``gate`` may shed partial decodes under load (the
    speech so far is then handed over undecoded, as when the previous partial is still in flight)."""

    def __init__(self, call_id: str, channel: str, worker: AsrWorker, cpu: Executor, vad: StreamingVad,
                 language: CallLanguage, settings: AsrSettings, hear: Callable[[Heard], None],
                 policy: DecodePolicy = LIVE, voice: bool = False, beam_size: int | None = None,
                 transcribe: bool = True, voice_views: bool = False, gate: PartialGate = ALL_PARTIALS) -> None:
        self.call_id, self.channel = call_id, channel
        self.worker, self.cpu, self.vad = worker, cpu, vad
        self.language, self.s, self.hear = language, settings, hear
        self.policy, self.voice, self.transcribe, self.gate = policy, voice, transcribe, gate
        self.voice_views = voice and voice_views
        self.views = policy.show_partials or self.voice_views  # the utterance so far is looked at about once a second
        self.word_timestamps = settings.word_timestamps and policy.word_timestamps
        self.beam_size = beam_size or settings.live_beam_size
        self.buffer = AudioBuffer()
        self.segments: list[SpeechSegment] = []
        self._utterance = 0  # id of the utterance in progress
        self._last_partial_t = -1e9
        self._partial_task: asyncio.Task | None = None
        self._final_chain: asyncio.Task | None = None
        self._stream_id = f"{call_id}/{channel}"
        self._previous_text = ""
        self._views: list[SpeechSoFar] = []  # policy.defer_views_to_final: the views awaiting the utterance's decode

    async def push(self, samples: np.ndarray) -> list[SpeechSegment]:
        """Add 16 kHz audio; schedule decodes; return the speech segments that ended."""
        self.buffer.append(samples)
        if self.vad.would_run_model(len(samples)):  # model work goes to the CPU pool, never the event loop
            ended = await asyncio.get_running_loop().run_in_executor(self.cpu, self.vad.feed, samples)
        else:
            ended = self.vad.feed(samples)  # less than one 32 ms chunk so far: only buffered
        for seg in ended:
            self._finalise(seg)
        if self.views:
            self._maybe_partial()
        return ended

    async def settle(self) -> None:
        """Wait for the partial decode in flight (recordings fed faster than real time use this
        so that they are graded exactly as the same audio would be live)."""
        if self._partial_task is not None and not self._partial_task.done():
            await asyncio.shield(self._partial_task)

    async def finish(self) -> list[SpeechSegment]:
        """End of audio: close the open utterance and wait for every final."""
        ended = self.vad.flush()
        for seg in ended:
            self._finalise(seg)
        if self._partial_task is not None:
            self._partial_task.cancel()
        if self._final_chain is not None:
            await self._final_chain
        return ended

    # -- finals ----------------------------------------------------------------------------
    def _finalise(self, seg: SpeechSegment) -> None:
        before = self.segments[-1].end if self.segments else 0.0
        self.segments.append(seg)
        self._utterance += 1
        audio = self.buffer.slice(seg.start, seg.end)
        p = self.policy
        packable = p.packable and not self.voice
        # the lead changes the encoder output the voice embedding is pooled from, and the classifier was trained
        # without it (on a held-out caller: 6 -> 4 of 7 angry utterances graded angry), so graded channels get none
        lead = 0.0 if packable or self.voice else max(0.0, min(self.s.decode_lead_s, seg.start - before))
        decoded = self.buffer.slice(seg.start - lead, seg.end) if lead else audio
        self.buffer.trim_before(seg.end - 1.0)
        views, self._views = self._views, []
        if not self.transcribe:
            for view in views:
                self.hear(view)
            self.hear(Utterance(self.channel, seg.start, seg.end, audio))
            return
        request = DecodeRequest(decoded, self.language.current, word_timestamps=self.word_timestamps, beam_size=self.beam_size,
                                previous_text=self._previous_text if p.condition_on_previous_text else "",
                                embed=self.voice, embed_frames=self.voice and bool(views),
                                packable=packable, language_group=self.call_id, lead_s=lead)
        future = asyncio.wrap_future(self.worker.submit(self._stream_id, request, final=True, background=p.background))
        previous = self._final_chain
        self._final_chain = asyncio.ensure_future(self._emit_final(seg, audio, future, previous, views))

    async def _emit_final(self, seg: SpeechSegment, audio: np.ndarray, future, previous: asyncio.Task | None,
                          views: list[SpeechSoFar]) -> None:
        """One utterance's final, after the one before it.  A decode that fails costs that utterance's text
        only: it is logged, the voice is still graded (without the embedding), and later finals go on."""
        try:
            result: DecodeResult | None = await future
        except Exception:  # noqa: BLE001 - e.g. the decoder ran out of memory
            log.exception("call %s, %s: decoding the utterance at %.2f-%.2f s failed; its text is lost",
                          self.call_id, self.channel, seg.start, seg.end)
            result = None
        if previous is not None:
            await previous  # keep finals in order (a chain task never raises: see _deliver_final)
        try:
            self._deliver_final(seg, audio, result, views)
        except Exception:  # noqa: BLE001 - a bad event must not stop the channel's later finals
            log.exception("call %s, %s: delivering the final at %.2f s failed", self.call_id, self.channel, seg.end)

    def _deliver_final(self, seg: SpeechSegment, audio: np.ndarray, result: DecodeResult | None,
                       views: list[SpeechSoFar]) -> None:
        """The deferred views (the ones a live call would have graded during the utterance), then the utterance."""
        final = None
        if result is not None:
            self.language.observe(result, seg.duration)
            if result.text:
                final = self._final_event(seg, result)
        for view in views:
            embedding = result.embedding_between(view.start - seg.start, view.end - seg.start) if result is not None else None
            self.hear(replace(view, embedding=embedding))
        if result is not None:
            result.embedding_frames = None
        self.hear(Utterance(self.channel, seg.start, seg.end, audio, result.embedding if result is not None else None, final))

    def _final_event(self, seg: SpeechSegment, result: DecodeResult) -> TranscriptFinal:
        self._previous_text = result.text
        words = [Word(word=w.word, start=round(seg.start + w.start, 3), end=round(min(seg.end, seg.start + w.end), 3),
                      probability=w.probability) for w in result.words]
        return TranscriptFinal(call_id=self.call_id, t=seg.end, channel=self.channel, start=seg.start, end=seg.end,
                               text=result.text, language=result.language, words=words,
                               avg_logprob=round(result.avg_logprob, 3))

    # -- partials --------------------------------------------------------------------------
    def _maybe_partial(self) -> None:
        """About once a second of speech: a partial decode, and the speech so far.  If the previous
        partial is still in flight (the worker is busy, or audio arrives faster than real time) the
        speech so far is handed over without waiting for a decode."""
        start = self.vad.speech_start
        now = self.vad.processed_s
        if start is None or now - start < 0.5:
            return
        if now - self._last_partial_t < self.s.partial_interval_s:
            return
        self._last_partial_t = now
        audio = self.buffer.slice(start, now)
        if self.policy.defer_views_to_final:
            if self.voice_views:
                self._views.append(SpeechSoFar(self.channel, start, now, audio))
            return
        busy = self._partial_task is not None and not self._partial_task.done()
        if not self.transcribe or busy or not self.policy.show_partials or not self.gate.allow_partial():
            if self.voice_views:  # the voice is graded without waiting for a decode
                self.hear(SpeechSoFar(self.channel, start, now, audio))
            return
        request = DecodeRequest(audio, self.language.current, word_timestamps=False, beam_size=1, embed=self.voice_views)
        future = asyncio.wrap_future(self.worker.submit(self._stream_id, request, final=False))
        self._partial_task = asyncio.ensure_future(self._emit_partial(self._utterance, start, now, audio, future))

    async def _emit_partial(self, utterance: int, start: float, end: float, audio: np.ndarray, future) -> None:
        result: DecodeResult | None = await future
        if utterance != self._utterance:
            return  # the final already came
        partial = None
        if result is not None and result.text:  # else skipped under load, or nothing heard
            partial = TranscriptPartial(call_id=self.call_id, t=end, channel=self.channel, start=start, end=end,
                                        text=result.text, language=result.language)
        if self.voice_views or partial is not None:  # a skipped partial still lets the voice be graded (no embedding)
            self.hear(SpeechSoFar(self.channel, start, end, audio, result.embedding if result is not None else None, partial))
