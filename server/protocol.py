"""Wire-level definitions shared by the websocket handlers: close codes, error
codes, the native ``start`` message and the supervisor alert message.

Every refusal is a JSON error frame ``{"type": "error", "code": ..., "message": ...}``
followed by a websocket close with the code from :data:`CLOSE_CODES` and the error
code as the close reason (``docs/api.md`` has the table).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from calltone.events import CALL_ID_RE, valid_call_id

__all__ = ["CLOSE_CODES", "AckRequest", "AlertFields", "AlertMessage", "Limits", "ProtocolError", "StartMessage",
           "parse_control", "valid_call_id", "validation_message"]  # valid_call_id: calltone.events' rule, for the feeds

# error code -> websocket close code
CLOSE_CODES: dict[str, int] = {
    "stopped": 1000,            # normal end after {"type":"stop"} / Twilio stop / call.ended delivered
    "shutting_down": 1012,      # server restarting; producers reconnect with the same call id to resume
    "lease_lost": 1012,         # another node owns the call now (this one was paused or cut off); reconnect to resume
    "protocol_error": 1002,     # message out of order (audio before start, second start, ...)
    "audio_before_start": 1002,
    "unsupported_message": 1003,  # unknown control message type
    "unsupported_encoding": 1003,
    "unsupported_sample_rate": 1003,
    "unsupported_data": 1003,   # e.g. binary frame on a JSON-only socket
    "bad_json": 1007,           # text frame that is not a JSON object
    "invalid_start": 1007,      # start message fails validation
    "bad_channel_roles": 1007,
    "bad_frame_size": 1007,     # byte count not a whole number of sample frames
    "bad_audio": 1007,          # NaN/inf floats, bad base64, ...
    "bad_call_id": 1007,
    "unauthorized": 1008,       # missing/unknown token
    "forbidden": 1008,          # token lacks the role (or agent id) for this resource
    "frame_too_large": 1009,
    "internal_error": 1011,
    "not_ready": 1013,          # model still loading
    "store_unavailable": 1013,  # the store cannot write: no new calls; a call being written is cut off (resumable)
    "at_capacity": 1013,        # this node carries server.max_calls calls: a new call goes to another node
    "asr_lagging": 1013,        # this node's ASR queue is server.max_asr_lag_s behind: a new call goes elsewhere
    "not_found": 4404,          # no such call
    "subscriber_too_slow": 4408,  # queue overflowed; reconnect with ?after=<last seq>
    "conflict": 4409,           # a producer is already streaming this call
    "call_ended": 4409,         # the call id belongs to a call that already ended
    "rate_limited": 4429,       # too many websocket messages per second
}

@dataclass(frozen=True)
class Limits:
    """What one ingest connection may send."""

    messages_per_s: float = 500.0   # sustained websocket messages per second per connection
    burst: float = 1000.0           # messages allowed in a burst
    max_text_bytes: int = 16_384    # control/JSON message size (Twilio media messages are ~400 bytes)
    max_json_depth: int = 8         # nesting of objects and arrays in a control message
    max_json_nodes: int = 512       # keys plus array items in a control message
    max_json_string: int = 1_024    # characters in a key or string value (except a protocol's bulk keys)
    max_metadata_bytes: int = 8_192
    twilio_max_gap_s: float = 10.0  # longest silence inserted for a gap in one Twilio track
    forward_timeout_s: float = 10.0  # wait for call.ended to reach an "events": true producer


_STRING_RE = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)
_BRACKET_RE = re.compile(r"[\[\]{}]")


def _depth(text: str) -> int:
    """Deepest nesting of ``[``/``{`` in JSON text, not counting brackets inside strings (before parsing)."""
    depth = deepest = 0
    for m in _BRACKET_RE.finditer(_STRING_RE.sub("", text)):
        depth += 1 if m.group() in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def _check_shape(msg: Any, limits: Limits, bulk_keys: frozenset[str]) -> None:
    nodes = 0
    stack: list[tuple[Any, str | None]] = [(msg, None)]
    while stack:
        value, key = stack.pop()
        if isinstance(value, dict):
            nodes += len(value)
            for k, v in value.items():
                if len(k) > limits.max_json_string:
                    raise ProtocolError("bad_json", f"a key of {len(k)} characters exceeds {limits.max_json_string}")
                stack.append((v, k))
        elif isinstance(value, list):
            nodes += len(value)
            stack.extend((v, key) for v in value)
        elif isinstance(value, str) and len(value) > limits.max_json_string and key not in bulk_keys:
            raise ProtocolError("bad_json", f"{key or 'a value'}: a string of {len(value)} characters exceeds "
                                            f"{limits.max_json_string}")
        if nodes > limits.max_json_nodes:
            raise ProtocolError("bad_json", f"a control message may hold at most {limits.max_json_nodes} keys and items")


def parse_control(text: str, limits: Limits, bulk_keys: frozenset[str] = frozenset()) -> dict:
    """Parse one control message, bounded in size, depth, node count and string length before anything uses it."""
    if len(text) > limits.max_text_bytes:
        raise ProtocolError("frame_too_large", f"text message of {len(text)} bytes exceeds {limits.max_text_bytes}")
    if _depth(text) > limits.max_json_depth:
        raise ProtocolError("bad_json", f"control messages may nest at most {limits.max_json_depth} levels deep")
    try:
        msg = json.loads(text)
    except (json.JSONDecodeError, ValueError) as e:
        raise ProtocolError("bad_json", f"control messages must be JSON objects: {e}") from None
    if not isinstance(msg, dict):
        raise ProtocolError("bad_json", "control messages must be JSON objects")
    _check_shape(msg, limits, bulk_keys)
    return msg


class ProtocolError(Exception):
    """A refusal: ``code`` (see :data:`CLOSE_CODES`) and a message for people."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def close_code(self) -> int:
        return CLOSE_CODES.get(self.code, 1008)

    def frame(self) -> dict:
        return {"type": "error", "code": self.code, "message": self.message}


def validation_message(e: ValidationError, limit: int = 3) -> str:
    """The first few validation errors as ``field: message; ...``."""
    return "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors()[:limit])


class StartMessage(BaseModel):
    """First text frame on ``WS /v1/calls/{call_id}/audio``."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["start"]
    sample_rate: int = Field(8000, description="8000..48000 Hz")
    encoding: str = Field("mulaw", description="mulaw | alaw | pcm_s16le | f32le")
    channels: int = Field(2, ge=1, le=8)
    channel_roles: list[str] | None = Field(None, description="role of each channel; default customer, agent")
    language: Literal["zh", "en", "auto"] = "auto"
    agent_id: str | None = Field(None, pattern=CALL_ID_RE.pattern, description="letters, digits and . _ : @ -")
    metadata: dict = Field(default_factory=dict)
    events: bool = Field(False, description="also send this call's events back on this socket")
    partials: bool = Field(True, description="emit transcript.partial events")


class AlertFields(BaseModel):
    """What every view of an alert has (feed message, webhook, REST)."""

    alert_id: str
    call_id: str
    agent_id: str | None = None
    channel: str | None = None
    seq: int | None = None
    raised_at: float | None = None
    cleared_at: float | None = None
    acked_by: str | None = None
    acked_at: float | None = None
    barge_in: bool | None = None


class AlertMessage(AlertFields):
    """What ``WS /v1/alerts`` and the webhooks carry (one alert, its latest state)."""

    type: Literal["escalation.raised", "escalation.cleared", "alert.acked"]
    reason: str = ""
    evidence: dict = Field(default_factory=dict)
    excerpt: list[dict] = Field(default_factory=list, description="recent final transcript lines: channel, t, text")
    status: Literal["open", "cleared", "acked"] = "open"
    t: float = 0.0
    replay: bool = Field(False, description="true for the snapshot of open alerts sent on connect")


class AckRequest(BaseModel):
    barge_in: bool = Field(False, description="the supervisor joins the call")
    note: str | None = Field(None, max_length=2000)
