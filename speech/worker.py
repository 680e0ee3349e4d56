"""The one ASR worker of a process: a thread that owns the Whisper model.

All channels of all calls submit decode jobs here; the asyncio event loop never
runs model code.  Each pass takes the waiting finals first (oldest first), fills
the batch with partials, and decodes them together.  Under overload it degrades in
a defined way:

* a newer partial for a stream replaces the one still queued (coalescing);
* partials that waited longer than ``partial_lag_drop_s`` are skipped;
* finals are never dropped, only delayed; ``lag_s`` reports how far behind we are.

Recordings scored in the background (batch scoring, QA jobs in the server) submit
with ``background=True``: their decodes only fill the room live work leaves in a
batch, and while live calls are being decoded (any live request in the last
``LIVE_RECENT_S``) they run only in batches of their own of at most ``max_batch // 4``,
between live batches, and are not packed, so that a live final neither waits behind a
long batch of someone's recordings nor shares its batch with them.  A channel's short
utterances may share one decode (``speech/packing.py``, ``asr.batch_pack_s``).
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field, replace

from calltone.speech.asr import SAMPLE_RATE, DecodeOptions, DecodeRequest, DecodeResult, WhisperEngine
from calltone.speech.packing import GAP_S, Pack, fits, looks_short, pack, unpack


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


LIVE_RECENT_S = 5.0


class AsrWorker:
    """Thread-confined owner of a :class:`WhisperEngine`; submit() is thread-safe."""

    def __init__(self, engine: WhisperEngine, options: DecodeOptions = DecodeOptions(), max_batch: int = 8,
                 partial_lag_drop_s: float = 1.5, pack_speech_s: float = 0.0) -> None:
        self.engine = engine
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
        self.stats = WorkerStats()
        self._thread = threading.Thread(target=self._run, name="calltone-asr", daemon=True)
        self._thread.start()

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
            return s

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._thread.join(timeout=30)

    # -- the worker thread ------------------------------------------------------------
    def _take_batch(self) -> tuple[list[_Job], bool]:
        """The next batch, and whether its background utterances may be packed (not while live calls run)."""
        now = time.monotonic()
        batch = self._finals[: self.max_batch]
        del self._finals[: len(batch)]
        for sid in sorted(self._partials, key=lambda k: self._partials[k].submitted):
            if len(batch) >= self.max_batch:
                break
            job = self._partials.pop(sid)
            if now - job.submitted > self.partial_lag_drop_s:
                _resolve(job.future, None)
                self.stats.dropped_partials += 1
                continue
            batch.append(job)
        room = self.max_batch - len(batch)
        live = now - self._last_live < LIVE_RECENT_S
        if live:  # live calls are on: no background in their batches, short ones alone, nothing packed
            room = 0 if batch else min(room, max(1, self.max_batch // 4))
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

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._closed and not self._finals and not self._partials and not self._background:
                    self._cv.wait()
                if self._closed and not self._finals and not self._background:
                    for job in self._partials.values():
                        _resolve(job.future, None)
                    self._partials.clear()
                    return
                batch, packs = self._take_batch()
            if not batch:
                continue
            t0 = time.perf_counter()
            try:
                results = self._decode(batch, packs)
            except Exception as exc:  # a broken request must not kill the worker
                for j in batch:
                    if not j.future.cancelled():
                        j.future.set_exception(exc)
                continue
            elapsed = time.perf_counter() - t0
            with self._cv:
                self.stats.batches += 1
                self.stats.busy_s += elapsed
                self.stats.audio_s += float(sum(len(j.request.audio) for j in batch)) / 16000
                for j in batch:
                    if j.background:
                        self.stats.decoded_background += 1
                    elif j.final:
                        self.stats.decoded_finals += 1
                    else:
                        self.stats.decoded_partials += 1
            for j, r in zip(batch, results):
                _resolve(j.future, r)

    def _decode(self, batch: list[_Job], packs: bool) -> list[DecodeResult]:
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
        results = self.engine.decode(requests, self.options)
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
            for i, r in zip(retry, self.engine.decode([replace(batch[i].request, packable=False) for i in retry], self.options)):
                out[i] = r
        return out


def _resolve(future: Future, value) -> None:
    """Set a result unless the submitter cancelled (e.g. a partial no longer wanted)."""
    if not future.cancelled():
        try:
            future.set_result(value)
        except Exception:  # cancelled between the check and the call
            pass

