"""The live service: ``create_app(settings, runtime=None)`` and ``serve(settings, demo)``.

One process: FastAPI on uvicorn, the shared speech runtime (loaded in the
background; ``/readyz`` says when), SQLite in ``<data_dir>/calltone.db`` or the PostgreSQL database of
``server.database_url`` (``server/database.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import uvicorn
from fastapi import FastAPI, WebSocket
from fastapi.openapi.utils import get_openapi

from calltone.server import api, feeds, ingest, live, ops_api, pages, playback, readiness, search, security
from calltone.server.anomaly import anomaly_loop
from calltone.server.audiohook import AudioHookProtocol
from calltone.server.auth import Authenticator, ConfigError, check_bind
from calltone.server.bus import create_bus
from calltone.server.calls import Services
from calltone.server.database import open_repository
from calltone.server.native import NativeProtocol
from calltone.server.protocol import Limits
from calltone.server.retention import purge_expired, purge_loop  # noqa: F401 -- purge_expired: this module's API
from calltone.server.signature import AudioHookVerifier, LocalNonces, Nonces, RedisNonces
from calltone.server.twilio import TwilioProtocol
from calltone.server.metrics import Metrics
from calltone.server.store import AsyncStore
from calltone.server.webhooks import create_webhooks

if TYPE_CHECKING:
    from calltone.runtime import Runtime
    from calltone.settings import Settings

log = logging.getLogger("calltone.server")


def data_dir(settings: "Settings") -> Path:
    return Path(settings.server.data_dir or Path(settings.cache_dir) / "data")


def create_app(settings: "Settings", runtime: "Runtime | None" = None, *, limits: Limits | None = None,
               webhook_base_delay_s: float = 1.0, demo: bool = False) -> FastAPI:
    """Build the app.  With ``runtime=None`` the speech runtime is loaded in the background at startup
    (and closed at shutdown); a runtime passed in is shared and left open."""
    check_bind(settings.server.host, settings.server.tokens)
    auth = Authenticator(settings.server.tokens)
    try:
        audiohook = AudioHookVerifier(settings.server.audiohook_keys)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    nonces = RedisNonces(settings.server.bus_url) if settings.server.bus_url else LocalNonces()  # shared by the nodes
    owns_runtime = runtime is None

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        ddir = data_dir(settings)
        ddir.mkdir(parents=True, exist_ok=True)
        repo = await asyncio.to_thread(open_repository, settings.server.database_url, ddir)  # migrates to head
        log.info("store: %r at schema revision %s", repo, repo.revision)
        store = AsyncStore(repo)
        metrics = Metrics()
        bus = create_bus(settings.server)  # in-process, or Redis Streams with server.bus_url
        await bus.start()
        s = Services(settings, store, bus, metrics, runtime=runtime,
                     audio_dir=ddir / "audio", jobs_dir=ddir / "jobs")
        s.webhooks = create_webhooks(settings.server, store, metrics, webhook_base_delay_s)  # Redis too with bus_url
        await s.webhooks.start()
        _attach_gauges(s)
        s.jobs.start()  # claims unfinished jobs in the store (this node's or a dead node's)
        app.state.services = s
        app.state.loop = asyncio.get_running_loop()
        await s.registry.start()  # calls left live by nodes that are gone become interrupted (server/ownership.py)
        tasks: list[asyncio.Task] = [asyncio.ensure_future(purge_loop(s)), asyncio.ensure_future(anomaly_loop(s))]
        if s.runtime is None:
            tasks.append(asyncio.ensure_future(_load_runtime(s)))
        if demo:
            from calltone.server.demo import run_demo

            tasks.append(asyncio.ensure_future(run_demo(s, app.state.demo_tokens)))
        if auth.dev_mode:
            log.warning("no server.tokens configured: DEV MODE, every request is treated as admin (loopback only)")
        try:
            yield
        finally:
            s.registry.draining = True
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await s.registry.finish_all("shutdown")
            await s.registry.close()
            await s.jobs.close()
            await s.webhooks.close()
            await bus.close()
            await nonces.close()
            await asyncio.to_thread(store.close)
            if owns_runtime and s.runtime is not None:
                await asyncio.to_thread(s.runtime.close)

    app = FastAPI(title="calltone", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None,  # /docs: pages.py
                  description="Live call transcription and emotion grading. Websocket endpoints are listed with the "
                              "`websocket` tag; see docs/api.md for their protocols and close codes.")
    app.state.auth = auth
    app.state.limits = limits or Limits()
    app.state.settings = settings
    app.state.demo_tokens = {}
    app.include_router(api.router)
    app.include_router(readiness.router)  # GET /readyz, POST /v1/drain
    app.include_router(ops_api.router)  # GET /v1/kpis, GET /v1/anomalies
    app.include_router(playback.router)  # call audio with ranges, the audio access log
    app.include_router(search.router)  # GET /v1/search
    app.include_router(live.router)  # the wallboard's websocket, GET /v1/live
    pages.install(app)  # /agent, /supervisor, /qa, /docs and /static
    security.install(app, settings, auth)  # origin checks, security headers, credentials scrubbed from the logs

    _install_websockets(app, settings, audiohook, nonces)
    _install_openapi(app)
    return app


def _install_websockets(app: FastAPI, settings: "Settings", audiohook: AudioHookVerifier, nonces: Nonces) -> None:
    """The websocket endpoints: three ingest protocols on the one ingest loop, and the two feeds."""

    @app.websocket("/v1/calls/{call_id}/audio")
    async def ws_audio(websocket: WebSocket, call_id: str) -> None:
        await ingest.serve(websocket, NativeProtocol(call_id, app.state.limits, settings.server.max_frame_bytes))

    @app.websocket("/v1/twilio")
    async def ws_twilio(websocket: WebSocket) -> None:
        await ingest.serve(websocket, TwilioProtocol(websocket, settings.server, app.state.limits))

    @app.websocket("/v1/audiohook")
    async def ws_audiohook(websocket: WebSocket) -> None:
        await ingest.serve(websocket, AudioHookProtocol(audiohook, nonces, app.state.limits))

    @app.websocket("/v1/calls/{call_id}/events")
    async def ws_events(websocket: WebSocket, call_id: str, after: int = 0) -> None:
        await feeds.call_events(websocket, call_id, after)

    @app.websocket("/v1/alerts")
    async def ws_alerts(websocket: WebSocket) -> None:
        await feeds.alerts_feed(websocket)


def _install_openapi(app: FastAPI) -> None:
    """OpenAPI with the websocket endpoints documented too (FastAPI leaves them out)."""

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            paths = schema.setdefault("paths", {})
            for path, doc in _WS_DOCS.items():
                if path in paths:  # same path as a REST route: document the websocket alongside
                    paths[path]["x-websocket"] = doc["get"]
                else:
                    paths[path] = doc
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


async def _load_runtime(s: Services) -> None:
    from calltone.runtime import Runtime

    t0 = time.perf_counter()
    try:
        s.runtime = await asyncio.to_thread(Runtime.create, s.settings)
    except Exception:
        log.exception("loading the speech runtime failed; /readyz stays 503")
        return
    log.info("speech runtime ready (%s) in %.1f s", s.settings.asr.model, time.perf_counter() - t0)


def _attach_gauges(s: Services) -> None:
    m = s.metrics

    def asr(field: str):
        def read() -> float:
            if s.runtime is None:
                return 0.0
            return float(getattr(s.runtime.asr.snapshot(), field))
        return read

    m.gauge("calltone_active_calls", "Calls streaming audio now", lambda: len(s.registry))
    m.gauge("calltone_ready", "1 when the speech model is loaded", lambda: 1.0 if s.ready else 0.0)
    cap = s.admission.policy.capacity
    m.gauge("calltone_call_capacity", "Live calls this node takes (server.max_calls; +Inf: no limit)",
            lambda: math.inf if cap is None else float(cap))
    m.gauge("calltone_call_headroom", "Calls this node may still take: capacity minus live calls", lambda: s.admission.headroom)
    m.gauge("calltone_asr_lag_seconds", "Age of the oldest queued ASR job", lambda: s.runtime.asr.lag_s() if s.runtime else 0.0)
    m.gauge("calltone_asr_partials_dropped", "Partial decodes skipped because the ASR queue was behind (total)",
            asr("dropped_partials"))
    m.gauge("calltone_asr_partials_superseded", "Queued partial decodes replaced by a newer one (total)", asr("superseded_partials"))
    m.gauge("calltone_asr_decoded_finals", "Final decodes done (total)", asr("decoded_finals"))
    m.gauge("calltone_asr_decoded_partials", "Partial decodes done (total)", asr("decoded_partials"))
    m.gauge("calltone_asr_busy_seconds", "Seconds the ASR worker spent decoding (total)", asr("busy_s"))
    m.gauge("calltone_asr_queued_finals", "Final decodes waiting", asr("queued_finals"))
    m.gauge("calltone_subscribers", "Connected event/alert feed subscribers", lambda: s.bus.subscriber_count())
    m.gauge("calltone_subscriber_events_dropped", "Partials/emotion updates dropped for lagging subscribers (total)",
            lambda: s.bus.stats.dropped)
    m.gauge("calltone_subscriber_events_coalesced", "Partials/emotion updates coalesced for lagging subscribers (total)",
            lambda: s.bus.stats.coalesced)
    m.gauge("calltone_subscribers_cut_off", "Subscribers disconnected for falling too far behind (total)",
            lambda: s.bus.stats.overflowed)
    m.gauge("calltone_store_queue", "Store writes waiting", lambda: s.store.pending)
    m.gauge("calltone_store_write_batches", "Store write transactions (total)", lambda: s.store.write_batches)
    m.gauge("calltone_store_write_errors", "Store writes that failed (total)", lambda: s.store.write_errors)


# --------------------------------------------------------------------------- running


class Server(uvicorn.Server):
    """uvicorn.Server that marks the app as draining before connections are closed, so producers
    cut off by the shutdown leave their calls *interrupted* (resumable) rather than ended."""

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self._app = app

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        if threading.current_thread() is threading.main_thread():  # `calltone serve`: SIGUSR1 starts a drain
            signal.signal(signal.SIGUSR1, self._drain)

    def _drain(self, signum: int, frame: object) -> None:
        s = getattr(self._app.state, "services", None)
        if s is not None:
            s.registry.draining = True
            log.warning("SIGUSR1: draining (no new calls, /readyz 503; %d live call(s) carry on)", len(s.registry))

    async def shutdown(self, sockets=None) -> None:
        s = getattr(self._app.state, "services", None)
        if s is not None:
            s.registry.draining = True
        await super().shutdown(sockets)


def uvicorn_config(app: FastAPI, settings: "Settings", **kw) -> uvicorn.Config:
    opts = dict(host=settings.server.host, port=settings.server.port, lifespan="on", log_level="info",
                ws_max_size=max(1 << 20, 2 * settings.server.max_frame_bytes), ws_ping_interval=20.0, ws_ping_timeout=20.0,
                proxy_headers=bool(settings.server.trusted_proxies),
                forwarded_allow_ips=",".join(settings.server.trusted_proxies) or None, server_header=False)
    opts.update(kw)
    return uvicorn.Config(app, **opts)


class ServerThread:
    """Run the service in a background thread (tests, benchmarks): ``with ServerThread(app, settings) as srv: srv.url``."""

    def __init__(self, app: FastAPI, settings: "Settings", port: int = 0, **config) -> None:
        import socket

        if port == 0:
            with socket.socket() as sock:
                sock.bind((settings.server.host, 0))
                port = sock.getsockname()[1]
        self.app = app
        self.port = port
        self.host = settings.server.host
        self.server = Server(uvicorn_config(app, settings, port=port, log_level=config.pop("log_level", "warning"), **config), app)
        self.thread = threading.Thread(target=self.server.run, name="calltone-uvicorn", daemon=True)

    @property
    def http(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://{self.host}:{self.port}"

    def start(self, timeout: float = 60.0) -> "ServerThread":
        self.thread.start()
        t0 = time.monotonic()
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("server thread died during startup")
            if time.monotonic() - t0 > timeout:
                raise TimeoutError("server did not start")
            time.sleep(0.02)
        return self

    def wait_ready(self, timeout: float = 120.0) -> "ServerThread":
        t0 = time.monotonic()
        while not getattr(self.app.state, "services", None) or not self.app.state.services.ready:
            if time.monotonic() - t0 > timeout:
                raise TimeoutError("speech runtime did not load")
            time.sleep(0.05)
        return self

    def call(self, fn, *args, timeout: float = 30.0):
        """Run ``fn(*args)`` (a plain function or a coroutine function) on the server's event loop; return its result."""
        loop = self.app.state.loop

        async def runner():
            out = fn(*args)
            if asyncio.iscoroutine(out):
                out = await out
            return out

        return asyncio.run_coroutine_threadsafe(runner(), loop).result(timeout)

    @property
    def services(self) -> Services:
        return self.app.state.services

    def stop(self, timeout: float = 60.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)

    def __enter__(self) -> "ServerThread":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def serve(settings: "Settings", demo: bool = False) -> int:
    """``calltone serve``: run until interrupted.  Returns the exit status."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    tokens_made: dict[str, str] = {}
    if demo and not settings.server.tokens:
        from calltone.server.demo import make_tokens

        tokens_made = make_tokens()
        settings.server.tokens = dict(tokens_made)
    try:
        app = create_app(settings, demo=demo)
    except ConfigError as e:
        print(f"calltone serve: {e}", file=sys.stderr)
        return 2
    if demo:
        from calltone.server.demo import demo_banner, ingest_token

        app.state.demo_tokens = {"ingest": ingest_token(settings.server.tokens)}
        print(demo_banner(settings, tokens_made or settings.server.tokens), flush=True)
    elif not settings.server.tokens:
        print(f"calltone: DEV MODE (no tokens configured): every request is admin; listening on "
              f"http://{settings.server.host}:{settings.server.port} only", file=sys.stderr, flush=True)
    server = Server(uvicorn_config(app, settings), app)
    try:
        server.run()
    except KeyboardInterrupt:
        return 130
    return 0


_WS_DOCS = {
    "/v1/calls/{call_id}/audio": {"get": {
        "tags": ["websocket"], "summary": "WebSocket: stream one call's audio (native protocol)",
        "description": "Upgrade to a websocket. First text frame {\"type\":\"start\",\"sample_rate\":8000,\"encoding\":"
                       "\"mulaw|alaw|pcm_s16le|f32le\",\"channels\":2,\"channel_roles\":[\"customer\",\"agent\"],"
                       "\"language\":\"zh|en|auto\",\"agent_id\":\"...\",\"metadata\":{},\"events\":false}; the server answers "
                       "{\"type\":\"started\",...}. Then binary frames of interleaved samples (whole sample frames, at most "
                       "server.max_frame_bytes), then {\"type\":\"stop\"}. Errors: {\"type\":\"error\",\"code\",\"message\"} "
                       "then a close code (1002, 1003, 1007, 1008, 1009, 1011, 1013, 4409, 4429; see docs/api.md). "
                       "Role: ingest or admin.",
        "parameters": [{"name": "call_id", "in": "path", "required": True, "schema": {"type": "string"}},
                       {"name": "ticket", "in": "query", "required": False, "schema": {"type": "string"},
                        "description": "single-use ticket from POST /v1/ws-ticket (or send Authorization: Bearer)"}],
        "responses": {"101": {"description": "Switching Protocols"}}}},
    "/v1/twilio": {"get": {
        "tags": ["websocket"], "summary": "WebSocket: Twilio Media Streams (<Stream url=\"wss://host/v1/twilio\">)",
        "description": "Twilio's connected/start/media/mark/dtmf/stop messages. inbound track -> customer, outbound -> agent. "
                       "customParameters: token, agent_id, language (zh|en|auto), call_id (default callSid). Role: ingest. "
                       "With server.twilio_auth_token set, the upgrade must carry a valid X-Twilio-Signature (else 403).",
        "responses": {"101": {"description": "Switching Protocols"}, "403": {"description": "bad X-Twilio-Signature"}}}},
    "/v1/audiohook": {"get": {
        "tags": ["websocket"], "summary": "WebSocket: Genesys Cloud AudioHook (protocol version 2)",
        "description": "AudioHook Monitor: open/opened (8 kHz PCMU or L16; external -> customer, internal -> agent), "
                       "ping/pong, update/updated, paused/resumed/discarded, close/closed, disconnect. The upgrade must "
                       "carry X-API-KEY and an HTTP message signature (hmac-sha256 with the client secret of "
                       "server.audiohook_keys); otherwise 401. The call id is the conversationId. See docs/api.md.",
        "responses": {"101": {"description": "Switching Protocols"}, "401": {"description": "missing or bad signature"}}}},
    "/v1/calls/{call_id}/events": {"get": {
        "tags": ["websocket"], "summary": "WebSocket: one call's events (stored ones after `after`, then live)",
        "description": "Each text frame is one event (calltone.events schema) with seq and server_time. Reconnect with "
                       "?after=<last seq seen> to get exactly what was missed. Closes 1000 after call.ended; 4408 if the "
                       "client falls too far behind. Roles: agent (own calls), supervisor, qa, admin.",
        "parameters": [{"name": "call_id", "in": "path", "required": True, "schema": {"type": "string"}},
                       {"name": "after", "in": "query", "required": False, "schema": {"type": "integer", "default": 0}},
                       {"name": "ticket", "in": "query", "required": False, "schema": {"type": "string"},
                        "description": "single-use ticket from POST /v1/ws-ticket (or send Authorization: Bearer)"}],
        "responses": {"101": {"description": "Switching Protocols"}}}},
    "/v1/alerts": {"get": {
        "tags": ["websocket"], "summary": "WebSocket: supervisor alert feed (all calls)",
        "description": "On connect the open alerts (replay: true), then escalation.raised / escalation.cleared / alert.acked "
                       "messages (AlertMessage: alert_id, call_id, agent_id, reason, evidence, excerpt, status). "
                       "Roles: supervisor, admin. (Plain GET without upgrade: see GET /v1/alerts list below.)",
        "responses": {"101": {"description": "Switching Protocols"}}}},
    "/v1/live": {"get": {
        "tags": ["websocket"], "summary": "WebSocket: the wallboard, call-level state of every live call (server/live.py)",
        "description": "A live.snapshot frame {type, at, calls: [CallState]}, then live.update frames with the calls that "
                       "changed, at most one frame a second. CallState: call_id, status (live, ended, interrupted), "
                       "agent_id, queue, started_at, grade, index, trend, t, alerts_open. Roles: supervisor, admin.",
        "responses": {"101": {"description": "Switching Protocols"}}}},
}
