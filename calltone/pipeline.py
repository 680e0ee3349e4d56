"""CallPipeline: the one code path from call audio to events, live and batch.

A live call pushes each websocket frame as it arrives; a recording is pushed in
blocks as fast as the workers take it.  Either way the pipeline runs, per channel,
VAD -> transcription (shared ASR worker) -> emotion (shared CPU pool) and hands
typed events (``calltone.events``) to ``emit`` with call-relative times.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Callable

import numpy as np
from pydantic import BaseModel, Field

from calltone.emotion.channel import EmotionChannel
from calltone.events import CallEnded, CallStarted, Event, TranscriptFinal
from calltone.runtime import Runtime
from calltone.speech.streaming import CallLanguage, ChannelTranscriber
from calltone.speech.vad import StreamingVad

SAMPLE_RATE = 16000


class PipelineOptions(BaseModel):
    language: str = Field("auto", description="zh, en or auto (detected once, then fixed)")
    roles: list[str] = Field(default_factory=lambda: ["customer", "agent"])
    transcribe: bool = True
    partials: bool = True
    emotion: bool = True
    beam_size: int | None = None
    agent_id: str | None = None
    metadata: dict = Field(default_factory=dict)
    batch: bool = Field(False, description="a recording scored offline: no partial decodes, background ASR priority "
                                           "(voice graded at the same call times as live; see speech/streaming.py)")


@dataclass
class ChannelState:
    role: str
    transcriber: ChannelTranscriber
    emotion: EmotionChannel | None = None
    samples: int = 0
    last_tick: float = 0.0


class CallPipeline:
    """One call: push 16 kHz audio per role, receive events through ``emit``."""

    def __init__(self, call_id: str, runtime: Runtime, options: PipelineOptions, emit: Callable[[Event], None]) -> None:
        self.call_id = call_id
        self.runtime = runtime
        self.options = options
        self._emit = emit
        self.language = CallLanguage(options.language if runtime.asr.engine.multilingual else "en")
        s = runtime.settings
        self.channels: dict[str, ChannelState] = {}
        for role in options.roles:
            vad = StreamingVad(s.vad, runtime.vad_model)
            emotion = None
            if options.emotion and runtime.emotion.scores(role):
                emotion = EmotionChannel(call_id, role, runtime.emotion, runtime.cpu, self.emit, lambda: self.language.current)
            tr = ChannelTranscriber(call_id, role, runtime.asr, runtime.cpu, vad, self.language, s.asr, self.emit,
                                    partials=options.partials and role in s.asr.partial_roles, beam_size=options.beam_size,
                                    transcribe=options.transcribe, listener=emotion.score_voice if emotion else None,
                                    batch=options.batch)
            self.channels[role] = ChannelState(role, tr, emotion)
        self._started = False

    def emit(self, event: Event) -> None:
        if isinstance(event, TranscriptFinal):
            ch = self.channels.get(event.channel)
            if ch is not None and ch.emotion is not None:
                ch.emotion.on_final(event)  # text cues before the utterance's voice score
        self._emit(event)

    def start(self) -> None:
        self._started = True
        self.emit(CallStarted(call_id=self.call_id, t=0.0, channels={r: i for i, r in enumerate(self.options.roles)},
                              language=self.options.language, agent_id=self.options.agent_id, metadata=self.options.metadata))

    def set_language(self, language: str) -> None:
        """The producer says the call's language changed (zh, en, or auto to detect it again)."""
        if self.runtime.asr.engine.multilingual:
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
        return {
            "duration_s": round(self.duration_s, 3),
            "language": self.language.current or self.options.language,
            "talk_s": {r: round(sum(s.duration for s in c.transcriber.segments), 3) for r, c in self.channels.items()},
            "emotion": {r: c.emotion.summary() for r, c in self.channels.items() if c.emotion is not None},
        }


async def feed_recording(pipe: CallPipeline, channels: dict[str, np.ndarray], block_s: float = 0.5,
                         realtime: float = 0.0, progress: Callable[[float], None] | None = None,
                         hold_back: bool = False) -> None:
    """Push a whole recording (16 kHz per role) through ``pipe`` and finish the call.

    ``realtime`` = 0 feeds as fast as the workers take it.  A live-mode pipeline then waits
    for each block's partial work, so that the result is the same as if the call were live;
    a batch-mode pipeline (``PipelineOptions.batch``) needs no waiting.  1.0 paces blocks
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
            if not pipe.options.batch:
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
