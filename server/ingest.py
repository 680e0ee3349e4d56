"""Audio ingest websockets: the native protocol and Twilio Media Streams.

Native (``WS /v1/calls/{call_id}/audio``)::

    -> {"type":"start","sample_rate":8000,"encoding":"mulaw","channels":2,
        "channel_roles":["customer","agent"],"language":"auto","agent_id":"a42","metadata":{}}
    <- {"type":"started","call_id":...,"roles":[...],"resumed":false,"max_frame_bytes":64000}
    -> binary frames: interleaved samples, whole sample frames, <= max_frame_bytes each
    -> {"type":"stop"}
    <- (events, if "events": true in start) ... then close 1000

Twilio (``WS /v1/twilio``): ``connected``, ``start``, ``media`` (base64 µ-law 8 kHz,
``inbound`` -> customer, ``outbound`` -> agent), ``mark``, ``dtmf``, ``stop``.
Each track is placed on its own timeline by ``media.timestamp``; gaps are filled
with silence and repeated chunks dropped.  Twilio cannot send headers, so the token
may come as ``customParameters.token``.  Refusals on the Twilio socket are a close
code and reason only (Twilio ignores text it does not expect).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from dataclasses import dataclass

import numpy as np
from pydantic import ValidationError
from starlette.websockets import WebSocket, WebSocketDisconnect

from calltone.pipeline import PipelineOptions
from calltone.server.bus import SubscriberTooSlow
from calltone.server.calls import LiveCall
from calltone.server.protocol import ProtocolError, StartMessage, valid_call_id
from calltone.server.wsutil import RateLimiter, close_ok, refuse, require, services
from calltone.speech.audio import (AudioError, BadChannelRoles, BadFrameSize, BadSampleRate, EmptyAudio,
                                   NonFiniteAudio, StreamDecoder, StreamFormat, UnsupportedEncoding)

log = logging.getLogger("calltone.server.ingest")


@dataclass
class Limits:
    messages_per_s: float = 500.0   # sustained websocket messages per second per connection
    burst: float = 1000.0           # messages allowed in a burst
    max_text_bytes: int = 16_384    # control/JSON message size (Twilio media messages are ~400 bytes)
    max_metadata_bytes: int = 8_192
    twilio_max_gap_s: float = 10.0  # longest silence inserted for a gap in one Twilio track
    forward_timeout_s: float = 10.0  # wait for call.ended to reach an "events": true producer


def _parse_json(text: str, limits: Limits) -> dict:
    if len(text) > limits.max_text_bytes:
        raise ProtocolError("frame_too_large", f"text message of {len(text)} bytes exceeds {limits.max_text_bytes}")
    try:
        msg = json.loads(text)
    except (json.JSONDecodeError, ValueError) as e:
        raise ProtocolError("bad_json", f"control messages must be JSON objects: {e}") from None
    if not isinstance(msg, dict):
        raise ProtocolError("bad_json", "control messages must be JSON objects")
    return msg


def _stream_format(encoding: str, sample_rate: int, channels: int, roles: list[str] | None) -> StreamFormat:
    try:
        return StreamFormat(encoding, sample_rate, channels, tuple(roles or ()))  # type: ignore[arg-type]
    except UnsupportedEncoding as e:
        raise ProtocolError("unsupported_encoding", str(e)) from None
    except BadSampleRate as e:
        raise ProtocolError("unsupported_sample_rate", str(e)) from None
    except BadChannelRoles as e:
        raise ProtocolError("bad_channel_roles", str(e)) from None


def _decode(decoder: StreamDecoder, data: bytes) -> dict[str, np.ndarray]:
    try:
        return decoder.feed(data)
    except BadFrameSize as e:
        raise ProtocolError("bad_frame_size", str(e)) from None
    except (NonFiniteAudio, EmptyAudio) as e:
        raise ProtocolError("bad_audio", str(e)) from None
    except AudioError as e:
        raise ProtocolError("bad_audio", str(e)) from None


class EventForwarder:
    """Sends a call's events back to its producer (native ``"events": true``)."""

    def __init__(self, ws: WebSocket, live: LiveCall) -> None:
        self.ws = ws
        self.sub = live.s.bus.subscribe(f"call:{live.call_id}")
        self.ended = False
        import asyncio

        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        try:
            while True:
                msg = await self.sub.get()
                await self.ws.send_text(msg.json)
                if msg.type == "call.ended":
                    self.ended = True
                    return
        except (SubscriberTooSlow, WebSocketDisconnect, RuntimeError):
            return
        finally:
            self.sub.close()

    async def wait(self, timeout: float) -> None:
        import asyncio

        try:
            await asyncio.wait_for(asyncio.shield(self.task), timeout)
        except (asyncio.TimeoutError, Exception):
            pass

    def cancel(self) -> None:
        self.task.cancel()
        self.sub.close()



def _how_it_ended(exc: Exception, s, what: str) -> tuple[ProtocolError | None, str]:
    """Map what stopped an ingest loop to (error to send, if any; how the call ended)."""
    if isinstance(exc, ProtocolError):
        return exc, f"error:{exc.code}"
    if isinstance(exc, WebSocketDisconnect):
        return None, "shutdown" if s.registry.draining or exc.code == 1012 else "disconnected"
    log.exception("%s failed", what, exc_info=exc)
    return ProtocolError("internal_error", "internal error; the call was ended"), "error:internal_error"

async def _finish(live: LiveCall | None, how: str) -> None:
    if live is not None and not live.finished:
        try:
            await live.finish(how)
        except Exception:
            log.exception("call %s: finishing failed", live.call_id)


def _end_how(ws: WebSocket, msg: dict) -> str:
    return "shutdown" if services(ws).registry.draining or msg.get("code") == 1012 else "disconnected"


# --------------------------------------------------------------------------- native


async def native_audio(ws: WebSocket, call_id: str) -> None:
    s = services(ws)
    limits: Limits = ws.app.state.limits
    await ws.accept()
    live: LiveCall | None = None
    decoder: StreamDecoder | None = None
    forwarder: EventForwarder | None = None
    error: ProtocolError | None = None
    how = "disconnected"
    try:
        require(ws, "ingest")
        if not valid_call_id(call_id):
            raise ProtocolError("bad_call_id", "call ids are 1-128 characters: letters, digits and . _ : @ -")
        if not s.ready:
            raise ProtocolError("not_ready", "the speech model is still loading; retry in a few seconds")
        limiter = RateLimiter(limits.messages_per_s, limits.burst)
        max_frame = s.settings.server.max_frame_bytes
        while True:
            msg = await ws.receive()
            if msg["type"] == "websocket.disconnect":
                how = _end_how(ws, msg)
                break
            if not limiter.allow():
                raise ProtocolError("rate_limited", f"more than {limits.messages_per_s:g} messages per second; send larger frames")
            text, data = msg.get("text"), msg.get("bytes")
            if text is not None:
                ctrl = _parse_json(text, limits)
                typ = ctrl.get("type")
                if typ == "start":
                    if live is not None:
                        raise ProtocolError("protocol_error", "the stream has already started")
                    try:
                        start = StartMessage.model_validate(ctrl)
                    except ValidationError as e:
                        errs = "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors()[:3])
                        raise ProtocolError("invalid_start", f"invalid start message: {errs}") from None
                    if len(json.dumps(start.metadata)) > limits.max_metadata_bytes:
                        raise ProtocolError("invalid_start", f"metadata exceeds {limits.max_metadata_bytes} bytes")
                    fmt = _stream_format(start.encoding, start.sample_rate, start.channels, start.channel_roles)
                    decoder = StreamDecoder(fmt, strict=True)
                    options = PipelineOptions(language=start.language, roles=list(fmt.channel_roles), partials=start.partials,
                                              agent_id=start.agent_id, metadata=start.metadata)
                    live = await s.registry.open(call_id, options)
                    if start.events:
                        forwarder = EventForwarder(ws, live)
                    await ws.send_json({"type": "started", "call_id": call_id, "roles": list(fmt.channel_roles),
                                        "encoding": fmt.encoding, "sample_rate": fmt.sample_rate, "resumed": live.resumed,
                                        "seq": live.seq, "t_offset": round(live.t_offset, 3),
                                        "max_frame_bytes": max_frame, "agent_id": live.agent_id})
                elif typ == "stop":
                    if live is None:
                        raise ProtocolError("protocol_error", "stop before start")
                    how = "stopped"
                    break
                elif typ == "ping":
                    await ws.send_json({"type": "pong"})
                else:
                    raise ProtocolError("unsupported_message", f"unknown message type {typ!r}; expected start, stop or ping")
            elif data is not None:
                if len(data) > max_frame:
                    raise ProtocolError("frame_too_large", f"audio frame of {len(data)} bytes exceeds the {max_frame}-byte limit")
                if live is None or decoder is None:
                    raise ProtocolError("audio_before_start", "send the start message before any audio")
                if data:
                    await live.push(_decode(decoder, data))
    except Exception as exc:
        error, how = _how_it_ended(exc, s, f"native ingest of {call_id}")

    if error is not None:
        if forwarder is not None:
            forwarder.cancel()
        await refuse(ws, error)
    if live is not None and decoder is not None:
        try:
            await live.push(decoder.flush(), force=True)
        except AudioError:
            pass
    await _finish(live, how)
    if how == "stopped":
        if forwarder is not None:
            await forwarder.wait(limits.forward_timeout_s)
        await close_ok(ws, "stopped")
    elif forwarder is not None:
        forwarder.cancel()


# --------------------------------------------------------------------------- Twilio


class TrackAligner:
    """Places one Twilio track's µ-law chunks on its timeline (8 kHz, 1 byte per sample)."""

    SILENCE = b"\xff"  # µ-law code for 0

    def __init__(self, max_gap_s: float) -> None:
        self.cursor = 0  # samples written so far
        self.last_chunk = 0
        self.max_gap = int(max_gap_s * 8000)
        self.gaps_filled = 0
        self.duplicates = 0

    def place(self, timestamp_ms: int | None, chunk: int | None, payload: bytes) -> bytes:
        if chunk is not None:
            if chunk <= self.last_chunk:
                self.duplicates += 1
                return b""
            self.last_chunk = chunk
        out = payload
        if timestamp_ms is not None:
            expected = int(timestamp_ms) * 8
            gap = expected - self.cursor
            if gap >= 80:  # >= 10 ms missing: fill with silence
                gap = min(gap, self.max_gap)
                self.gaps_filled += gap
                out = self.SILENCE * gap + payload
        self.cursor += len(out)
        return out


TWILIO_TRACKS = {"inbound": "customer", "outbound": "agent"}


def _int(v) -> int | None:
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


async def twilio_stream(ws: WebSocket) -> None:
    s = services(ws)
    limits: Limits = ws.app.state.limits
    await ws.accept()
    live: LiveCall | None = None
    tracks: dict[str, tuple[str, StreamDecoder, TrackAligner]] = {}
    error: ProtocolError | None = None
    how = "disconnected"
    call_id = "?"
    try:
        limiter = RateLimiter(limits.messages_per_s, limits.burst)
        while True:
            msg = await ws.receive()
            if msg["type"] == "websocket.disconnect":
                how = _end_how(ws, msg)
                break
            if not limiter.allow():
                raise ProtocolError("rate_limited", f"more than {limits.messages_per_s:g} messages per second")
            text = msg.get("text")
            if text is None:
                raise ProtocolError("unsupported_data", "Twilio Media Streams messages are JSON text")
            m = _parse_json(text, limits)
            event = m.get("event")
            if event == "media":
                if live is None:
                    raise ProtocolError("audio_before_start", "media before start")
                media = m.get("media") or {}
                track = media.get("track", "inbound")
                if track not in tracks:
                    raise ProtocolError("bad_audio", f"media on track {track!r}, which the start message did not announce")
                role, decoder, aligner = tracks[track]
                try:
                    payload = base64.b64decode(media.get("payload") or "", validate=True)
                except (binascii.Error, ValueError):
                    raise ProtocolError("bad_audio", "media.payload is not valid base64") from None
                if len(payload) > s.settings.server.max_frame_bytes:
                    raise ProtocolError("frame_too_large", f"media payload of {len(payload)} bytes is too large")
                placed = aligner.place(_int(media.get("timestamp")), _int(media.get("chunk")), payload)
                if placed:
                    await live.push(_decode(decoder, placed))
            elif event == "start":
                if live is not None:
                    raise ProtocolError("protocol_error", "the stream has already started")
                start = m.get("start") or {}
                params = start.get("customParameters") or {}
                if not isinstance(params, dict):
                    params = {}
                auth = ws.app.state.auth
                require(ws, "ingest", auth.token_from(ws.headers, ws.query_params) or params.get("token"))
                if not s.ready:
                    raise ProtocolError("not_ready", "the speech model is still loading")
                call_id = str(params.get("call_id") or start.get("callSid") or m.get("streamSid") or "")
                if not valid_call_id(call_id):
                    raise ProtocolError("bad_call_id", f"no usable call id (callSid / customParameters.call_id): {call_id!r}")
                mf = start.get("mediaFormat") or {}
                encoding = str(mf.get("encoding", "audio/x-mulaw"))
                rate = _int(mf.get("sampleRate", 8000))
                if encoding.lower() not in ("audio/x-mulaw", "mulaw", "ulaw"):
                    raise ProtocolError("unsupported_encoding", f"Twilio media encoding {encoding!r}; expected audio/x-mulaw")
                if rate != 8000:
                    raise ProtocolError("unsupported_sample_rate", f"Twilio sampleRate {rate}; expected 8000")
                names = [t for t in (start.get("tracks") or ["inbound", "outbound"]) if t in TWILIO_TRACKS]
                if not names:
                    raise ProtocolError("bad_channel_roles", f"no known tracks in {start.get('tracks')!r}")
                for t in names:
                    role = TWILIO_TRACKS[t]
                    tracks[t] = (role, StreamDecoder(StreamFormat("mulaw", 8000, 1, (role,)), strict=True),
                                 TrackAligner(limits.twilio_max_gap_s))
                language = params.get("language", "auto")
                if language not in ("zh", "en", "auto"):
                    raise ProtocolError("invalid_start", f"customParameters.language must be zh, en or auto, not {language!r}")
                metadata = {"source": "twilio", "stream_sid": start.get("streamSid") or m.get("streamSid"),
                            "call_sid": start.get("callSid"), "account_sid": start.get("accountSid")}
                metadata.update({k: v for k, v in params.items() if k not in ("token", "agent_id", "language", "call_id")})
                options = PipelineOptions(language=language, roles=[tracks[t][0] for t in names],
                                          agent_id=params.get("agent_id"), metadata=metadata)
                live = await s.registry.open(call_id, options)
            elif event == "stop":
                how = "stopped"
                break
            elif event in ("connected", "mark", "dtmf"):
                continue
            else:
                raise ProtocolError("unsupported_message", f"unknown Twilio event {event!r}")
    except Exception as exc:
        error, how = _how_it_ended(exc, s, f"twilio ingest of {call_id}")

    if error is not None:
        await refuse(ws, error, json_frame=False)
    if live is not None:
        for role, decoder, _ in tracks.values():
            try:
                await live.push(decoder.flush(), force=True)
            except AudioError:
                pass
    await _finish(live, how)
    if how == "stopped":
        await close_ok(ws, "stopped")
