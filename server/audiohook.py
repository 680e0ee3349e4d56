"""Genesys Cloud AudioHook, protocol version 2 (``WS /v1/audiohook``), server side.

Text messages are JSON: ``version`` ("2"), ``id`` (the session id), ``type``, ``seq``,
``parameters``; the client adds ``serverseq`` and ``position`` (``PT1.2S``), the server
``clientseq``.  Each side numbers its messages 1, 2, 3, ...: a client message out of
sequence ends the session with ``disconnect`` (reason ``error``).

    -> open {organizationId, conversationId, participant, media[], language?, customConfig?, continuedSessions?}
    <- opened {media: [the one offer chosen], startPaused: false}
    -> binary audio: headerless, channels interleaved in the order of the chosen offer
    -> ping <- pong;  update {language} <- updated;  paused / resumed {start, discarded};  discarded {start, discarded}
    -> close {reason} <- closed   (then the client closes the socket)

Mapping: ``external`` is the customer, ``internal`` the agent; the call id is the
``conversationId``; ``customConfig`` may carry ``agent_id`` and ``language`` (zh / en /
auto); ``participant`` ANI and DNIS go into the call's metadata, masked.  Audio discarded
by the client (``discarded``, or not sent while ``paused``: ``resumed.discarded``) moves
call time on without inventing silence.  A session that drops without ``close`` (or
closes with reason ``reconnect``) leaves the call resumable: the next session for the
same conversation continues it.  A connection probe (all-zero conversation id) is
answered and creates no call.  The upgrade must be signed (see
:mod:`calltone.server.signature`); otherwise it is refused with HTTP 401.
"""

from __future__ import annotations

import json
import logging
import re
from typing import TYPE_CHECKING

import numpy as np
from starlette.websockets import WebSocket

from calltone.pii import mask_text
from calltone.pipeline import PipelineOptions
from calltone.server.ingest import Audio, Item, Language, Open, Refusal, Send, Skip, Stop, UpgradeRefused, decode
from calltone.events import valid_call_id
from calltone.server.protocol import Limits, ProtocolError
from calltone.server.signature import AudioHookVerifier, Nonces, SignatureError
from calltone.speech.audio import StreamDecoder, StreamFormat

if TYPE_CHECKING:
    from calltone.server.calls import LiveCall

log = logging.getLogger("calltone.server.audiohook")

VERSION = "2"
RATE = 8000
PROBE_ID = "00000000-0000-0000-0000-000000000000"
ROLES = {"external": "customer", "internal": "agent"}
FORMATS = {"PCMU": "mulaw", "L16": "pcm_s16le"}  # L16 as the reference implementation reads it: host (little-endian) order
CHANNEL_SETS = ({"external", "internal"}, {"external"}, {"internal"})
SUPPORTED_LANGUAGES = ("zh-CN", "en-US")  # what opened.supportedLanguages lists (zh-* and en-* are all accepted)
CLIENT_TYPES = ("open", "ping", "update", "paused", "resumed", "discarded", "error", "close")
_DURATION = re.compile(r"^PT(?:(\d{1,9})H)?(?:(\d{1,9})M)?(?:(\d{0,12}\.?\d{1,12})S)?$")  # bounded: finite seconds


def duration_s(value: object, what: str) -> float:
    """An ISO-8601 duration (``PT1.25S``) in seconds."""
    m = _DURATION.match(value) if isinstance(value, str) and value != "PT" else None
    if m is None:
        raise ProtocolError("bad_json", f"{what} must be an ISO-8601 duration such as PT1.2S, not {str(value)[:40]!r}")
    h, mi, s = m.groups()
    return int(h or 0) * 3600 + int(mi or 0) * 60 + float(s or 0)


def call_language(code: object) -> str:
    """A Genesys language code (``zh-CN``, ``cmn-CN``, ``en-US``) or calltone's own (zh, en, auto) as zh / en / auto."""
    prefix = str(code or "").split("-")[0].lower()
    return "zh" if prefix in ("zh", "cmn") else "en" if prefix == "en" else "auto"


def choose_media(offers: object) -> dict | None:
    """The offer to accept: 8 kHz PCMU or L16 with a known channel set; both parties before one, PCMU before L16."""
    usable = [m for m in offers if isinstance(m, dict) and m.get("type", "audio") == "audio"
              and str(m.get("format")) in FORMATS and m.get("rate") == RATE and isinstance(m.get("channels"), list)
              and len(set(map(str, m["channels"]))) == len(m["channels"])
              and set(map(str, m["channels"])) in CHANNEL_SETS] if isinstance(offers, list) else []
    return min(usable, key=lambda m: (-len(m["channels"]), m["format"] != "PCMU"), default=None)


class AudioHookProtocol:
    name = "audiohook"
    bulk_keys: frozenset[str] = frozenset()
    vanished_how = "interrupted"

    def __init__(self, verifier: AudioHookVerifier, nonces: Nonces, limits: Limits) -> None:
        self.verifier = verifier
        self.nonces = nonces
        self.limits = limits
        self.session_id = ""
        self.organization_id = ""
        self.correlation_id = ""
        self.state = "preparing"   # -> active <-> paused -> closed; "failed" after a disconnect
        self.seq = 0               # last server message sent
        self.client_seq = 0        # last client message processed
        self.probe = False
        self.list_languages = False  # the client asked for supportedLanguages in open
        self.media: dict | None = None
        self.decoder: StreamDecoder | None = None

    # -- upgrade ------------------------------------------------------------------------
    async def handshake(self, ws: WebSocket) -> None:
        if not self.verifier.configured:
            raise UpgradeRefused(401, "AudioHook is not enabled on this server (server.audiohook_keys is empty)")
        headers = {k: ", ".join(ws.headers.getlist(k)) for k in ws.headers.keys()}
        path = ws.scope.get("raw_path", ws.url.path.encode()).decode("latin-1")
        query = ws.scope.get("query_string", b"").decode("latin-1")
        try:
            signed = self.verifier.verify(headers, path + ("?" + query if query else ""))
        except SignatureError as e:
            log.warning("AudioHook upgrade refused: %s", e)
            raise UpgradeRefused(401, f"AudioHook signature refused: {e}") from None
        try:
            fresh = await self.nonces.use(signed.nonce)
        except Exception as e:  # noqa: BLE001 - the shared nonce store (Redis) is unreachable: fail closed
            log.warning("AudioHook upgrade refused: the nonce cannot be checked (%s)", e)
            raise UpgradeRefused(503, "AudioHook: the nonce cannot be checked right now; retry") from None
        if not fresh:
            log.warning("AudioHook upgrade refused: the nonce was already used (replayed request)")
            raise UpgradeRefused(401, "AudioHook signature refused: the nonce was already used (replayed request)")
        self.session_id = headers.get("audiohook-session-id", "")
        self.organization_id = headers.get("audiohook-organization-id", "")
        self.correlation_id = headers.get("audiohook-correlation-id", "")

    def accepted(self, ws: WebSocket) -> list[Item]:
        return []

    # -- messages -----------------------------------------------------------------------
    def _message(self, typ: str, parameters: dict | None = None) -> dict:
        self.seq += 1
        return {"version": VERSION, "type": typ, "seq": self.seq, "clientseq": self.client_seq, "id": self.session_id,
                "parameters": parameters or {}}

    def _check_envelope(self, msg: dict) -> dict:
        if msg.get("version") != VERSION:
            raise ProtocolError("invalid_start", f"AudioHook protocol version {msg.get('version')!r} is not supported; expected \"2\"")
        seq, serverseq = msg.get("seq"), msg.get("serverseq")
        if not isinstance(seq, int) or seq != self.client_seq + 1:
            raise ProtocolError("protocol_error", f"seq {seq!r} out of order; expected {self.client_seq + 1}")
        if not isinstance(serverseq, int) or not 0 <= serverseq <= self.seq:
            raise ProtocolError("protocol_error", f"serverseq {serverseq!r} is not a server message seq (last sent {self.seq})")
        if msg.get("id") != self.session_id:
            raise ProtocolError("protocol_error", "the message id is not this session's id (Audiohook-Session-Id)")
        if msg.get("type") not in CLIENT_TYPES:
            raise ProtocolError("unsupported_message", f"{str(msg.get('type'))[:40]!r} is not an AudioHook client message")
        params = msg.get("parameters")
        if not isinstance(params, dict):
            raise ProtocolError("bad_json", "parameters must be an object")
        duration_s(msg.get("position"), "position")
        self.client_seq = seq
        return params

    def text(self, msg: dict) -> list[Item]:
        if self.state == "failed":  # after a disconnect only the client's close matters
            if isinstance(msg.get("seq"), int):
                self.client_seq = msg["seq"]  # closed answers it: its clientseq is this message's seq
            return [Stop()] if msg.get("type") == "close" else []
        params = self._check_envelope(msg)
        typ = msg["type"]
        if typ == "open":
            return self._open(params)
        if self.state == "preparing":
            raise ProtocolError("protocol_error", f"{typ!r} before open")
        if typ == "ping":
            return [Send(self._message("pong"))]
        if typ == "update":
            return [Language(call_language(params.get("language"))), Send(self._message("updated"))]
        if typ == "paused":
            self.state = "paused"
            return []
        if typ in ("resumed", "discarded"):
            start = duration_s(params.get("start"), f"{typ}.start")
            gap = duration_s(params.get("discarded"), f"{typ}.discarded")
            log.info("AudioHook %s: %.3f s of audio %s at %.3f s", self.session_id, gap, typ, start)
            if typ == "resumed":
                self.state = "active"
            return [Skip(gap)] if gap > 0 and not self.probe else []
        if typ == "error":
            log.warning("AudioHook client %s reported error %s: %s", self.session_id, params.get("code"),
                        str(params.get("message"))[:200])
            return []
        self.state = "closed"  # close
        return [Stop("interrupted" if params.get("reason") == "reconnect" and not self.probe else "stopped")]

    def _open(self, params: dict) -> list[Item]:
        if self.state != "preparing":
            raise ProtocolError("protocol_error", "the session is already open")
        conversation_id = str(params.get("conversationId") or "")
        self.probe = conversation_id == PROBE_ID
        self.media = choose_media(params.get("media"))
        self.state = "active"
        self.list_languages = params.get("supportedLanguages") is True
        if self.probe:
            return [Send(self._opened())]
        if self.media is None:
            raise ProtocolError("unsupported_encoding", "no offered media is 8 kHz PCMU or L16 with external and/or internal channels")
        if str(params.get("organizationId") or "") != self.organization_id:
            raise ProtocolError("invalid_start", "organizationId does not match the Audiohook-Organization-Id header")
        if not valid_call_id(conversation_id):
            raise ProtocolError("bad_call_id", "conversationId is not a usable call id")
        roles = tuple(ROLES[c] for c in self.media["channels"])
        self.decoder = StreamDecoder(StreamFormat(FORMATS[self.media["format"]], RATE, len(roles), roles), strict=True)
        return [Open(conversation_id, self._options(params, list(roles)))]

    def _options(self, params: dict, roles: list[str]) -> PipelineOptions:
        custom = params.get("customConfig") if isinstance(params.get("customConfig"), dict) else {}
        agent_id = custom.get("agent_id")
        if agent_id is not None and not valid_call_id(str(agent_id)):
            raise ProtocolError("invalid_start", "customConfig.agent_id: letters, digits and . _ : @ - (1-128)")
        participant = params.get("participant") if isinstance(params.get("participant"), dict) else {}
        metadata = {"source": "audiohook", "organization_id": self.organization_id, "session_id": self.session_id,
                    "correlation_id": self.correlation_id,
                    **{k: mask_text(str(participant[k]))[0] for k in ("ani", "dnis") if participant.get(k)}}
        continued = params.get("continuedSessions")
        if isinstance(continued, list) and continued:
            metadata["continued_sessions"] = [str(c.get("id"))[:64] for c in continued if isinstance(c, dict)]
        if len(json.dumps(metadata)) > self.limits.max_metadata_bytes:
            raise ProtocolError("invalid_start", f"open parameters exceed {self.limits.max_metadata_bytes} bytes of metadata")
        language = custom.get("language") or params.get("language")
        return PipelineOptions(language=call_language(language), roles=roles,
                               agent_id=str(agent_id) if agent_id is not None else None, metadata=metadata)

    def _opened(self) -> dict:
        params: dict = {"media": [self.media] if self.media else [], "startPaused": False}
        if self.list_languages:
            params["supportedLanguages"] = list(SUPPORTED_LANGUAGES)
        return self._message("opened", params)

    def binary(self, data: bytes) -> list[Item]:
        if self.state != "active":
            raise ProtocolError("audio_before_start", f"audio received while the session is {self.state}")
        if self.probe or not data:
            return []
        assert self.decoder is not None
        return [Audio(decode(self.decoder, data))]

    def opened(self, live: "LiveCall") -> list[Item]:
        return [Send(self._opened())]

    def flush(self) -> dict[str, np.ndarray]:
        return self.decoder.flush() if self.decoder is not None else {}

    def refusal(self, err: ProtocolError) -> Refusal:
        reason = "unauthorized" if err.code in ("unauthorized", "forbidden") else "error"
        frame = self._message("disconnect", {"reason": reason, "info": f"{err.code}: {err.message}"[:500]})
        self.state = "failed"
        return Refusal([frame], err.close_code, err.code, linger_s=5.0)

    def farewell(self) -> list[dict]:
        return [self._message("closed")]
