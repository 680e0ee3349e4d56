"""The ASR worker of a process: one queue, one or more decoders that own a Whisper model each.

All channels of all calls submit decode jobs here; the asyncio event loop never
runs model code.  Each decoder is a thread of this process driving either the model
itself (``asr.workers = 1``) or a process of its own (:mod:`calltone.speech.engine_process`;
one per core by default, so decoding neither waits for one CTranslate2 thread nor shares
this process's GIL).  Each decoder, when free, takes the waiting finals first (oldest
first), fills its batch with partials and decodes them together; while other decoders are
idle it takes only its share of what waits, so two finals go to two decoders at once
instead of one after the other.  Under overload it degrades in a defined way:

* a newer partial for a stream replaces the one still queued (coalescing);
* partials that waited longer than ``partial_lag_drop_s`` are skipped;
* finals are never dropped, only delayed; ``lag_s`` reports how far behind we are.

Recordings scored in the background (batch scoring, QA jobs in the server) submit
with ``background=True``: their decodes only fill the room live work leaves in a
batch, and while live calls are being decoded (any live request in the last
``LIVE_RECENT_S``) they run only in batches of their own of at most ``max_batch // 4``,
between live batches, on all decoders but one (with several), and are not packed, so that
a live final neither waits behind a long batch of someone's recordings nor shares its
batch with them.  A channel's short
utterances may share one decode (``speech/packing.py``, ``asr.batch_pack_s``).
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Protocol, Sequence

from calltone.speech.asr import SAMPLE_RATE, DecodeOptions, DecodeRequest, DecodeResult
from calltone.speech.packing import GAP_S, Pack, fits, looks_short, pack, unpack


class Decoder(Protocol):
    """What the worker decodes with: a :class:`~calltone.speech.asr.WhisperEngine` or an
    :class:`~calltone.speech.engine_process.EngineProcess` (the same call, in another process)."""

    multilingual: bool

    def decode(self, requests: list[DecodeRequest], options: DecodeOptions) -> list[DecodeResult]: ...


@dataclass
class _Job:
    stream_id: str
    request: DecodeRequest
    final: bool
    submitted: float
    background: bool = False
    future: Future = field(default_factory=Future)


@dataclass
class WorkerStats:
    decoded_finals: int = 0
    decoded_partials: int = 0
    superseded_partials: int = 0
    dropped_partials: int = 0
    batches: int = 0
    busy_s: float = 0.0
    audio_s: float = 0.0
    queued_finals: int = 0
    queued_partials: int = 0
    queued_background: int = 0
    decoded_background: int = 0
    pack_retries: int = 0  # utterances of a packed decode decoded again on their own
    lag_s: float = 0.0  # age of the oldest waiting job
    decoders: int = 1  # decoders (threads or processes) sharing the queue
    decoders_busy: int = 0  # of them, decoding now
    background_running: int = 0  # of them, decoding background work now


LIVE_RECENT_S = 5.0


class AsrWorker:
    """One decode queue served by one thread per decoder; submit() is thread-safe."""

    def __init__(self, decoders: Sequence[Decoder], options: DecodeOptions = DecodeOptions(), max_batch: int = 8,
                 partial_lag_drop_s: float = 1.5, pack_speech_s: float = 0.0) -> None:
        if not decoders:
            raise ValueError("the ASR worker needs at least one decoder")
        self.decoders = list(decoders)
        self.multilingual = self.decoders[0].multilingual
        self.options = options
        self.max_batch = max_batch
        self.partial_lag_drop_s = partial_lag_drop_s
        self.pack_speech_s = pack_speech_s
        self._finals: list[_Job] = []
        self._partials: dict[str, _Job] = {}
        self._background: list[_Job] = []
        self._last_live = -1e9  # monotonic time of the last live (not background) request
        self._cv = threading.Condition()
        self._closed = False
        self._idle = 0  # decoder threads waiting for work
        self._background_running = 0  # decoders decoding a batch with background work now
        self.stats = WorkerStats(decoders=len(self.decoders))
        self._threads = [threading.Thread(target=self._run, args=(d,), name=f"calltone-asr-{i}", daemon=True)
                         for i, d in enumerate(self.decoders)]
        for t in self._threads:
            t.start()

    # -- submission ----------------------------------------------------------------------
    def submit(self, stream_id: str, request: DecodeRequest, final: bool, background: bool = False) -> Future:
        """Queue a decode; the future resolves to a DecodeResult, or None for a skipped partial.
        ``background`` decodes (always kept, like finals) only run where live work leaves room."""
        job = _Job(stream_id, request, final or background, time.monotonic(), background)
        with self._cv:
            if self._closed:
                raise RuntimeError("ASR worker is closed")
            if background:
                self._background.append(job)
            else:
                self._last_live = job.submitted
                if final:
                    self._finals.append(job)
                else:
                    old = self._partials.pop(stream_id, None)
                    if old is not None:
                        _resolve(old.future, None)
                        self.stats.superseded_partials += 1
                    self._partials[stream_id] = job
            self._cv.notify()
        return job.future

    async def decode(self, stream_id: str, request: DecodeRequest, final: bool) -> DecodeResult | None:
        return await asyncio.wrap_future(self.submit(stream_id, request, final))

    def decode_sync(self, requests: list[DecodeRequest], stream_id: str = "batch") -> list[DecodeResult]:
        futures = [self.submit(f"{stream_id}:{i}", r, True) for i, r in enumerate(requests)]
        return [f.result() for f in futures]

    @property
    def background_queued(self) -> int:
        """Background decodes waiting (batch feeders hold back while this is high)."""
        return len(self._background)

    def lag_s(self) -> float:
        with self._cv:
            return self._lag_locked(time.monotonic())

    def _lag_locked(self, now: float) -> float:
        oldest = [j.submitted for j in self._finals] + [j.submitted for j in self._partials.values()]
        return now - min(oldest) if oldest else 0.0

    def snapshot(self) -> WorkerStats:
        with self._cv:
            s = WorkerStats(**vars(self.stats))
            s.queued_finals, s.queued_partials = len(self._finals), len(self._partials)
            s.queued_background = len(self._background)
            s.lag_s = self._lag_locked(time.monotonic())
            s.decoders_busy = len(self.decoders) - self._idle
            s.background_running = self._background_running
            return s

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        for t in self._threads:
            t.join(timeout=30)
        for d in self.decoders:
            close = getattr(d, "close", None)
            if close is not None:
                close()

    # -- the worker thread ------------------------------------------------------------
    def _share(self) -> int:
        """How many live jobs this decoder takes: all (up to max_batch) when the others are busy, else its
        share of what waits, so that idle decoders take the rest at the same time."""
        waiting = len(self._finals) + len(self._partials)
        if self._idle == 0 or waiting == 0:
            return self.max_batch
        return max(1, min(self.max_batch, math.ceil(waiting / (self._idle + 1))))

    def _take_batch(self) -> tuple[list[_Job], bool]:
        """The next batch, and whether its background utterances may be packed (not while live calls run)."""
        now = time.monotonic()
        limit = self._share()
        batch = self._finals[:limit]
        del self._finals[: len(batch)]
        for sid in sorted(self._partials, key=lambda k: self._partials[k].submitted):
            if len(batch) >= limit:
                break
            job = self._partials.pop(sid)
            if now - job.submitted > self.partial_lag_drop_s:
                _resolve(job.future, None)
                self.stats.dropped_partials += 1
                continue
            batch.append(job)
        room = self.max_batch - len(batch)
        live = now - self._last_live < LIVE_RECENT_S
        if live:  # live calls are on: no background in their batches, short ones alone, not on every decoder, unpacked
            room = 0 if batch or not self._may_run_background(now) else min(room, max(1, self.max_batch // 4))
        packs = self.pack_speech_s > 0 and not live
        taken = 0
        open_pack: dict[str, float] = {}  # stream -> seconds of audio in its open pack
        for job in self._background:
            d = len(job.request.audio) / SAMPLE_RATE
            if packs and job.request.packable and job.stream_id in open_pack and fits(open_pack[job.stream_id], d, self.pack_speech_s):
                open_pack[job.stream_id] += GAP_S + d  # shares a decode already counted
            elif room > 0:
                room -= 1
                if job.request.packable:
                    open_pack[job.stream_id] = d
            else:
                break
            taken += 1
        batch.extend(self._background[:taken])
        del self._background[:taken]
        return batch, packs

    def _run(self, decoder: Decoder) -> None:
        while True:
            with self._cv:
                taken = self._wait_and_take()
            if taken is None:
                return
            batch, packs = taken
            background = any(j.background for j in batch)
            t0 = time.perf_counter()
            try:
                results = self._decode(decoder, batch, packs)
            except Exception as exc:  # a broken request must not kill the worker
                results = None
                for j in batch:
                    if not j.future.cancelled():
                        j.future.set_exception(exc)
            with self._cv:
                if background:
                    self._background_running -= 1
                    self._cv.notify_all()  # another decoder may take background work now
                if results is not None:
                    self._count(batch, time.perf_counter() - t0)
            for j, r in zip(batch, results or []):
                _resolve(j.future, r)

    def _wait_and_take(self) -> tuple[list[_Job], bool] | None:
        """(under the lock) The next non-empty batch for this decoder, or None once closed and drained."""
        while True:
            self._idle += 1
            while not self._closed and not self._has_work():
                self._cv.wait(timeout=0.5 if self._background else None)  # live may go quiet, freeing background
            self._idle -= 1
            if self._closed and not self._finals and not self._background:
                for job in self._partials.values():
                    _resolve(job.future, None)
                self._partials.clear()
                return None
            batch, packs = self._take_batch()
            if batch:
                if any(j.background for j in batch):
                    self._background_running += 1
                return batch, packs

    def _has_work(self) -> bool:
        return bool(self._finals or self._partials or (self._background and self._may_run_background(time.monotonic())))

    def _may_run_background(self, now: float) -> bool:
        """While live calls are on, background batches run on all decoders but one, so a live final never waits
        for every decoder to finish someone's recordings (with one decoder: between live batches, as before)."""
        live = now - self._last_live < LIVE_RECENT_S
        return not live or self._background_running < max(1, len(self.decoders) - 1)

    def _count(self, batch: list[_Job], elapsed: float) -> None:
        self.stats.batches += 1
        self.stats.busy_s += elapsed
        self.stats.audio_s += float(sum(len(j.request.audio) for j in batch)) / SAMPLE_RATE
        for j in batch:
            if j.background:
                self.stats.decoded_background += 1
            elif j.final:
                self.stats.decoded_finals += 1
            else:
                self.stats.decoded_partials += 1

    def _decode(self, decoder: Decoder, batch: list[_Job], packs: bool) -> list[DecodeResult]:
        """Decode a batch; with ``packs``, packable utterances of one stream share a decode (speech/packing.py)."""
        requests: list[DecodeRequest] = []
        plan: list[tuple[list[int], Pack | None]] = []
        by_stream: dict[str, list[int]] = {}
        for i, job in enumerate(batch):
            if packs and job.request.packable:
                by_stream.setdefault(job.stream_id, []).append(i)
            else:
                plan.append(([i], None))
                requests.append(job.request)
        for idx in by_stream.values():
            k = 0
            for p in pack([batch[i].request for i in idx], self.pack_speech_s):
                n = len(p.offsets)
                plan.append((idx[k : k + n], p))
                requests.append(p.request)
                k += n
        results = decoder.decode(requests, self.options)
        out: list[DecodeResult] = [None] * len(batch)  # type: ignore[list-item]
        retry: list[int] = []
        for (idx, p), res in zip(plan, results):
            if p is None:
                out[idx[0]] = res
            else:
                for i, r in zip(idx, unpack(p, res, [batch[i].request.word_timestamps for i in idx])):
                    out[i] = r
                    if looks_short(r, len(batch[i].request.audio) / SAMPLE_RATE):
                        retry.append(i)
        if retry:  # Whisper skips an utterance of a pack now and then (e.g. one that repeats the one before): alone
            self.stats.pack_retries += len(retry)
            for i, r in zip(retry, decoder.decode([replace(batch[i].request, packable=False) for i in retry], self.options)):
                out[i] = r
        return out


def _resolve(future: Future, value) -> None:
    """Set a result unless the submitter cancelled (e.g. a partial no longer wanted)."""
    if not future.cancelled():
        try:
            future.set_result(value)
        except Exception:  # cancelled between the check and the call
            pass

