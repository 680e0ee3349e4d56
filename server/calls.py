"""Live calls: one :class:`LiveCall` (wrapping one CallPipeline) per call being streamed.

Every event the pipeline emits goes through :meth:`LiveCall._emit` on the event loop:

1. pipeline times turned into call times (resume offset, skipped audio: ``calltime.py``),
2. PII masked in transcript text and words (``privacy.mask_pii``),
3. ``seq`` / ``server_time`` assigned, ``call.ended`` summary completed,
4. written to the store (event + call row with the resume position + alert rows in one
   queued write; the writes are :class:`calltone.server.record.CallRecord`'s, as for scored calls),
5. published on the bus (``call:<id>``; escalations also on ``alerts`` and to
   webhooks) only once the write has committed.

A write that fails is not published, and nothing of the call after it is stored or
published (so stored seqs have no gaps and no one saw a seq the store lacks): the
producer's next ``push`` raises ``store_unavailable``, the supervisors' ``alerts`` topic
gets a ``store.failed`` message, and the call is left resumable.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import uuid
from bisect import bisect_left
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from calltone.pii import mask_transcript
from calltone.pipeline import SAMPLE_RATE, CallPipeline, PipelineOptions
from calltone.server.admission import Admission
from calltone.server.audiokeeper import AudioKeeper
from calltone.server.bus import Bus, Message
from calltone.server.calltime import CallClock
from calltone.server.metrics import Metrics
from calltone.server.ownership import LeaseLost
from calltone.server.protocol import AlertMessage, ProtocolError
from calltone.server.record import CallRecord
from calltone.server.store import AsyncStore, StoreUnavailable
from calltone.summary import summarize

if TYPE_CHECKING:
    from calltone.runtime import Runtime
    from calltone.server.registry import CallRegistry
    from calltone.server.store import Repository
    from calltone.server.jobs import JobRunner
    from calltone.server.webhooks import WebhookQueue
    from calltone.settings import Settings

log = logging.getLogger("calltone.server.calls")

MIN_PUSH_SAMPLES = 640  # 40 ms at 16 kHz: smaller frames are gathered before they reach the pipeline
TRANSCRIPT_TYPES = ("transcript.partial", "transcript.final")
# The resume position (call row duration_s) is stored with every event and at each multiple of this.
POSITION_EVERY_S = 1.0
# How a call may end without call.ended: its row is left "interrupted" and the same call id resumes it
# ("lease_lost": another node owns the call now, or will when its producer reconnects; server/ownership.py).
RESUMABLE_ENDINGS = frozenset({"shutdown", "interrupted", "error:store_unavailable", "lease_lost"})


@dataclass
class Services:
    """Everything the handlers share (one per app)."""

    settings: "Settings"
    store: AsyncStore
    bus: Bus
    metrics: Metrics
    runtime: "Runtime | None" = None
    webhooks: "WebhookQueue | None" = None
    audio_dir: Path | None = None
    jobs_dir: Path | None = None
    registry: "CallRegistry" = field(init=False)
    admission: "Admission" = field(init=False)
    jobs: "JobRunner" = field(init=False)

    def __post_init__(self) -> None:
        from calltone.server.jobs import JobRunner
        from calltone.server.registry import CallRegistry

        self.registry = CallRegistry(self)
        self.admission = Admission(self)
        self.jobs = JobRunner(self, self.jobs_dir or Path("jobs"))

    @property
    def ready(self) -> bool:
        return self.runtime is not None


class LiveCall:
    def __init__(self, services: Services, call_id: str, options: PipelineOptions, *, seq: int = 0, t_offset: float = 0.0,
                 history: list[dict] | None = None, resumed: bool = False, started_at: float | None = None) -> None:
        self.s = services
        self.call_id = call_id
        self.options = options
        self.agent_id = options.agent_id
        self.clock = CallClock(t_offset)
        self.resumed = resumed
        self.started_at = started_at or time.time()
        self.record = CallRecord(call_id, options.agent_id, options.metadata, seq=seq, history=history)
        self.end_reason = "stopped"
        self._suppress_end = False
        self._last_write: Future | None = None
        self._loop = asyncio.get_running_loop()
        self._pending: dict[str, list[np.ndarray]] = {r: [] for r in options.roles}
        self._pending_n: dict[str, int] = {r: 0 for r in options.roles}
        self._arrivals: dict[str, deque[tuple[float, float]]] = {r: deque(maxlen=4096) for r in options.roles}
        self._pushed_s: dict[str, float] = {r: 0.0 for r in options.roles}
        self._received: dict[str, int] = {r: 0 for r in options.roles}  # samples, pending ones included
        self.store_error: BaseException | None = None  # the first failed write (set in the store's writer thread)
        self._producer_told = False
        self._persisted = t_offset  # resume position carried by the latest write submitted
        self.finished = False
        self._lock = asyncio.Lock()
        self.keeper: AudioKeeper | None = None
        if services.settings.privacy.keep_audio and services.audio_dir is not None:
            self.keeper = AudioKeeper(services.audio_dir / call_id, options.roles)
        assert services.runtime is not None
        self.pipeline = CallPipeline(call_id, services.runtime, options, self._emit, partial_gate=services.admission)

    @property
    def seq(self) -> int:
        """The last seq stored (or submitted)."""
        return self.record.seq

    @property
    def t_offset(self) -> float:
        """Call time at which this connection resumed the call (0.0 for a new call)."""
        return self.clock.offset

    @property
    def position_s(self) -> float:
        """Call time of the audio the pipeline has taken, skips included: where a resumed call starts."""
        return self.clock.call_time(self.pipeline.duration_s, start=True)

    # -- audio ---------------------------------------------------------------------------
    async def push(self, audio: dict[str, np.ndarray], *, force: bool = False) -> None:
        """Add 16 kHz audio per role; gathered into >= 40 ms pieces before the pipeline sees it.

        Once a write of this call has failed, the next push raises ProtocolError ``store_unavailable`` (or
        ``internal_error`` when the store itself is fine) and later pushes drop their audio."""
        if self.store_error is not None:
            if not self._producer_told:
                self._producer_told = True
                raise self._write_refusal()
            return
        await self._push(audio, force)
        if _whole(self.position_s) > _whole(self._persisted):  # crossed a whole POSITION_EVERY_S of call time
            self._submit([])

    def skip(self, seconds: float) -> None:
        """``seconds`` of call audio were discarded upstream (AudioHook ``discarded``): call time moves on by
        ``seconds`` with no audio.  Events about audio pushed after this are shifted by every skip so far; events
        about earlier audio are not.  The call's duration and its resume position include skips."""
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"cannot skip {seconds!r} seconds of audio")
        if seconds:
            self.clock.skip(max(self._received.values(), default=0) / SAMPLE_RATE, seconds)

    def lose(self, why: LeaseLost) -> None:
        """This node no longer owns the call: nothing more of it is stored or published, and the producer's next
        push is refused with ``lease_lost`` (close 1012: reconnect to resume)."""
        if self.store_error is None:
            self.store_error = why

    def _write_refusal(self) -> ProtocolError:
        exc = self.store_error
        if isinstance(exc, LeaseLost):
            return ProtocolError("lease_lost", str(exc))
        if exc is not None and self.s.store.is_storage_failure(exc):
            return ProtocolError("store_unavailable", f"this call's events cannot be stored ({exc}); reconnect later with "
                                                      "the same call id to resume it")
        return ProtocolError("internal_error", "an event of this call could not be stored; the call was ended")

    async def _push(self, audio: dict[str, np.ndarray], force: bool) -> None:
        ready: dict[str, np.ndarray] = {}
        for role, x in audio.items():
            if role not in self._pending or x is None:
                continue
            if len(x):
                self._pending[role].append(x)
                self._pending_n[role] += len(x)
                self._received[role] += len(x)
                self.s.metrics.audio_seconds.labels(role).inc(len(x) / SAMPLE_RATE)
            if self._pending_n[role] and (force or self._pending_n[role] >= MIN_PUSH_SAMPLES):
                parts = self._pending[role]
                ready[role] = parts[0] if len(parts) == 1 else np.concatenate(parts)
                self._pending[role] = []
                self._pending_n[role] = 0
        if not ready:
            return
        if self.keeper is not None:
            self.keeper.write(ready)
        now = time.monotonic()
        for role, x in ready.items():
            self._pushed_s[role] += len(x) / 16000
            self._arrivals[role].append((self._pushed_s[role], now))
        async with self._lock:
            await self.pipeline.push(ready)

    def _arrival(self, role: str | None, t_local: float) -> float | None:
        """Monotonic time at which the audio at pipeline time ``t_local`` of ``role`` arrived."""
        clock = self._arrivals.get(role or "")
        if not clock:
            return None
        i = bisect_left(clock, (t_local - 1e-6, -1.0))
        return clock[min(i, len(clock) - 1)][1]

    async def finish(self, how: str = "stopped") -> None:
        """End the call: finalise pending audio and emit ``call.ended`` -- or, for a resumable ending
        (:data:`RESUMABLE_ENDINGS`: ``"shutdown"``, ``"interrupted"``, a store failure), store what was pending and
        leave the call ``interrupted`` for the same call id to resume."""
        if self.finished:
            return
        self.finished = True
        self.end_reason = how
        self._suppress_end = how in RESUMABLE_ENDINGS
        try:
            await self._push({r: np.zeros(0, np.float32) for r in self._pending}, force=True)
            async with self._lock:
                await self.pipeline.finish()
            await self.flush()
            if self._suppress_end:
                await self._leave_interrupted()
        finally:
            if self.keeper is not None:
                self.keeper.close()
            self.s.metrics.calls_ended.labels(how).inc()
            self.s.registry._remove(self)

    async def _leave_interrupted(self) -> None:
        fields: dict[str, Any] = {"status": "interrupted", "updated_at": time.time()}
        if self.store_error is None:  # else the row keeps the position of the last write that was stored
            fields["duration_s"] = round(self.position_s, 3)
        owner = self.s.registry.ownership.node_id
        try:
            held = await self.s.store.write(lambda r: r.hold_call(self.call_id, owner, **fields))
        except Exception as exc:  # noqa: BLE001 -- the row stays "live", which resumes the same way
            log.warning("call %s: could not mark it interrupted: %s", self.call_id, exc)
            return
        if not held:
            log.info("call %s: left as it is (another node owns it now, or it was marked interrupted)", self.call_id)

    async def flush(self) -> None:
        """Wait until everything emitted so far is stored and published."""
        fut = self._last_write
        if fut is not None:
            try:
                await asyncio.wrap_future(fut)
            except Exception:
                pass
            await asyncio.sleep(0)

    # -- events --------------------------------------------------------------------------
    def _emit(self, ev: Any) -> None:
        try:
            self._emit_inner(ev)
        except Exception:  # an event we cannot handle must not break the pipeline
            log.exception("call %s: failed to handle %s event", self.call_id, getattr(ev, "type", "?"))

    def _emit_inner(self, ev: Any) -> None:
        typ = ev.type
        channel = getattr(ev, "channel", None)
        if typ == "call.ended" and self._suppress_end:
            return
        if self.store_error is not None:  # nothing after a lost write is stored or published: no seq gaps
            self.s.metrics.events_not_stored.labels(typ).inc()
            return
        local_end = getattr(ev, "end", None) if typ in TRANSCRIPT_TYPES else ev.t
        arrival = self._arrival(channel, local_end) if channel and local_end is not None else None
        self.clock.shift(ev)
        if typ in TRANSCRIPT_TYPES and self.s.settings.privacy.mask_pii:
            self._mask(ev)
        if typ == "call.started" and self.resumed:
            ev.metadata = {**(ev.metadata or {}), "resumed": True, "resumed_at_t": round(self.t_offset, 3)}
        now = time.time()
        self.record.stamp(ev, now)
        if typ == "call.ended":
            duration = self.position_s
            speech = None if self.resumed else {  # a resumed call: the VAD heard only part of it, the finals stand in
                role: [span for s, e in segments for span in self.clock.spans(s, e)]
                for role, segments in self.pipeline.speech().items()}
            ev.summary = summarize(self.record.history, duration, speech,
                                   roles=self.options.roles, language=(ev.summary or {}).get("language"),
                                   resumed=self.resumed, end_reason=self.end_reason).model_dump()
            ev.t = round(duration, 3)
        rec = self.record.record(ev, now)
        emitted = time.perf_counter()
        msg = Message.of(typ, rec.body, ev.seq, channel)
        self._submit(rec.ops, lambda exc: self._published(exc, msg, rec.alert, arrival, emitted))

    def _submit(self, ops: list[Callable[["Repository"], Any]],
                then: Callable[[BaseException | None], None] | None = None) -> None:
        """Queue one write of this call (its ops and the resume position); ``then(error)`` runs on the loop after it.
        The write is refused once an earlier one of this call failed: the store settles each failed write before it
        runs the next, so ``store_error`` is set in time."""
        call_id, position, owner = self.call_id, round(self.position_s, 3), self.s.registry.ownership.node_id
        self._persisted = position

        def write(repo: "Repository") -> None:
            if self.store_error is not None:
                raise StoreUnavailable(f"an earlier write of call {call_id} failed")
            if not repo.hold_call(call_id, owner, duration_s=position):  # the fence: see server/ownership.py
                raise LeaseLost(f"this node no longer owns call {call_id} (another node took it over, or it was "
                                "marked interrupted); reconnect with the same call id to resume it")
            for op in ops:
                op(repo)

        def done(fut: Future) -> None:  # in the writer thread
            exc = fut.exception()
            if exc is not None and self.store_error is None:
                self.store_error = exc
                self._loop.call_soon_threadsafe(self._report_write_failure, exc)
            if then is not None:
                self._loop.call_soon_threadsafe(then, exc)

        fut = self.s.store.submit(write)
        fut.add_done_callback(done)
        self._last_write = fut

    def _report_write_failure(self, exc: BaseException) -> None:
        """Tell the supervisors (``alerts`` topic; an alert-shaped ``store.failed`` message) that this call lost events
        (not when another node has taken the call over: it goes on there)."""
        if isinstance(exc, LeaseLost):
            log.warning("call %s: %s", self.call_id, exc)
            return
        log.error("call %s: a write failed (%s); nothing more of this call is stored or published", self.call_id, exc)
        body = {"type": "store.failed", "alert_id": f"store-{new_alert_id()}", "call_id": self.call_id,
                "agent_id": self.agent_id, "channel": None, "reason": f"events of this call could not be stored: {exc}",
                "evidence": {"store_failure": self.s.store.failure}, "excerpt": [], "status": "open",
                "t": round(self.position_s, 3), "seq": self.seq, "raised_at": time.time(), "replay": False}
        self.s.bus.publish("alerts", Message.of("store.failed", json.dumps(body, ensure_ascii=False)))

    def _mask(self, ev: Any) -> None:
        for k in mask_transcript(ev):
            self.s.metrics.pii_masked.labels(k).inc()

    def _published(self, exc: BaseException | None, msg: Message, alert: AlertMessage | None, arrival: float | None,
                   emitted: float) -> None:
        m = self.s.metrics
        if exc is not None:  # not stored, so not published
            m.events_not_stored.labels(msg.type).inc()
            return
        m.store_latency.observe(time.perf_counter() - emitted)
        m.events.labels(msg.type).inc()
        if arrival is not None and msg.type in ("transcript.final", "transcript.partial", "emotion.update"):
            m.event_latency.labels(msg.type).observe(max(0.0, time.monotonic() - arrival))
        self.s.bus.publish(f"call:{self.call_id}", msg)
        if alert is not None:
            m.alerts.labels(alert.type).inc()
            body = alert.model_dump_json()
            self.s.bus.publish("alerts", Message.of(alert.type, body))
            if self.s.webhooks is not None:
                self.s.webhooks.send(alert.alert_id, alert.type, body)


def _whole(t: float) -> int:
    return math.floor(round(t, 3) / POSITION_EVERY_S)


def new_alert_id() -> str:
    return uuid.uuid4().hex[:12]
