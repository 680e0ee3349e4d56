"""Small helpers shared by the websocket handlers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Awaitable

from starlette.websockets import WebSocket, WebSocketState

from calltone.server.auth import WS_SCOPE, Principal
from calltone.server.calls import Services
from calltone.server.protocol import ProtocolError

log = logging.getLogger("calltone.server.ws")


def services(ws: WebSocket) -> Services:
    return ws.app.state.services


def ws_principal(ws: WebSocket, token: str | None = None) -> Principal | None:
    """Who opened ``ws``: ``token`` if given, else the Authorization header or a ticket (``?ticket=``)."""
    auth = ws.app.state.auth
    return auth.lookup(token or auth.token_from(ws.headers, ws.query_params), scope=WS_SCOPE)


def require(ws: WebSocket, permission: str, token: str | None = None) -> Principal:
    principal = ws_principal(ws, token)
    if principal is None:
        raise ProtocolError("unauthorized", "a valid bearer token (Authorization header) or ticket (?ticket= from "
                                            "POST /v1/ws-ticket) is required")
    if not principal.can(permission):
        raise ProtocolError("forbidden", f"role {principal.role!r} may not use this endpoint")
    return principal


async def refuse(ws: WebSocket, err: ProtocolError, *, json_frame: bool = True) -> None:
    """Send the error frame (unless told not to), then close with the error's code; never raises."""
    try:
        services(ws).metrics.ingest_errors.labels(err.code).inc()
    except Exception:
        pass
    if ws.client_state != WebSocketState.CONNECTED or ws.application_state != WebSocketState.CONNECTED:
        return
    try:
        if json_frame:
            await ws.send_json(err.frame())
        await ws.close(err.close_code, reason=err.code[:120])
    except Exception:  # the client may already be gone
        pass


async def close_ok(ws: WebSocket, reason: str = "") -> None:
    if ws.application_state == WebSocketState.CONNECTED:
        with contextlib.suppress(Exception):
            await ws.close(1000, reason=reason[:120])


async def until_disconnect(ws: WebSocket, work: Awaitable) -> None:
    """Run ``work`` (which sends) while reading and discarding client frames; stop at disconnect."""
    sender = asyncio.ensure_future(work)

    async def reader() -> None:
        while True:
            msg = await ws.receive()
            if msg["type"] == "websocket.disconnect":
                return

    rd = asyncio.ensure_future(reader())
    try:
        done, _ = await asyncio.wait({sender, rd}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (sender, rd):
            if not t.done():
                t.cancel()
        await asyncio.gather(sender, rd, return_exceptions=True)
    if sender in done and not sender.cancelled() and sender.exception() is not None:
        raise sender.exception()


class RateLimiter:
    """Token bucket on websocket messages."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = burst
        self.t = time.monotonic()

    def allow(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.t) * self.rate)
        self.t = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False
