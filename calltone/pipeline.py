"""CallPipeline: the one code path from call audio to events, live and batch.

A live call pushes each websocket frame as it arrives; a recording is pushed in
blocks as fast as the workers take it.  Either way the pipeline runs, per channel,
VAD -> transcription (shared ASR worker) -> emotion (shared CPU pool) and hands
typed events (``calltone.events``) to ``emit`` with call-relative times.

Each channel's transcriber hands the pipeline typed items (``calltone.speech.utterance``):
the speech so far goes to the speaker's emotion channel, then its partial (if any) is
published; a finished utterance goes to the emotion channel (its text cues at once, its
voice score scheduled in the CPU pool, what it said travelling with that score), then its
``transcript.final`` is published, so the final never waits for the voice score.  How
speech is decoded (live or a recording) is one :class:`~calltone.speech.decoding.DecodePolicy`
chosen for the whole call (``PipelineOptions.decode``).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Callable

import numpy as np
from pydantic import BaseModel, Field

from calltone.emotion.channel import EmotionChannel
from calltone.events import CallEnded, CallStarted, Event
from calltone.runtime import Runtime
from calltone.speech.audio import SAMPLE_RATE
from calltone.speech.decoding import LIVE, DecodePolicy
from calltone.speech.streaming import ALL_PARTIALS, CallLanguage, ChannelTranscriber, PartialGate
from calltone.speech.utterance import Heard, Utterance
from calltone.speech.vad import StreamingVad


class PipelineOptions(BaseModel):
    language: str = Field("auto", description="zh, en or auto (detected once, then fixed)")
    roles: list[str] = Field(default_factory=lambda: ["customer", "agent"])
    transcribe: bool = True
    emotion: bool = True
    beam_size: int | None = None
    agent_id: str | None = None
    metadata: dict = Field(default_factory=dict)
    decode: DecodePolicy = Field(LIVE, description="how speech is decoded: LIVE (LIVE.without_partials() for a producer "
                                                   "that wants none) or RECORDING (a file scored offline); "
                                                   "see speech/decoding.py")


@dataclass
class ChannelState:
    role: str
    transcriber: ChannelTranscriber
    emotion: EmotionChannel | None = None
    samples: int = 0
    last_tick: float = 0.0


class CallPipeline:
    """One call: push 16 kHz audio per role, receive events through ``emit``; ``partial_gate`` may shed its
    partial decodes under load (a live call: the server's admission control)."""

    def __init__(self, call_id: str, runtime: Runtime, options: PipelineOptions, emit: Callable[[Event], None],
                 partial_gate: PartialGate = ALL_PARTIALS) -> None:
        self.call_id = call_id
        self.runtime = runtime
        self.options = options
        self.emit = emit
        self.language = CallLanguage(options.language if runtime.asr.multilingual else "en")
        s = runtime.settings
        self.channels: dict[str, ChannelState] = {}
        for role in options.roles:
            vad = StreamingVad(s.vad, runtime.vad_model)
            emotion = None
            if options.emotion and runtime.emotion.scores(role):
                emotion = EmotionChannel(call_id, role, runtime.emotion, runtime.cpu, self.emit, lambda: self.language.current)
            decode = options.decode if role in s.asr.partial_roles else options.decode.without_partials()
            tr = ChannelTranscriber(call_id, role, runtime.asr, runtime.cpu, vad, self.language, s.asr, self._hear,
                                    policy=decode, voice=emotion is not None, beam_size=options.beam_size,
                                    transcribe=options.transcribe, voice_views=s.emotion.score_speech_so_far,
                                    gate=partial_gate)
            self.channels[role] = ChannelState(role, tr, emotion)
        self._started = False

    def _hear(self, item: Heard) -> None:
        """Route what a channel heard: first to the speaker's emotion channel (an utterance's text cues, then its
        voice score, scheduled in the CPU pool), then its transcript out."""
        emotion = self.channels[item.channel].emotion
        if isinstance(item, Utterance):
            if emotion is not None:
                emotion.hear(item)
            if item.final is not None:
                self.emit(item.final)
            return
        if emotion is not None and self.runtime.settings.emotion.score_speech_so_far:
            emotion.hear_so_far(item)
        if item.partial is not None:
            self.emit(item.partial)

    def start(self) -> None:
        self._started = True
        self.emit(CallStarted(call_id=self.call_id, t=0.0, channels={r: i for i, r in enumerate(self.options.roles)},
                              language=self.options.language, agent_id=self.options.agent_id, metadata=self.options.metadata))

    def set_language(self, language: str) -> None:
        """The producer says the call's language changed (zh, en, or auto to detect it again)."""
        if self.runtime.asr.multilingual:
            self.language.requested = language  # shared with every channel's transcriber and emotion channel

    @property
    def duration_s(self) -> float:
        return max((c.samples for c in self.channels.values()), default=0) / SAMPLE_RATE

    async def push(self, audio: dict[str, np.ndarray]) -> None:
        """Add 16 kHz float32 audio for some or all roles (channels are processed concurrently)."""
        if not self._started:
            self.start()
        await asyncio.gather(*(self._push_channel(self.channels[role], x) for role, x in audio.items() if role in self.channels))

    async def _push_channel(self, ch: ChannelState, samples: np.ndarray) -> None:
        ch.samples += len(samples)
        await ch.transcriber.push(samples)
        now = ch.samples / SAMPLE_RATE
        if ch.emotion is not None and now - ch.last_tick >= 1.0:
            ch.last_tick = now
            ch.emotion.tick(now)  # clearing rules run while the speaker is silent too

    async def settle(self) -> None:
        """Wait for in-flight partial work (see ChannelTranscriber.settle)."""
        await asyncio.gather(*(c.transcriber.settle() for c in self.channels.values()))
        for c in self.channels.values():
            if c.emotion is not None:
                await c.emotion.drain()

    async def finish(self) -> None:
        """End of the call: finalise pending audio and emit ``call.ended``."""
        if not self._started:
            self.start()
        await asyncio.gather(*(c.transcriber.finish() for c in self.channels.values()))
        self.language.settle()
        for c in self.channels.values():
            if c.emotion is not None:
                await c.emotion.drain()
                c.emotion.close(self.duration_s)
        self.emit(CallEnded(call_id=self.call_id, t=round(self.duration_s, 3), summary=self.summary()))

    def speech(self) -> dict[str, list[tuple[float, float]]]:
        """Each role's speech as the VAD heard it (start, end seconds)."""
        return {r: [(s.start, s.end) for s in c.transcriber.segments] for r, c in self.channels.items()}

    def summary(self) -> dict:
        """What only the pipeline knows of the call: its length and language.  Whoever keeps the call's events
        completes it into the call summary (``calltone.summary.summarize`` with :meth:`speech`): the live call
        (``server/calls.py``) and the batch report (``calltone/batch/report.py``)."""
        return {"duration_s": round(self.duration_s, 3), "language": self.language.current or self.options.language}


async def feed_recording(pipe: CallPipeline, channels: dict[str, np.ndarray], block_s: float = 0.5,
                         realtime: float = 0.0, progress: Callable[[float], None] | None = None,
                         hold_back: bool = False) -> None:
    """Push a whole recording (16 kHz per role) through ``pipe`` and finish the call.

    ``realtime`` = 0 feeds as fast as the workers take it.  A live-policy pipeline then waits
    for each block's partial work, so that the result is the same as if the call were live;
    a pipeline whose voice views wait for their utterance's decode (``RECORDING``) needs no waiting.  1.0 paces blocks
    at real time.  ``progress`` gets the seconds of audio pushed so far.  ``hold_back`` (a batch
    pipeline sharing its process with live calls) keeps the feed at most two batches ahead of
    the ASR worker, so that its VAD and emotion work do not fill the CPU pool live calls use.
    """
    n = max(len(x) for x in channels.values())
    step = max(1, int(block_s * SAMPLE_RATE))
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    for i in range(0, n, step):
        await pipe.push({r: x[i : i + step] for r, x in channels.items() if i < len(x)})
        if realtime <= 0:
            if not pipe.options.decode.defer_views_to_final:
                await pipe.settle()
            elif hold_back:
                while pipe.runtime.asr.background_queued > 2 * pipe.runtime.asr.max_batch:
                    await asyncio.sleep(0.05)
        else:
            delay = t0 + (i + step) / SAMPLE_RATE / realtime - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
        if progress is not None:
            progress(min(n, i + step) / SAMPLE_RATE)
    await pipe.finish()


async def run_recording(call_id: str, channels: dict[str, np.ndarray], runtime: Runtime, options: PipelineOptions,
                        block_s: float = 0.5, realtime: float = 0.0,
                        on_event: Callable[[Event], None] | None = None) -> list[Event]:
    """Push a whole recording through a new CallPipeline (see :func:`feed_recording`); return its events."""
    events: list[Event] = []

    def collect(e: Event) -> None:
        events.append(e)
        if on_event is not None:
            on_event(e)

    options = options.model_copy(update={"roles": list(channels)})
    await feed_recording(CallPipeline(call_id, runtime, options, collect), channels, block_s, realtime)
    return events
