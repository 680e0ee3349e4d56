"""Twilio Media Streams (``WS /v1/twilio``, ``<Connect><Stream url="wss://host/v1/twilio">``).

Messages: ``connected``, ``start``, ``media`` (base64 µ-law 8 kHz, ``inbound`` -> customer,
``outbound`` -> agent), ``mark``, ``dtmf``, ``stop``.  Each track is placed on its own
timeline by ``media.timestamp``; gaps are filled with silence and repeated chunks dropped.

Authentication: with ``server.twilio_auth_token`` set, the upgrade must carry a valid
``X-Twilio-Signature`` (HMAC-SHA1 of the ``wss://`` URL Twilio connected to, keyed with
the account's auth token); otherwise it is refused with HTTP 403 and no call is made.
Without it, the bearer token comes as ``customParameters.token`` (Twilio cannot send
headers).  Refusals are a close code and reason only: Twilio ignores text it does not expect.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import TYPE_CHECKING

import numpy as np
from starlette.websockets import WebSocket

from calltone.pii import mask_text
from calltone.pipeline import PipelineOptions
from calltone.server.ingest import Audio, Item, Open, Refusal, Stop, UpgradeRefused, decode
from calltone.events import valid_call_id
from calltone.server.protocol import Limits, ProtocolError
from calltone.server.signature import twilio_signature_valid
from calltone.server.wsutil import require
from calltone.speech.audio import StreamDecoder, StreamFormat
from calltone.speech.g711 import ULAW_SILENCE

if TYPE_CHECKING:
    from calltone.server.calls import LiveCall
    from calltone.settings import ServerSettings

TWILIO_RATE = 8000  # Media Streams are always µ-law at 8 kHz, one byte per sample
TWILIO_TRACKS = {"inbound": "customer", "outbound": "agent"}
RESERVED_PARAMETERS = ("token", "agent_id", "language", "call_id")


class TrackAligner:
    """Places one Twilio track's µ-law chunks on its timeline (8 kHz, 1 byte per sample)."""

    def __init__(self, max_gap_s: float) -> None:
        self.cursor = 0  # samples written so far
        self.last_chunk = 0
        self.max_gap = int(max_gap_s * TWILIO_RATE)
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
            expected = int(timestamp_ms) * TWILIO_RATE // 1000
            gap = expected - self.cursor
            if gap >= TWILIO_RATE // 100:  # >= 10 ms missing: fill with silence
                gap = min(gap, self.max_gap)
                self.gaps_filled += gap
                out = ULAW_SILENCE * gap + payload
        self.cursor += len(out)
        return out


class Track:
    def __init__(self, role: str, max_gap_s: float) -> None:
        self.role = role
        self.decoder = StreamDecoder(StreamFormat("mulaw", TWILIO_RATE, 1, (role,)), strict=True)
        self.aligner = TrackAligner(max_gap_s)


def _int(v: object) -> int | None:
    try:
        return int(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def signed_urls(ws: WebSocket, public_url: str) -> list[str]:
    """The URLs Twilio may have signed for this upgrade: ``wss://`` + public host + path (+ query)."""
    path = ws.scope.get("raw_path", ws.url.path.encode()).decode("latin-1")
    query = ws.scope.get("query_string", b"").decode("latin-1")
    if public_url:
        bases = [public_url.rstrip("/").replace("https://", "wss://", 1).replace("http://", "ws://", 1)]
    else:
        host = ws.headers.get("x-forwarded-host") or ws.headers.get("host", "")
        bases = [f"wss://{host}"]
        if ":" in host:
            bases.append(f"wss://{host.rsplit(':', 1)[0]}")  # twilio-python also tries the URL without its port
    urls = [b + path for b in bases]
    return urls + [u + "?" + query for u in urls] if query else urls


class TwilioProtocol:
    name = "twilio"
    bulk_keys = frozenset({"payload"})
    vanished_how = "disconnected"

    def __init__(self, ws: WebSocket, server: "ServerSettings", limits: Limits) -> None:
        self.ws = ws  # the upgrade request: the bearer token may come in a header, the query or the start message
        self.server = server
        self.limits = limits
        self.signed = False
        self.tracks: dict[str, Track] = {}

    async def handshake(self, ws: WebSocket) -> None:
        token = self.server.twilio_auth_token
        if not token:
            return
        if not twilio_signature_valid(token, signed_urls(ws, self.server.public_url), ws.headers.get("x-twilio-signature", "")):
            raise UpgradeRefused(403, "X-Twilio-Signature missing or does not verify")
        self.signed = True

    def accepted(self, ws: WebSocket) -> list[Item]:
        return []

    def binary(self, data: bytes) -> list[Item]:
        raise ProtocolError("unsupported_data", "Twilio Media Streams messages are JSON text")

    def text(self, msg: dict) -> list[Item]:
        event = msg.get("event")
        if event == "media":
            return self._media(msg["media"] if isinstance(msg.get("media"), dict) else {})
        if event == "start":
            return [self._start(msg)]
        if event == "stop":
            return [Stop()]
        if event in ("connected", "mark", "dtmf"):
            return []
        raise ProtocolError("unsupported_message", f"unknown Twilio event {event!r}")

    def _media(self, media: dict) -> list[Item]:
        if not self.tracks:
            raise ProtocolError("audio_before_start", "media before start")
        track = self.tracks.get(str(media.get("track", "inbound")))
        if track is None:
            raise ProtocolError("bad_audio", f"media on track {media.get('track')!r}, which the start message did not announce")
        try:
            payload = base64.b64decode(media.get("payload") or "", validate=True)
        except (binascii.Error, ValueError, TypeError):
            raise ProtocolError("bad_audio", "media.payload is not valid base64") from None
        placed = track.aligner.place(_int(media.get("timestamp")), _int(media.get("chunk")), payload)
        return [Audio(decode(track.decoder, placed))] if placed else []

    def _start(self, m: dict) -> Open:
        if self.tracks:
            raise ProtocolError("protocol_error", "the stream has already started")
        start = m["start"] if isinstance(m.get("start"), dict) else {}
        params = start.get("customParameters") or {}
        if not isinstance(params, dict):
            params = {}
        if not self.signed:
            require(self.ws, "ingest", self.ws.app.state.auth.token_from(self.ws.headers, self.ws.query_params)
                    or params.get("token"))
        call_id = str(params.get("call_id") or start.get("callSid") or m.get("streamSid") or "")
        if not valid_call_id(call_id):
            raise ProtocolError("bad_call_id", f"no usable call id (callSid / customParameters.call_id): {call_id[:80]!r}")
        self._check_format(start["mediaFormat"] if isinstance(start.get("mediaFormat"), dict) else {})
        announced = start.get("tracks") or ["inbound", "outbound"]
        names = [t for t in announced if isinstance(t, str) and t in TWILIO_TRACKS] if isinstance(announced, list) else []
        if not names:
            raise ProtocolError("bad_channel_roles", f"no known tracks in {str(start.get('tracks'))[:80]}")
        self.tracks = {t: Track(TWILIO_TRACKS[t], self.limits.twilio_max_gap_s) for t in names}
        language = params.get("language", "auto")
        if language not in ("zh", "en", "auto"):
            raise ProtocolError("invalid_start", f"customParameters.language must be zh, en or auto, not {str(language)[:20]!r}")
        agent_id = params.get("agent_id")
        if agent_id is not None and not valid_call_id(str(agent_id)):
            raise ProtocolError("invalid_start", "customParameters.agent_id: letters, digits and . _ : @ - (1-128)")
        metadata = {"source": "twilio", "stream_sid": start.get("streamSid") or m.get("streamSid"),
                    "call_sid": start.get("callSid"), "account_sid": start.get("accountSid")}
        metadata.update({k: mask_text(str(v))[0] for k, v in params.items() if k not in RESERVED_PARAMETERS})
        if len(json.dumps(metadata)) > self.limits.max_metadata_bytes:
            raise ProtocolError("invalid_start", f"customParameters exceed {self.limits.max_metadata_bytes} bytes")
        options = PipelineOptions(language=language, roles=[self.tracks[t].role for t in names], agent_id=agent_id,
                                  metadata=metadata)
        return Open(call_id, options)

    @staticmethod
    def _check_format(mf: dict) -> None:
        encoding = str(mf.get("encoding", "audio/x-mulaw"))
        rate = _int(mf.get("sampleRate", TWILIO_RATE))
        if encoding.lower() not in ("audio/x-mulaw", "mulaw", "ulaw"):
            raise ProtocolError("unsupported_encoding", f"Twilio media encoding {encoding[:40]!r}; expected audio/x-mulaw")
        if rate != TWILIO_RATE:
            raise ProtocolError("unsupported_sample_rate", f"Twilio sampleRate {rate}; expected {TWILIO_RATE}")

    def opened(self, live: "LiveCall") -> list[Item]:
        return []

    def flush(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for track in self.tracks.values():
            out.update(track.decoder.flush())
        return out

    def refusal(self, err: ProtocolError) -> Refusal:
        return Refusal([], err.close_code, err.code)

    def farewell(self) -> list[dict]:
        return []
