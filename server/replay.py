"""``calltone replay``: stream a recording into a server like a telephony client.

The file is read with soundfile at its native rate, encoded (µ-law by default) and
sent in 20 ms frames over ``WS /v1/calls/{call_id}/audio``, paced at ``speed`` x
real time (0 = as fast as the server takes it, in 200 ms frames).  The call's events
come back on the same socket (``"events": true``) and are printed one per line;
returns 0 after ``call.ended``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

from calltone.speech.audio import encode_pcm



class ReplayError(Exception):
    pass


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """``(frames x channels float32, rate)`` at the file's native rate; at most 2 channels (customer, agent)."""
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise ReplayError(f"{path}: no such file")
    try:
        x, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:  # noqa: BLE001
        raise ReplayError(f"{path.name}: cannot read audio ({e})") from None
    if x.shape[1] > 2:
        x = x[:, :2]
    if not 8000 <= rate <= 48000:
        raise ReplayError(f"{path.name}: sample rate {rate} Hz is outside 8000..48000")
    return np.ascontiguousarray(x), int(rate)


def format_event(ev: dict) -> str:
    """One readable line per event."""
    typ = ev.get("type", "?")
    t = ev.get("t", 0.0) or 0.0
    ch = ev.get("channel") or ""
    head = f"[{t:7.2f}] #{ev.get('seq', '-'):<4} {ch:>8}  "
    if typ == "transcript.final":
        return f"{head}FINAL    {ev.get('text', '')}"
    if typ == "transcript.partial":
        return f"{head}partial  {ev.get('text', '')}"
    if typ == "emotion.update":
        return f"{head}emotion  {ev.get('grade')} index={ev.get('index', 0):.0f} trend={ev.get('trend', 0):+.1f}/min"
    if typ == "guidance":
        card = ev.get("card") or {}
        return f"{head}guidance {card.get('title', '')}"
    if typ == "escalation.raised":
        return f"{head}ESCALATION {ev.get('alert_id')}: {ev.get('reason', '')}"
    if typ == "escalation.cleared":
        return f"{head}cleared  {ev.get('alert_id')}: {ev.get('reason', '')}"
    if typ == "call.started":
        return f"{head}call started: {ev.get('call_id')} language={ev.get('language')} agent={ev.get('agent_id')}"
    if typ == "call.ended":
        return f"{head}call ended: {json.dumps(ev.get('summary', {}), ensure_ascii=False)}"
    return f"{head}{typ} {json.dumps(ev, ensure_ascii=False)}"


async def stream_call(url: str, call_id: str, audio: np.ndarray, rate: int, *, encoding: str = "mulaw", speed: float = 1.0,
                      token: str | None = None, language: str = "auto", agent_id: str | None = None,
                      metadata: dict | None = None, on_event: Callable[[dict], None] | None = None,
                      on_send: Callable[[float, float], None] | None = None, frame_ms: float | None = None,
                      partials: bool = True) -> dict | None:
    """Stream ``audio`` (frames x channels float, at ``rate``) as one call; return the call.ended event (or None).
    When the server resumes the call (``started.resumed``), streaming starts at ``started.t_offset``.

    ``on_send(audio_end_s, monotonic_time)`` is called after each frame is sent (for latency measurements).
    """
    from websockets.asyncio.client import connect

    channels = audio.shape[1]
    roles = ["customer", "agent"][:channels]
    if frame_ms is None:
        frame_ms = 20.0 * max(1.0, speed / 2) if speed > 0 else 200.0
    step = max(1, int(rate * frame_ms / 1000))
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    ended: dict | None = None
    async with connect(f"{url.rstrip('/')}/v1/calls/{call_id}/audio", additional_headers=headers, max_size=None,
                       open_timeout=30) as ws:
        await ws.send(json.dumps({"type": "start", "sample_rate": rate, "encoding": encoding, "channels": channels,
                                  "channel_roles": roles, "language": language, "agent_id": agent_id,
                                  "metadata": metadata or {}, "events": True, "partials": partials}))
        first = json.loads(await ws.recv())
        if first.get("type") != "started":
            raise ReplayError(f"server refused the call: {first.get('code')}: {first.get('message')}")
        # a resumed call (after a server crash or restart) goes on from the audio the server had taken
        resume_at = int(round(float(first.get("t_offset") or 0.0) * rate)) if first.get("resumed") else 0

        async def receive() -> None:
            nonlocal ended
            async for raw in ws:
                ev = json.loads(raw)
                if ev.get("type") == "error":
                    raise ReplayError(f"server error: {ev.get('code')}: {ev.get('message')}")
                if on_event is not None:
                    on_event(ev)
                if ev.get("type") == "call.ended":
                    ended = ev
                    return

        receiver = asyncio.ensure_future(receive())
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        try:
            for i in range(resume_at, len(audio), step):
                if receiver.done():
                    break
                await ws.send(encode_pcm(audio[i : i + step], encoding))
                end_s = min(len(audio), i + step) / rate
                if on_send is not None:
                    on_send(end_s, time.monotonic())
                if speed > 0:
                    delay = t0 + (end_s - resume_at / rate) / speed - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
            if not receiver.done():
                await ws.send(json.dumps({"type": "stop"}))
            await receiver
        finally:
            if not receiver.done():
                receiver.cancel()
    return ended


async def replay(file: str, url: str = "ws://127.0.0.1:8000", speed: float = 1.0, token: str | None = None,
                 encoding: str = "mulaw", language: str = "auto", call_id: str | None = None, *,
                 agent_id: str | None = None, metadata: dict | None = None,
                 out: Callable[[str], None] | None = None) -> int:
    """Stream ``file`` into the server at ``url``; print the call's events; 0 once call.ended arrived."""
    from websockets.exceptions import InvalidStatus, WebSocketException

    def say(line: str) -> None:
        if out is not None:
            out(line)
        else:
            print(line, flush=True)

    try:
        audio, rate = read_audio(file)
    except ReplayError as e:
        print(f"calltone replay: {e}", file=sys.stderr)
        return 2
    if url.startswith("http"):
        url = "ws" + url[4:]
    call_id = call_id or f"{Path(file).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    say(f"# replaying {Path(file).name} ({len(audio) / rate:.1f} s, {audio.shape[1]} ch, {rate} Hz, {encoding}) "
        f"as call {call_id} at {'max' if speed <= 0 else f'{speed:g}x'} speed")
    try:
        ended = await stream_call(url, call_id, audio, rate, encoding=encoding, speed=speed, token=token, language=language,
                                  agent_id=agent_id, metadata=metadata, on_event=lambda ev: say(format_event(ev)))
    except ReplayError as e:
        print(f"calltone replay: {e}", file=sys.stderr)
        return 1
    except InvalidStatus as e:
        print(f"calltone replay: the server refused the websocket ({e})", file=sys.stderr)
        return 1
    except (OSError, WebSocketException) as e:
        code = getattr(getattr(e, "rcvd", None), "code", None)
        reason = getattr(getattr(e, "rcvd", None), "reason", "")
        print(f"calltone replay: connection to {url} failed: {reason or e}" + (f" (close {code})" if code else ""), file=sys.stderr)
        return 1
    return 0 if ended is not None else 1
