"""Playing a call back: its audio over HTTP with range requests, for roles that may read the call, and the audio
access log (every response that carried audio: who, when, which call, which rendition and range).

A call has audio when it was kept (``privacy.keep_audio``: ``<audio_dir>/<call_id>/<role>-<session>.wav``, see
``server/audiokeeper.py``) or when a scoring job made it from a recording the server can still read (the job
item's ``file``).  Renditions (``kind``): ``stereo`` (kept audio: customer left, agent right; a recording: the
file as it is) and one speaker, ``customer`` or ``agent`` (a mono recording has only ``customer``, the one
speaker it was scored as).  What is not a file already is made once, off the event loop, beside the kept audio
(``playback-<kind>.wav``: the retention purge removes it with the call's folder) and made again when a source
is newer.  Browsers cannot send a bearer header from ``<audio>``: the page asks ``POST
/v1/calls/{id}/playback-ticket`` for a ticket valid for that call's audio only, for :data:`AUDIO_TICKET_TTL_S`.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import soundfile as sf
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel, Field
from starlette.responses import FileResponse
from starlette.types import Message, Receive, Scope, Send

from calltone.server.api import _checked, principal
from calltone.server.auth import Authenticator, Principal

if TYPE_CHECKING:
    from calltone.server.calls import Services

router = APIRouter()

Kind = Literal["stereo", "customer", "agent"]
ROLES: tuple[Kind, Kind] = ("customer", "agent")
AUDIO_TICKET_TTL_S = 600.0  # one review session; a page asks again when it runs out
CACHE_PREFIX = "playback-"  # renditions made for playback, beside the kept audio
MEDIA_TYPES = {".wav": "audio/wav", ".flac": "audio/flac", ".mp3": "audio/mpeg", ".ogg": "audio/ogg",
               ".opus": "audio/ogg", ".m4a": "audio/mp4"}
LOGGED_STATUSES = frozenset({200, 206})  # a response that carried audio (not 416, not a refusal)


def audio_scope(call_id: str) -> str:
    """Scope of the tickets that play one call's audio."""
    return f"audio:{call_id}"


# --------------------------------------------------------------------------- where a call's audio is


@dataclass(frozen=True)
class Playable:
    """A call's audio as the server has it."""

    source: Literal["kept", "recording"]
    kinds: tuple[Kind, ...]
    kept: dict[str, list[Path]]  # kept audio: role -> session files in order
    recording: Path | None = None
    channels: dict[str, int] | None = None  # a recording: role -> channel index (None: mono)


def locate(folder: Path, recording: dict | None) -> Playable | None:
    """The call's audio: kept audio in ``folder`` first, else the scored recording if it is still there."""
    kept = {r: sorted(p for p in folder.glob(f"{r}-*.wav")) for r in ROLES} if folder.is_dir() else {}
    kept = {r: files for r, files in kept.items() if files}
    if kept:
        kinds = (("stereo",) if len(kept) == len(ROLES) else ()) + tuple(r for r in ROLES if r in kept)
        return Playable("kept", kinds, kept)
    if recording is None or not Path(recording["file"]).is_file():
        return None
    path = Path(recording["file"])
    options = recording.get("options") or {}
    if options.get("mono") or sf.info(str(path)).channels == 1:
        return Playable("recording", ("customer",), {}, path, None)
    customer = int(options.get("customer_channel", 0))
    return Playable("recording", ("stereo", *ROLES), {}, path, {"customer": customer, "agent": 1 - customer})


def render(folder: Path, audio: Playable, kind: Kind) -> Path:
    """The file to serve for ``kind`` (made, or made again, when it is not a source file itself)."""
    if audio.recording is not None and (kind == "stereo" or audio.channels is None):
        return audio.recording
    if audio.source == "kept" and kind != "stereo" and len(audio.kept[kind]) == 1:
        return audio.kept[kind][0]
    sources = [audio.recording] if audio.recording is not None else [p for files in audio.kept.values() for p in files]
    target = folder / f"{CACHE_PREFIX}{kind}.wav"
    if target.exists() and target.stat().st_mtime >= max(p.stat().st_mtime for p in sources):
        return target
    if audio.recording is not None:
        assert audio.channels is not None
        data, rate = sf.read(str(audio.recording), dtype="int16", always_2d=True)
        samples = data[:, audio.channels[kind]]
    elif kind == "stereo":
        rate, tracks = 16000, [_joined(audio.kept[r]) for r in ROLES]
        n = max(len(x) for x in tracks)
        samples = np.stack([np.pad(x, (0, n - len(x))) for x in tracks], axis=1)
    else:
        rate, samples = 16000, _joined(audio.kept[kind])
    folder.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".{os.getpid()}.{time.monotonic_ns()}.part")
    sf.write(str(partial), samples, rate, subtype="PCM_16", format="WAV")
    os.replace(partial, target)  # two requests making it at once both serve a whole file
    return target


def _joined(files: list[Path]) -> np.ndarray:
    """A role's kept sessions, one after another (a resumed call goes on where the audio stopped)."""
    return np.concatenate([sf.read(str(p), dtype="int16")[0] for p in files])


# --------------------------------------------------------------------------- serving it, logged


class LoggedAudio(FileResponse):
    """A FileResponse (ranges: 206, Content-Range, Accept-Ranges, 416) that logs what it sent to the access log."""

    def __init__(self, path: Path, services: "Services", who: Principal, call_id: str, kind: Kind,
                 byte_range: str | None) -> None:
        super().__init__(path, media_type=MEDIA_TYPES.get(path.suffix.lower(), "application/octet-stream"),
                         headers={"Cache-Control": "private, no-store"})
        self.services, self.who, self.call_id, self.kind, self.byte_range = services, who, call_id, kind, byte_range

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def logged_first(message: Message) -> None:
            """The access is committed to the log before any audio leaves: a response the log lacks is never sent."""
            if (message["type"] == "http.response.start" and message["status"] in LOGGED_STATUSES
                    and scope.get("method") == "GET"):
                length = dict(message.get("headers", [])).get(b"content-length", b"0")
                entry = {"id": uuid.uuid4().hex, "at": round(time.time(), 3), "principal": self.who.name,
                         "role": self.who.role, "call_id": self.call_id, "kind": self.kind, "byte_range": self.byte_range,
                         "status": message["status"], "bytes": int(length)}
                await self.services.store.write(lambda r: r.log_audio_access(entry))
            await send(message)

        await super().__call__(scope, receive, logged_first)


class AudioTicket(BaseModel):
    ticket: str = Field(description="add ?ticket=<ticket> to the audio URL; valid for this call's audio only, many "
                                    "times, for expires_in seconds")
    expires_in: int
    source: Literal["kept", "recording"] = Field(description="kept: privacy.keep_audio; recording: the file a "
                                                             "scoring job read")
    kinds: list[Kind] = Field(description="the renditions this call has (GET .../playback?kind=)")


class AudioAccess(BaseModel):
    id: str
    at: float = Field(description="Unix seconds")
    principal: str = Field(description="role:id of the token or ticket")
    role: str
    call_id: str
    kind: Kind
    byte_range: str | None = Field(None, description="the Range header asked for (None: the whole file)")
    status: int = Field(description="200 or 206")
    bytes: int = Field(description="bytes of audio in the response (its Content-Length; logged before they are sent)")


class AudioAccessList(BaseModel):
    entries: list[AudioAccess]
    total: int
    limit: int
    offset: int


def _services(request: Request) -> "Services":
    return request.app.state.services


async def _readable(s: "Services", who: Principal, call_id: str) -> tuple[dict, Playable]:
    """The call's row and audio, if ``who`` may read the call and it has audio (else the HTTP error to answer)."""
    row, recording = await s.store.read(lambda r: (r.get_call(call_id), r.recording_of(call_id)))
    access = who.call_access(row is not None, row["agent_id"] if row is not None else None)
    if access == "not_found":
        raise HTTPException(404, f"no call {call_id}")
    if access == "forbidden":  # the same answer for another agent's call and an unknown id
        raise HTTPException(403, f"call {call_id} is not one of your calls")
    if row["status"] == "live":
        raise HTTPException(409, f"call {call_id} is still live: its audio can be played once it has ended")
    audio = await asyncio.to_thread(locate, _folder(s, call_id), recording)
    if audio is None:
        raise HTTPException(404, f"call {call_id} has no audio (kept only with privacy.keep_audio, or a scored "
                                 "recording the server can still read)")
    return row, audio


def _folder(s: "Services", call_id: str) -> Path:
    if s.audio_dir is None:
        raise HTTPException(404, "this server keeps no audio")
    return s.audio_dir / call_id


@router.post("/v1/calls/{call_id}/playback-ticket", response_model=AudioTicket, tags=["calls"],
             summary="A ticket that plays this call's audio in a browser (<audio src=...?ticket=>)")
async def audio_ticket(call_id: str, request: Request, who: Principal = Depends(principal("read_calls"))) -> AudioTicket:
    _, audio = await _readable(_services(request), who, call_id)
    ticket = request.app.state.auth.tickets.issue(who, audio_scope(call_id), AUDIO_TICKET_TTL_S, single_use=False)
    return AudioTicket(ticket=ticket, expires_in=int(AUDIO_TICKET_TTL_S), source=audio.source, kinds=list(audio.kinds))


@router.get("/v1/calls/{call_id}/playback", tags=["calls"], response_class=FileResponse,
            summary="The call's audio (range requests); every response with audio is in the access log",
            responses={206: {"description": "the range asked for"}, 416: {"description": "a range outside the file"}})
async def call_audio(call_id: str, request: Request, kind: Kind = Query("stereo"),
                     ticket: str | None = Query(None, description="from POST /v1/calls/{id}/playback-ticket (or send "
                                                                  "Authorization: Bearer)")) -> LoggedAudio:
    auth: Authenticator = request.app.state.auth
    who = _checked(auth.lookup(auth.bearer(request.headers)) or
                   (auth.tickets.redeem(ticket, audio_scope(call_id)) if ticket else None), "read_calls")
    s = _services(request)
    if not await s.store.probe():  # audio is served only when its access can be logged
        raise HTTPException(503, "the store cannot write, so the access cannot be logged: try again later")
    _, audio = await _readable(s, who, call_id)
    if kind not in audio.kinds:
        raise HTTPException(404, f"call {call_id} has no {kind} audio (it has: {', '.join(audio.kinds)})")
    path = await asyncio.to_thread(render, _folder(s, call_id), audio, kind)
    return LoggedAudio(path, s, who, call_id, kind, request.headers.get("range"))


@router.get("/v1/audit/audio", response_model=AudioAccessList, tags=["audit"],
            summary="The audio access log, newest first (admins)")
async def audio_log(request: Request, call_id: str | None = Query(None), limit: int = Query(100, ge=1, le=1000),
                    offset: int = Query(0, ge=0), who: Principal = Depends(principal("operate"))) -> AudioAccessList:
    rows, total = await _services(request).store.read(lambda r: r.audio_accesses(call_id, limit, offset))
    return AudioAccessList(entries=[AudioAccess(**r) for r in rows], total=total, limit=limit, offset=offset)
