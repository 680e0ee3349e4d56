"""Audio ingest: one receive loop for every wire protocol.

Transport is kept apart from wire format.  :func:`serve` owns the websocket: the
upgrade check, accept, rate limit, message size and JSON shape limits, opening the
call, pushing audio, replies, teardown, and the mapping of every failure to the
protocol's own refusal.  One small :class:`WireProtocol` object per format turns that
format's messages into typed items (:data:`Item`):

* :class:`calltone.server.native.NativeProtocol` — ``WS /v1/calls/{call_id}/audio``
* :class:`calltone.server.twilio.TwilioProtocol` — ``WS /v1/twilio`` (Twilio Media Streams)
* :class:`calltone.server.audiohook.AudioHookProtocol` — ``WS /v1/audiohook`` (Genesys Cloud AudioHook)

A protocol never touches the socket or the call; the loop never reads a wire format.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
from starlette.responses import PlainTextResponse
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from calltone.pipeline import PipelineOptions
from calltone.server.bus import SubscriberTooSlow
from calltone.server.feeds import CallStream
from calltone.server.protocol import Limits, ProtocolError, parse_control
from calltone.server.wsutil import RateLimiter, services
from calltone.speech.audio import AudioError, BadFrameSize, StreamDecoder

if TYPE_CHECKING:
    from calltone.server.calls import LiveCall, Services

log = logging.getLogger("calltone.server.ingest")


# --------------------------------------------------------------------------- items a protocol hands the loop


@dataclass(frozen=True)
class Open:
    """Open (or resume) the call."""

    call_id: str
    options: PipelineOptions
    forward_events: bool = False  # also send the call's events back on this socket (native ``"events": true``)


@dataclass(frozen=True)
class Audio:
    """Decoded audio: 16 kHz float32 samples per role."""

    samples: dict[str, np.ndarray]


@dataclass(frozen=True)
class Skip:
    """``seconds`` of call audio were discarded upstream: call time moves on, no silence is invented."""

    seconds: float


@dataclass(frozen=True)
class Language:
    """The producer changed the call's language."""

    language: str


@dataclass(frozen=True)
class Send:
    """A text frame (JSON) to send to the producer."""

    frame: dict


@dataclass(frozen=True)
class Stop:
    """The producer ended the stream: the call ends (``stopped``) or stays resumable (``interrupted``)."""

    how: str = "stopped"


Item = Open | Audio | Skip | Language | Send | Stop


class UpgradeRefused(Exception):
    """Refuse the websocket upgrade with an HTTP status (no call is created)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Refusal:
    """How a protocol says no once the socket is open: frames to send, then the close code and reason."""

    frames: list[dict]
    close_code: int
    reason: str
    linger_s: float = 0.0  # keep reading this long for the client's own close (AudioHook: close -> closed)


class WireProtocol(Protocol):
    """One wire format.  Methods return items; they raise :class:`ProtocolError` for bad input."""

    name: str
    bulk_keys: frozenset[str]    # JSON keys whose string values may be long (base64 audio)
    vanished_how: str            # how the call ends when the socket drops without a stop

    async def handshake(self, ws: WebSocket) -> None:
        """Before accept: verify the upgrade request (raise :class:`UpgradeRefused`)."""

    def accepted(self, ws: WebSocket) -> list[Item]:
        """Right after accept (raise :class:`ProtocolError` to refuse)."""

    def text(self, msg: dict) -> list[Item]: ...

    def binary(self, data: bytes) -> list[Item]: ...

    def opened(self, live: "LiveCall") -> list[Item]:
        """The call is open: replies to send (native ``started``, AudioHook ``opened``)."""

    def flush(self) -> dict[str, np.ndarray]:
        """Audio still held in decoders at the end of the stream."""

    def refusal(self, err: ProtocolError) -> Refusal: ...

    def farewell(self) -> list[dict]:
        """Frames to send after a stop, once the call has ended."""


def decode(decoder: StreamDecoder, data: bytes) -> dict[str, np.ndarray]:
    """Decode one audio payload, mapping audio errors to protocol errors."""
    try:
        return decoder.feed(data)
    except BadFrameSize as e:
        raise ProtocolError("bad_frame_size", str(e)) from None
    except AudioError as e:
        raise ProtocolError("bad_audio", str(e)) from None


# --------------------------------------------------------------------------- the loop


class EventForwarder:
    """Sends a call's events back to its producer (native ``"events": true``): those after the moment the
    call opened on this connection, in order, gaps on the bus filled from the store (as the event feed does)."""

    def __init__(self, ws: WebSocket, live: "LiveCall") -> None:
        self.sub = live.s.bus.subscribe(f"call:{live.call_id}")
        self.stream = CallStream(live.s.store, self.sub, live.call_id, after=live.seq)
        self.task = asyncio.ensure_future(self._run(ws))

    async def _run(self, ws: WebSocket) -> None:
        try:
            await self.stream.run(ws.send_text)
        except (SubscriberTooSlow, WebSocketDisconnect, RuntimeError):
            return
        finally:
            self.sub.close()

    async def wait(self, timeout: float) -> None:
        await asyncio.wait({self.task}, timeout=timeout)

    def cancel(self) -> None:
        self.task.cancel()
        self.sub.close()


class IngestSession:
    """One producer connection: the state :func:`serve` keeps while it runs the protocol's items."""

    def __init__(self, ws: WebSocket, proto: WireProtocol) -> None:
        self.ws = ws
        self.proto = proto
        self.s: Services = services(ws)
        self.limits: Limits = ws.app.state.limits
        self.live: LiveCall | None = None
        self.forwarder: EventForwarder | None = None
        self.stop: Stop | None = None

    async def receive_loop(self) -> str:
        """Run until the stream stops or the socket drops; return how the call ends."""
        limiter = RateLimiter(self.limits.messages_per_s, self.limits.burst)
        while self.stop is None:
            msg = await self.ws.receive()
            if msg["type"] == "websocket.disconnect":
                code = msg.get("code")
                return "shutdown" if self.s.registry.draining or code == 1012 else self.proto.vanished_how
            if not limiter.allow():
                raise ProtocolError("rate_limited", f"more than {self.limits.messages_per_s:g} messages per second; "
                                                    "send larger frames")
            text, data = msg.get("text"), msg.get("bytes")
            if text is not None:
                items = self.proto.text(parse_control(text, self.limits, self.proto.bulk_keys))
            else:
                if len(data or b"") > self.s.settings.server.max_frame_bytes:
                    raise ProtocolError("frame_too_large", f"audio frame of {len(data)} bytes exceeds the "
                                                           f"{self.s.settings.server.max_frame_bytes}-byte limit")
                items = self.proto.binary(data or b"")
            await self.run(items)
        return self.stop.how

    async def run(self, items: list[Item]) -> None:
        for item in items:
            match item:
                case Audio(samples):
                    if self.live is None:
                        raise ProtocolError("audio_before_start", "send the start message before any audio")
                    await self.live.push(samples)
                case Send(frame):
                    await self.ws.send_json(frame)
                case Open():
                    await self.open(item)
                case Skip(seconds):
                    if self.live is not None and seconds > 0:
                        self.live.skip(seconds)
                case Language(language):
                    if self.live is not None:
                        self.live.pipeline.set_language(language)
                case Stop():
                    self.stop = item

    async def open(self, item: Open) -> None:
        if self.live is not None:
            raise ProtocolError("protocol_error", "the stream has already started")
        self.live = await self.s.registry.open(item.call_id, item.options)
        if item.forward_events:
            self.forwarder = EventForwarder(self.ws, self.live)
        await self.run(self.proto.opened(self.live))

    async def refuse(self, err: ProtocolError) -> None:
        if self.forwarder is not None:
            self.forwarder.cancel()
        self.s.metrics.ingest_errors.labels(err.code).inc()
        refusal = self.proto.refusal(err)
        if self.ws.application_state != WebSocketState.CONNECTED:
            return
        try:
            for frame in refusal.frames:
                await self.ws.send_json(frame)
            if refusal.linger_s > 0:
                await self._linger(refusal.linger_s)
            await self.ws.close(refusal.close_code, reason=refusal.reason[:120])
        except Exception:  # the client may already be gone
            pass

    async def _linger(self, seconds: float) -> None:
        """After a refusal, answer the client's own close (its messages are otherwise ignored) for up to ``seconds``."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                while True:
                    msg = await self.ws.receive()
                    if msg["type"] == "websocket.disconnect":
                        return
                    try:
                        items = self.proto.text(parse_control(msg["text"], self.limits)) if msg.get("text") else []
                    except ProtocolError:
                        continue
                    if any(isinstance(i, Stop) for i in items):
                        for frame in self.proto.farewell():
                            await self.ws.send_json(frame)
                        return

    async def teardown(self, how: str) -> None:
        """Finish the call (flushing decoders), then say goodbye as the protocol does after a stop."""
        live = self.live
        if live is not None and not live.finished:
            try:
                await live.push(self.proto.flush(), force=True)
            except (AudioError, ProtocolError):
                pass
            try:
                await live.finish(how)
            except Exception:
                log.exception("call %s: finishing failed", live.call_id)
        if self.forwarder is not None:
            if how == "stopped":
                await self.forwarder.wait(self.limits.forward_timeout_s)
            self.forwarder.cancel()
        if self.stop is None or self.ws.application_state != WebSocketState.CONNECTED:
            return
        try:
            for frame in self.proto.farewell():
                await self.ws.send_json(frame)
            await self.ws.close(1000, reason="stopped")
        except Exception:
            pass


def _how_it_ended(exc: Exception, session: IngestSession) -> tuple[ProtocolError | None, str]:
    """Map what stopped a session to (error to send, if any; how the call ended)."""
    if isinstance(exc, ProtocolError):
        return exc, f"error:{exc.code}"
    if isinstance(exc, WebSocketDisconnect):
        return None, "shutdown" if session.s.registry.draining or exc.code == 1012 else session.proto.vanished_how
    call_id = session.live.call_id if session.live is not None else "?"
    log.exception("%s ingest of %s failed", session.proto.name, call_id, exc_info=exc)
    return ProtocolError("internal_error", "internal error; the call was ended"), "error:internal_error"


async def serve(ws: WebSocket, proto: WireProtocol) -> None:
    """Run one producer connection with ``proto`` from upgrade to close."""
    try:
        await proto.handshake(ws)
    except UpgradeRefused as e:
        services(ws).metrics.ingest_errors.labels("upgrade_refused").inc()
        await ws.send_denial_response(PlainTextResponse(e.reason, status_code=e.status))
        return
    await ws.accept()
    session = IngestSession(ws, proto)
    try:
        await session.run(proto.accepted(ws))
        if not session.s.ready:
            raise ProtocolError("not_ready", "the speech model is still loading; retry in a few seconds")
        how = await session.receive_loop()
    except Exception as exc:
        error, how = _how_it_ended(exc, session)
        if error is not None:
            await session.refuse(error)
    await session.teardown(how)
