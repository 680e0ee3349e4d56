"""Live calls: one :class:`LiveCall` (wrapping one CallPipeline) per call being streamed.

Every event the pipeline emits goes through :meth:`LiveCall._emit` on the event loop:

1. times shifted when the call was resumed after a server restart,
2. PII masked in transcript text and words (``privacy.mask_pii``),
3. ``seq`` / ``server_time`` assigned, ``call.ended`` summary completed,
4. written to the store (event + call row + alert rows in one queued write),
5. published on the bus (``call:<id>``; escalations also on ``alerts`` and to
   webhooks) only once the write has committed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from bisect import bisect_left
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from calltone.pipeline import CallPipeline, PipelineOptions
from calltone.server.bus import Bus, Message
from calltone.server.metrics import Metrics
from calltone.pii import mask_transcript
from calltone.server.protocol import AlertMessage, ProtocolError
from calltone.server.store import AsyncStore
from calltone.summary import compute_summary

if TYPE_CHECKING:
    from calltone.runtime import Runtime
    from calltone.server.jobs import JobRunner
    from calltone.server.webhooks import WebhookSender
    from calltone.settings import Settings

log = logging.getLogger("calltone.server.calls")

MIN_PUSH_SAMPLES = 640  # 40 ms at 16 kHz: smaller frames are gathered before they reach the pipeline
SUMMARY_TYPES = ("transcript.final", "emotion.update", "escalation.raised", "escalation.cleared")
TRANSCRIPT_TYPES = ("transcript.partial", "transcript.final")


class AudioKeeper:
    """Writes each role's 16 kHz audio to ``<audio_dir>/<call_id>/<role>-<session>.wav`` (privacy.keep_audio)."""

    def __init__(self, directory: Path, roles: list[str]) -> None:
        import soundfile as sf

        directory.mkdir(parents=True, exist_ok=True)
        session = time.strftime("%Y%m%dT%H%M%S")
        self.files = {r: sf.SoundFile(directory / f"{r}-{session}.wav", "w", samplerate=16000, channels=1, subtype="PCM_16")
                      for r in roles}

    def write(self, audio: dict[str, np.ndarray]) -> None:
        for role, x in audio.items():
            f = self.files.get(role)
            if f is not None and len(x):
                f.write(x)

    def close(self) -> None:
        for f in self.files.values():
            f.close()


@dataclass
class Services:
    """Everything the handlers share (one per app)."""

    settings: "Settings"
    store: AsyncStore
    bus: Bus
    metrics: Metrics
    runtime: "Runtime | None" = None
    webhooks: "WebhookSender | None" = None
    audio_dir: Path | None = None
    jobs_dir: Path | None = None
    registry: "CallRegistry" = field(init=False)
    jobs: "JobRunner" = field(init=False)

    def __post_init__(self) -> None:
        from calltone.server.jobs import JobRunner

        self.registry = CallRegistry(self)
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
        self.seq = seq
        self.t_offset = t_offset
        self.resumed = resumed
        self.started_at = started_at or time.time()
        self.history: list[dict] = list(history or [])  # events the summary needs
        self.recent_finals: deque[dict] = deque((e for e in self.history if e.get("type") == "transcript.final"), maxlen=6)
        self.open_alerts: dict[str, dict] = {}
        self.end_reason = "stopped"
        self._suppress_end = False
        self._last_write: Future | None = None
        self._loop = asyncio.get_running_loop()
        self._pending: dict[str, list[np.ndarray]] = {r: [] for r in options.roles}
        self._pending_n: dict[str, int] = {r: 0 for r in options.roles}
        self._clock: dict[str, deque[tuple[float, float]]] = {r: deque(maxlen=4096) for r in options.roles}
        self._pushed_s: dict[str, float] = {r: 0.0 for r in options.roles}
        self.audio_s: dict[str, float] = {r: 0.0 for r in options.roles}
        self.finished = False
        self._lock = asyncio.Lock()
        self.keeper: AudioKeeper | None = None
        if services.settings.privacy.keep_audio and services.audio_dir is not None:
            self.keeper = AudioKeeper(services.audio_dir / call_id, options.roles)
        assert services.runtime is not None
        self.pipeline = CallPipeline(call_id, services.runtime, options, self._emit)

    # -- audio ---------------------------------------------------------------------------
    async def push(self, audio: dict[str, np.ndarray], *, force: bool = False) -> None:
        """Add 16 kHz audio per role; gathered into >= 40 ms pieces before the pipeline sees it."""
        ready: dict[str, np.ndarray] = {}
        for role, x in audio.items():
            if role not in self._pending or x is None:
                continue
            if len(x):
                self._pending[role].append(x)
                self._pending_n[role] += len(x)
                secs = len(x) / 16000
                self.audio_s[role] += secs
                self.s.metrics.audio_seconds.inc(secs, role)
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
            self._clock[role].append((self._pushed_s[role], now))
        async with self._lock:
            await self.pipeline.push(ready)

    def _arrival(self, role: str | None, t_local: float) -> float | None:
        """Monotonic time at which the audio at pipeline time ``t_local`` of ``role`` arrived."""
        clock = self._clock.get(role or "")
        if not clock:
            return None
        i = bisect_left(clock, (t_local - 1e-6, -1.0))
        return clock[min(i, len(clock) - 1)][1]

    async def finish(self, how: str = "stopped") -> None:
        """End the call: finalise pending audio, emit ``call.ended`` (unless the server is shutting down)."""
        if self.finished:
            return
        self.finished = True
        self.end_reason = how
        self._suppress_end = how == "shutdown"
        try:
            await self.push({r: np.zeros(0, np.float32) for r in self._pending}, force=True)
            async with self._lock:
                await self.pipeline.finish()
            await self.flush()
            if how == "shutdown":
                duration = round(self.t_offset + self.pipeline.duration_s, 3)
                await self.s.store.write(lambda r: r.update_call(self.call_id, status="interrupted", duration_s=duration,
                                                                  updated_at=time.time()))
        finally:
            if self.keeper is not None:
                self.keeper.close()
            self.s.metrics.calls_ended.inc(1, how)
            self.s.registry._remove(self)

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
        local_end = getattr(ev, "end", None) if typ in TRANSCRIPT_TYPES else ev.t
        arrival = self._arrival(channel, local_end) if channel and local_end is not None else None
        if self.t_offset:
            self._shift(ev)
        if typ in TRANSCRIPT_TYPES and self.s.settings.privacy.mask_pii:
            self._mask(ev)
        if typ == "call.started" and self.resumed:
            ev.metadata = {**(ev.metadata or {}), "resumed": True, "resumed_at_t": round(self.t_offset, 3)}
        self.seq += 1
        now = time.time()
        ev.seq = self.seq
        ev.server_time = round(now, 3)
        if typ == "call.ended":
            duration = self.t_offset + self.pipeline.duration_s
            base = dict(ev.summary or {})
            base["end_reason"] = self.end_reason
            if self.resumed:
                base["resumed"] = True
            ev.summary = compute_summary(self.history, duration, base)
            ev.t = round(duration, 3)
        body = ev.model_dump_json()
        if typ in SUMMARY_TYPES:
            d = json.loads(body)
            self.history.append(d)
            if typ == "transcript.final":
                self.recent_finals.append(d)
        ops, alert = self._store_ops(ev, typ, body, now)
        emitted = time.perf_counter()
        fut = self.s.store.submit(lambda repo: [op(repo) for op in ops])
        msg = Message.of(typ, body, ev.seq, channel)
        fut.add_done_callback(lambda f: self._loop.call_soon_threadsafe(self._published, f, msg, alert, arrival, emitted))
        self._last_write = fut

    def _shift(self, ev: Any) -> None:
        off = self.t_offset
        ev.t = round(ev.t + off, 3)
        if hasattr(ev, "start") and hasattr(ev, "end"):
            ev.start = round(ev.start + off, 3)
            ev.end = round(ev.end + off, 3)
        for w in getattr(ev, "words", None) or []:
            w.start = round(w.start + off, 3)
            w.end = round(w.end + off, 3)

    def _mask(self, ev: Any) -> None:
        for k in mask_transcript(ev):
            self.s.metrics.pii_masked.inc(1, k)

    def _store_ops(self, ev: Any, typ: str, body: str, now: float) -> tuple[list, AlertMessage | None]:
        call_id = self.call_id
        ops: list = [lambda r: r.append_event(call_id, ev.seq, typ, ev.t, now, body)]
        alert: AlertMessage | None = None
        if typ == "escalation.raised":
            excerpt = [{"channel": e["channel"], "t": e["end"], "text": e["text"]} for e in self.recent_finals]
            alert = AlertMessage(type="escalation.raised", alert_id=ev.alert_id, call_id=call_id, agent_id=self.agent_id,
                                 channel=ev.channel, reason=ev.reason, evidence=ev.evidence, excerpt=excerpt, status="open",
                                 t=ev.t, seq=ev.seq, raised_at=now)
            self.open_alerts[ev.alert_id] = alert.model_dump()
            row = alert.model_dump(exclude={"type", "replay"})
            n_esc = sum(1 for e in self.history if e.get("type") == "escalation.raised")
            ops.append(lambda r: r.insert_alert(row))
            ops.append(lambda r: r.update_call(call_id, escalations=n_esc))
        elif typ == "escalation.cleared":
            prev = self.open_alerts.pop(ev.alert_id, None) or {"alert_id": ev.alert_id, "call_id": call_id,
                                                                  "agent_id": self.agent_id, "channel": ev.channel}
            prev = {**prev, "type": "escalation.cleared", "status": "cleared", "cleared_at": now, "reason": ev.reason or prev.get("reason", "")}
            alert = AlertMessage(**{k: v for k, v in prev.items() if k in AlertMessage.model_fields})
            ops.append(lambda r: r.update_alert(ev.alert_id, status="cleared", cleared_at=now))
        elif typ == "call.ended":
            summary = ev.summary
            duration = summary.get("duration_s")
            ops.append(lambda r: r.update_call(call_id, status="ended", ended_at=now, duration_s=duration, summary=summary,
                                               updated_at=now))
        elif typ == "call.started" and getattr(ev, "language", None):
            lang = ev.language
            ops.append(lambda r: r.update_call(call_id, language=lang))
        return ops, alert

    def _published(self, fut: Future, msg: Message, alert: AlertMessage | None, arrival: float | None, emitted: float) -> None:
        exc = fut.exception()
        if exc is not None:
            log.error("call %s: event %s seq %s NOT stored: %s", self.call_id, msg.type, msg.seq, exc)
        m = self.s.metrics
        m.store_latency.observe(time.perf_counter() - emitted)
        m.events.inc(1, msg.type)
        if arrival is not None and msg.type in ("transcript.final", "transcript.partial", "emotion.update"):
            m.event_latency.observe(max(0.0, time.monotonic() - arrival), msg.type)
        self.s.bus.publish(f"call:{self.call_id}", msg)
        if alert is not None:
            m.alerts.inc(1, alert.type)
            body = alert.model_dump_json()
            self.s.bus.publish("alerts", Message.of(alert.type, body))
            if self.s.webhooks is not None:
                self.s.webhooks.send(alert.alert_id, alert.type, body)


class CallRegistry:
    """The calls being streamed right now (at most one producer each)."""

    def __init__(self, services: Services) -> None:
        self.s = services
        self.live: dict[str, LiveCall] = {}
        self._opening: set[str] = set()
        self.draining = False

    def __len__(self) -> int:
        return len(self.live)

    async def open(self, call_id: str, options: PipelineOptions) -> LiveCall:
        if self.draining:
            raise ProtocolError("shutting_down", "the server is shutting down; reconnect shortly to resume this call")
        if call_id in self.live or call_id in self._opening:
            raise ProtocolError("conflict", f"call {call_id} already has a producer streaming its audio")
        self._opening.add(call_id)
        try:
            row = await self.s.store.read(lambda r: r.get_call(call_id))
            if row is not None and row["status"] == "ended":
                raise ProtocolError("call_ended", f"call {call_id} has already ended; use a new call id")
            now = time.time()
            seq, offset, history, started_at = 0, 0.0, [], now
            if row is not None:  # resume an interrupted call
                stored = await self.s.store.read(lambda r: (r.last_seq(call_id), r.events(call_id, 0, list(SUMMARY_TYPES))))
                seq = stored[0]
                history = [json.loads(body) for _, _, body in stored[1]]
                offset = float(row.get("duration_s") or 0.0)
                offset = max([offset] + [float(e.get("end", e.get("t", 0.0)) or 0.0) for e in history])
                started_at = row["started_at"]
                options = options.model_copy(update={"agent_id": options.agent_id or row.get("agent_id")})
            call = {"call_id": call_id, "status": "live", "agent_id": options.agent_id, "language": options.language,
                    "metadata": options.metadata, "roles": options.roles, "started_at": started_at, "updated_at": now}
            await self.s.store.write(lambda r: r.upsert_call(call))
            live = LiveCall(self.s, call_id, options, seq=seq, t_offset=offset, history=history, resumed=row is not None,
                            started_at=started_at)
            self.live[call_id] = live
            self.s.metrics.calls_started.inc()
            return live
        finally:
            self._opening.discard(call_id)

    def _remove(self, live: LiveCall) -> None:
        if self.live.get(live.call_id) is live:
            del self.live[live.call_id]

    async def finish_all(self, how: str = "shutdown") -> None:
        await asyncio.gather(*(c.finish(how) for c in list(self.live.values())), return_exceptions=True)


def new_alert_id() -> str:
    return uuid.uuid4().hex[:12]
