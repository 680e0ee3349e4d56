"""``calltone serve --demo``: the sample calls stream into the service in a loop,
through the real ingest websocket, at real time, alternating Mandarin and English."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING

from calltone.server.auth import is_loopback

if TYPE_CHECKING:
    from calltone.server.calls import Services
    from calltone.settings import Settings

log = logging.getLogger("calltone.server.demo")

DEMO_AGENT = "agent-001"
SAMPLES = Path(__file__).resolve().parents[1] / "samples"


def make_tokens() -> dict[str, str]:
    """One random token per role."""
    specs = ["ingest", f"agent:{DEMO_AGENT}", "supervisor:demo-supervisor", "qa:demo-qa", "admin:demo-admin"]
    return {secrets.token_urlsafe(18): spec for spec in specs}


def ingest_token(tokens: dict[str, str]) -> str | None:
    for role in ("ingest", "admin"):
        for token, spec in tokens.items():
            if spec.split(":")[0] == role:
                return token
    return None


def _base(settings: "Settings") -> tuple[str, str]:
    host = settings.server.host
    if not is_loopback(host):
        host = "127.0.0.1"
    return f"http://{host}:{settings.server.port}", f"ws://{host}:{settings.server.port}"


def demo_banner(settings: "Settings", tokens: dict[str, str]) -> str:
    """What ``calltone serve --demo`` prints: links that work in a browser (the pages sign in from their
    ``#token=``; the docs and health checks need no token), and the API calls as commands with their header
    (a browser's address bar cannot send ``Authorization``, so an API URL opened there answers 401)."""
    http, ws = _base(settings)
    by_role: dict[str, str] = {}  # the first token of each role, by its spec
    for token, spec in sorted(tokens.items(), key=lambda kv: kv[1]):
        by_role.setdefault(spec.split(":")[0], token)

    def page(path: str, role: str) -> str:
        token = by_role.get(role)
        return f"{http}{path}" + (f"#token={token}" if token else "")  # a fragment never reaches a server or its logs

    reader = by_role.get("supervisor") or by_role.get("admin") or "<token>"
    lines = ["", "calltone demo: the sample calls stream in a loop (demo-zh-<run>-N, demo-en-<run>-N)", "",
             "  in a browser (each link signs its page in):",
             f"  agent desktop   {page('/agent', 'agent')}",
             f"  supervisor      {page('/supervisor', 'supervisor')}",
             f"  QA              {page('/qa', 'qa')}",
             f"  API docs        {http}/docs   (\"Try it out\" sends the token of a page signed in in the same tab)",
             f"  health          {http}/healthz   ready: {http}/readyz   (no token needed)", "",
             "  the API needs the header 'Authorization: Bearer <token>' (a browser's address bar sends none: 401), e.g.",
             f"  calls           curl -H 'Authorization: Bearer {reader}' {http}/v1/calls",
             f"  metrics         curl -H 'Authorization: Bearer {reader}' {http}/metrics",
             f"  call events     {ws}/v1/calls/<call_id>/events?after=0   alert feed  {ws}/v1/alerts",
             "                  (websockets: the Authorization header, or ?ticket= from POST /v1/ws-ticket)",
             "", "  tokens:"]
    for token, spec in sorted(tokens.items(), key=lambda kv: kv[1]):
        lines.append(f"    {spec:<28} {token}")
    lines.append("")
    return "\n".join(lines)


def _sidecar(path: Path) -> dict:
    try:
        return json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


async def run_demo(s: "Services", tokens: dict[str, str], pause_s: float = 2.0) -> None:
    from calltone.server.replay import ReplayError, read_audio, stream_call

    _, ws = _base(s.settings)
    token = tokens.get("ingest")
    while not s.ready:
        await asyncio.sleep(0.2)
    files = [SAMPLES / "demo_zh.wav", SAMPLES / "demo_en.wav"]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        log.error("demo: sample calls not found: %s", ", ".join(missing))
        return
    n = 0
    run = time.strftime("%m%d%H%M%S")  # call ids are kept: a second `make run` on the same data dir needs new ones
    while True:
        for path in files:
            n += 1
            meta = _sidecar(path)
            lang = meta.get("language", "auto")
            call_id = f"demo-{lang}-{run}-{n}"
            try:
                audio, rate = read_audio(path)
                log.info("demo: streaming %s as %s", path.name, call_id)
                await stream_call(ws, call_id, audio, rate, speed=1.0, token=token, language=lang, agent_id=DEMO_AGENT,
                                  metadata={"demo": True, "sample": path.name})
            except asyncio.CancelledError:
                raise
            except (ReplayError, OSError, Exception) as e:  # noqa: BLE001 - keep the demo looping
                log.warning("demo call %s failed: %s", call_id, e)
                await asyncio.sleep(5)
            await asyncio.sleep(pause_s)
