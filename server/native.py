"""The native ingest protocol (``WS /v1/calls/{call_id}/audio``)::

    -> {"type":"start","sample_rate":8000,"encoding":"mulaw","channels":2,
        "channel_roles":["customer","agent"],"language":"auto","agent_id":"a42","metadata":{}}
    <- {"type":"started","call_id":...,"roles":[...],"resumed":false,"t_offset":0.0,"max_frame_bytes":64000}
    -> binary frames: interleaved samples, whole sample frames, <= max_frame_bytes each
    -> {"type":"ping"}  <- {"type":"pong"}
    -> {"type":"stop"}
    <- (events, if "events": true in start) ... then close 1000

Every refusal is an error frame ``{"type":"error","code":...,"message":...}`` and a close
with the code from :data:`calltone.server.protocol.CLOSE_CODES`.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import numpy as np
from pydantic import ValidationError
from starlette.websockets import WebSocket

from calltone.pipeline import PipelineOptions
from calltone.server.ingest import Audio, Item, Open, Refusal, Send, Stop, decode
from calltone.events import valid_call_id
from calltone.server.protocol import Limits, ProtocolError, StartMessage, validation_message
from calltone.server.wsutil import require
from calltone.speech.audio import BadChannelRoles, BadSampleRate, StreamDecoder, StreamFormat, UnsupportedEncoding
from calltone.speech.decoding import LIVE

if TYPE_CHECKING:
    from calltone.server.calls import LiveCall


def stream_format(encoding: str, sample_rate: int, channels: int, roles: list[str] | None) -> StreamFormat:
    """A :class:`StreamFormat`, with format errors as protocol errors."""
    try:
        return StreamFormat(encoding, sample_rate, channels, tuple(roles or ()))  # type: ignore[arg-type]
    except UnsupportedEncoding as e:
        raise ProtocolError("unsupported_encoding", str(e)) from None
    except BadSampleRate as e:
        raise ProtocolError("unsupported_sample_rate", str(e)) from None
    except BadChannelRoles as e:
        raise ProtocolError("bad_channel_roles", str(e)) from None


class NativeProtocol:
    name = "native"
    bulk_keys: frozenset[str] = frozenset()
    vanished_how = "disconnected"

    def __init__(self, call_id: str, limits: Limits, max_frame_bytes: int) -> None:
        self.call_id = call_id
        self.limits = limits
        self.max_frame_bytes = max_frame_bytes
        self.decoder: StreamDecoder | None = None

    async def handshake(self, ws: WebSocket) -> None:
        return None

    def accepted(self, ws: WebSocket) -> list[Item]:
        require(ws, "ingest")
        if not valid_call_id(self.call_id):
            raise ProtocolError("bad_call_id", "call ids are 1-128 characters: letters, digits and . _ : @ -")
        return []

    def text(self, msg: dict) -> list[Item]:
        typ = msg.get("type")
        if typ == "start":
            return [self._start(msg)]
        if typ == "stop":
            if self.decoder is None:
                raise ProtocolError("protocol_error", "stop before start")
            return [Stop()]
        if typ == "ping":
            return [Send({"type": "pong"})]
        raise ProtocolError("unsupported_message", f"unknown message type {typ!r}; expected start, stop or ping")

    def _start(self, msg: dict) -> Open:
        if self.decoder is not None:
            raise ProtocolError("protocol_error", "the stream has already started")
        try:
            start = StartMessage.model_validate(msg)
        except ValidationError as e:
            raise ProtocolError("invalid_start", f"invalid start message: {validation_message(e)}") from None
        if len(json.dumps(start.metadata)) > self.limits.max_metadata_bytes:
            raise ProtocolError("invalid_start", f"metadata exceeds {self.limits.max_metadata_bytes} bytes")
        fmt = stream_format(start.encoding, start.sample_rate, start.channels, start.channel_roles)
        self.decoder = StreamDecoder(fmt, strict=True)
        options = PipelineOptions(language=start.language, roles=list(fmt.channel_roles),
                                  decode=LIVE if start.partials else LIVE.without_partials(),
                                  agent_id=start.agent_id, metadata=start.metadata)
        return Open(self.call_id, options, forward_events=start.events)

    def binary(self, data: bytes) -> list[Item]:
        if self.decoder is None:
            raise ProtocolError("audio_before_start", "send the start message before any audio")
        return [Audio(decode(self.decoder, data))] if data else []

    def opened(self, live: "LiveCall") -> list[Item]:
        assert self.decoder is not None
        fmt = self.decoder.fmt
        return [Send({"type": "started", "call_id": live.call_id, "roles": list(fmt.channel_roles),
                      "encoding": fmt.encoding, "sample_rate": fmt.sample_rate, "resumed": live.resumed,
                      "seq": live.seq, "t_offset": round(live.t_offset, 3), "max_frame_bytes": self.max_frame_bytes,
                      "agent_id": live.agent_id})]

    def flush(self) -> dict[str, np.ndarray]:
        return self.decoder.flush() if self.decoder is not None else {}

    def refusal(self, err: ProtocolError) -> Refusal:
        return Refusal([err.frame()], err.close_code, err.code)

    def farewell(self) -> list[dict]:
        return []
