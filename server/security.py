"""Browser-facing defences applied once, in front of every route (so new endpoints are covered):

* **Origin checks.**  A websocket upgrade or a state-changing request (anything but
  GET/HEAD/OPTIONS) that carries an ``Origin`` header is refused unless that origin is
  the service's own (scheme + ``Host``) or listed in ``server.allowed_origins``: a
  websocket handshake gets HTTP 403, a request 403 JSON.  No ``Origin`` (Twilio,
  Genesys, the CLI, curl) is allowed: only browsers send it, and they always do on
  these requests.  In dev mode (no tokens, every request admin) the ``Host`` must
  also be a loopback name, so a DNS-rebinding page cannot reach the open service.
* **Headers.**  Every response gets ``X-Content-Type-Options: nosniff``; every HTML
  response (pages, ``/docs``, batch reports) a Content-Security-Policy whose
  ``connect-src`` is the service's own origin and its ws/wss twin, ``frame-ancestors
  'none'`` with ``X-Frame-Options: DENY``, and ``Referrer-Policy: no-referrer``.
* **Log scrubbing.**  :class:`ScrubCredentials` on uvicorn's loggers replaces the values
  of ``token=`` / ``ticket=`` in logged URLs, whatever a client sent.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Iterable
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.responses import JSONResponse

from calltone.server.auth import is_loopback

if TYPE_CHECKING:
    from fastapi import FastAPI
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from calltone.server.auth import Authenticator
    from calltone.settings import Settings

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_DEFAULT_PORTS = {"http": 80, "https": 443}
_HOST_RE = re.compile(r"^[A-Za-z0-9.\-]+(:\d{1,5})?$|^\[[0-9A-Fa-f:.]+\](:\d{1,5})?$")
_CSP = ("default-src 'self'; script-src 'self'; connect-src 'self' {ws}; img-src 'self' data:; "
        "style-src 'self' 'unsafe-inline'; media-src 'self' blob:; object-src 'none'; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'")
_CREDENTIAL_RE = re.compile(r"(?i)\b(token|ticket)=[^&\s\"']+")
SCRUBBED_LOGGERS = ("uvicorn.access", "uvicorn.error")  # uvicorn logs websocket handshakes on uvicorn.error


def normalise_origin(origin: str) -> str | None:
    """``scheme://host[:port]`` in lower case without a default port, or None for ``null`` / nonsense."""
    try:
        u = urlsplit(origin.strip())
        port = u.port
    except ValueError:
        return None
    if u.scheme not in _DEFAULT_PORTS or not u.hostname:
        return None
    host = f"[{u.hostname}]" if ":" in u.hostname else u.hostname
    return f"{u.scheme}://{host}" + (f":{port}" if port and port != _DEFAULT_PORTS[u.scheme] else "")


def _own_origin(scope: "Scope", host: str | None) -> str | None:
    if not host or not _HOST_RE.match(host):
        return None
    scheme = {"ws": "http", "wss": "https"}.get(scope["scheme"], scope["scheme"])
    return normalise_origin(f"{scheme}://{host}")


def _hostname(host: str) -> str:
    return urlsplit(f"//{host}").hostname or ""


class SecurityMiddleware:
    """ASGI middleware: origin checks, dev-mode host check and security headers (see the module docstring)."""

    def __init__(self, app: "ASGIApp", allowed_origins: Iterable[str] = (), dev_mode: bool = False) -> None:
        self.app = app
        self.allowed = {o for o in (normalise_origin(x) for x in allowed_origins) if o}
        self.dev_mode = dev_mode

    def refusal(self, scope: "Scope", headers: Headers) -> str | None:
        """Why this request is refused, or None."""
        host = headers.get("host")
        if self.dev_mode and host is not None and not is_loopback(_hostname(host)):
            return f"dev mode (no server.tokens) answers only loopback host names, not {host!r}"
        origin = headers.get("origin")
        if origin is None or (scope["type"] == "http" and scope["method"] in SAFE_METHODS):
            return None
        seen = normalise_origin(origin)
        if seen is not None and (seen == _own_origin(scope, host) or seen in self.allowed):
            return None
        return f"cross-origin request from {origin!r} refused (same origin only; others in server.allowed_origins)"

    async def __call__(self, scope: "Scope", receive: "Receive", send: "Send") -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        why = self.refusal(scope, headers)
        if why is not None:
            if scope["type"] == "websocket":
                await receive()  # websocket.connect
                await send({"type": "websocket.close", "code": 1008, "reason": "forbidden_origin"})  # HTTP 403
            else:
                await JSONResponse({"detail": why}, status_code=403)(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await self.app(scope, receive, send)
            return
        csp = _CSP.format(ws=self._ws_origin(scope, headers.get("host")))

        async def send_with_headers(message: "Message") -> None:
            if message["type"] == "http.response.start":
                out = Headers(raw=message.get("headers", [])).mutablecopy()
                out.setdefault("x-content-type-options", "nosniff")
                if out.get("content-type", "").startswith("text/html"):
                    out.setdefault("content-security-policy", csp)
                    out.setdefault("x-frame-options", "DENY")
                    out.setdefault("referrer-policy", "no-referrer")
                message = {**message, "headers": out.raw}
            await send(message)

        await self.app(scope, receive, send_with_headers)

    @staticmethod
    def _ws_origin(scope: "Scope", host: str | None) -> str:
        own = _own_origin(scope, host)
        if own is None:
            return ""
        return own.replace("https://", "wss://", 1) if own.startswith("https://") else own.replace("http://", "ws://", 1)


class ScrubCredentials(logging.Filter):
    """Replace the values of ``token=`` and ``ticket=`` in a log record's message and arguments."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = scrub(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(scrub(a) if isinstance(a, str) else a for a in record.args)
        return True


def scrub(text: str) -> str:
    return _CREDENTIAL_RE.sub(lambda m: f"{m.group(1)}=[redacted]", text)


class DropDenialNoise(logging.Filter):
    """uvicorn (0.54, both websocket implementations) logs "ASGI callable returned without completing
    handshake." at ERROR after every upgrade refused with an HTTP response (``websocket.http.response``):
    a 401 for a bad AudioHook signature, a 403 for a forged Twilio signature or a foreign Origin.  Every
    calltone websocket endpoint either accepts or sends such a response, so the line is noise that would
    page whoever alerts on ERRORs; the refusal itself is logged (and counted in /metrics) by calltone."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "ASGI callable returned without completing handshake."


def install_log_scrubber() -> None:
    for name in SCRUBBED_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, ScrubCredentials) for f in logger.filters):
            logger.addFilter(ScrubCredentials())
    error_log = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, DropDenialNoise) for f in error_log.filters):
        error_log.addFilter(DropDenialNoise())


def install(app: "FastAPI", settings: "Settings", auth: "Authenticator") -> None:
    """Put the middleware in front of ``app`` and scrub credentials from uvicorn's logs."""
    app.add_middleware(SecurityMiddleware, allowed_origins=settings.server.allowed_origins, dev_mode=auth.dev_mode)
    install_log_scrubber()
