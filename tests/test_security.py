"""Credentials and browsers, against a real server on loopback: tickets instead of tokens in URLs, an access log
without credentials, scoped report cookies, Origin checks, security headers, an offline /docs and call-id probing."""

from __future__ import annotations

import http.client
import json
import logging
import socket
import time
import uuid
from pathlib import Path

import pytest
import soundfile as sf
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from calltone.server.app import ServerThread, create_app
from calltone.server.demo import demo_banner
from calltone.server.security import SCRUBBED_LOGGERS
from calltone.settings import ServerSettings, Settings

from .conftest import REPO
from .test_server import AGENT1, AGENT2, INGEST, QA, SUP, TOKENS
PARTNER = "https://crm.example.com"
EVIL = "http://evil.example"


class LogCollector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def server(tmp_path_factory, runtime):
    s = Settings()
    s.server = ServerSettings(data_dir=tmp_path_factory.mktemp("data"), tokens=dict(TOKENS), allowed_origins=[PARTNER],
                              trusted_proxies=["127.0.0.1"])
    app = create_app(s, runtime)
    srv = ServerThread(app, s, log_level="info")  # uvicorn's access log on, as `calltone serve` runs it
    collector = LogCollector()
    for name in SCRUBBED_LOGGERS:
        logging.getLogger(name).addHandler(collector)
    srv.logs = collector  # type: ignore[attr-defined]
    with srv:
        srv.wait_ready()
        for call_id, agent in (("sec-a1", "a1"), ("sec-a2", "a2")):
            stream_silence(srv, call_id, agent, {"Authorization": f"Bearer {INGEST}"})
        yield srv
    for name in SCRUBBED_LOGGERS:
        logging.getLogger(name).removeHandler(collector)


@pytest.fixture(scope="module")
def dev_server(tmp_path_factory, runtime):
    s = Settings()
    s.server = ServerSettings(data_dir=tmp_path_factory.mktemp("dev"))  # no tokens: dev mode, every request is admin
    with ServerThread(create_app(s, runtime), s) as srv:
        yield srv


# --------------------------------------------------------------------------- helpers


def request(srv, method: str, path: str, token: str | None = None, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request, no redirects followed; headers come back lower-cased (Set-Cookie lines joined by '\\n')."""
    conn = http.client.HTTPConnection(srv.host, srv.port, timeout=60)
    h = dict(headers or {})
    if token:
        h["Authorization"] = f"Bearer {token}"
    conn.request(method, path, body=body, headers=h)
    r = conn.getresponse()
    out: dict[str, str] = {}
    for k, v in r.getheaders():
        out[k.lower()] = f"{out[k.lower()]}\n{v}" if k.lower() in out else v
    data = r.read()
    conn.close()
    return r.status, out, data


def ticket(srv, token: str, headers: dict[str, str] | None = None) -> str:
    status, _, body = request(srv, "POST", "/v1/ws-ticket", token, headers=headers)
    assert status == 200, body
    got = json.loads(body)
    assert got["ticket"] not in TOKENS and 0 < got["expires_in"] <= 60
    return got["ticket"]


def start_msg(agent_id: str) -> str:
    return json.dumps({"type": "start", "sample_rate": 8000, "encoding": "pcm_s16le", "channels": 2,
                       "channel_roles": ["customer", "agent"], "language": "en", "agent_id": agent_id})


def stream_silence(srv, call_id: str, agent_id: str, headers: dict[str, str] | None = None, query: str = "") -> None:
    with connect(f"{srv.ws}/v1/calls/{call_id}/audio{query}", additional_headers=headers or {}) as ws:
        ws.send(start_msg(agent_id))
        assert json.loads(ws.recv(timeout=10))["type"] == "started"
        ws.send(b"\x00" * 3200)
        ws.send(json.dumps({"type": "stop"}))
        while True:
            try:
                ws.recv(timeout=30)
            except Exception:  # noqa: BLE001 - closed after call.ended
                break


def ws_connect(srv, path: str, *, origin: str | None = None, host: str | None = None, headers: dict[str, str] | None = None):
    """A websocket to ``srv``; ``host`` puts another name in the Host header (the socket still goes to loopback)."""
    sock = socket.create_connection((srv.host, srv.port), timeout=10)
    return connect(f"ws://{host or f'{srv.host}:{srv.port}'}{path}", sock=sock, origin=origin, additional_headers=headers or {})


def first_frame(srv, path: str, **kw) -> tuple[dict, int | None]:
    """The first frame of a feed and the close code (None while it stays open)."""
    with ws_connect(srv, path, **kw) as ws:
        msg = json.loads(ws.recv(timeout=10))
        if msg["type"] != "error":
            return msg, None
        try:
            ws.recv(timeout=10)
        except Exception:  # noqa: BLE001 - the close that follows the error frame
            pass
        return msg, ws.close_code


def refused_handshake(srv, path: str, **kw) -> int:
    with pytest.raises(InvalidStatus) as e:
        with ws_connect(srv, path, **kw):
            pass
    return e.value.response.status_code


# --------------------------------------------------------------------------- tickets, tokens and the access log


def test_websockets_open_with_single_use_tickets(server):
    t = ticket(server, AGENT1)
    msg, code = first_frame(server, f"/v1/calls/sec-a1/events?ticket={t}")
    assert msg["type"] == "call.started" and code is None
    msg, code = first_frame(server, f"/v1/calls/sec-a1/events?ticket={t}")  # spent
    assert (msg["code"], code) == ("unauthorized", 1008)
    msg, code = first_frame(server, f"/v1/calls/sec-a2/events?ticket={ticket(server, AGENT1)}")  # still agent a1
    assert (msg["code"], code) == ("forbidden", 1008)
    assert request(server, "POST", "/v1/ws-ticket")[0] == 401
    # tickets work on the ingest websockets too, and only there: not as a REST credential
    stream_silence(server, "sec-ticket", "a1", query=f"?ticket={ticket(server, INGEST)}")
    assert request(server, "GET", "/v1/calls/sec-ticket", SUP)[0] == 200
    assert request(server, "GET", "/v1/calls", ticket(server, SUP))[0] == 401
    assert request(server, "GET", f"/v1/calls?token={SUP}")[0] == 401  # REST takes the Authorization header only


def test_access_log_never_shows_a_credential(server):
    server.logs.lines.clear()
    first_frame(server, f"/v1/calls/sec-a1/events?after=0&ticket={ticket(server, SUP)}")
    msg, code = first_frame(server, f"/v1/calls/sec-a1/events?token={SUP}&after=0")  # a token in a URL: refused
    assert (msg["code"], code) == ("unauthorized", 1008)
    request(server, "GET", f"/agent?x=1&token={AGENT1}")
    logged = "\n".join(server.logs.lines)
    assert "/v1/ws-ticket" in logged and "/v1/calls/sec-a1/events" in logged and "/agent" in logged, logged
    for secret in (SUP, AGENT1, "tkt_"):
        assert secret not in logged, logged
    assert logged.count("=[redacted]") >= 3


def test_report_cookie_is_a_scoped_ticket_and_secure_behind_tls(server, tmp_path):
    audio, rate = sf.read(str(REPO / "samples" / "demo_en.wav"), dtype="float32", always_2d=True)
    wav = tmp_path / "short.wav"
    sf.write(str(wav), audio[: 4 * rate], rate)
    boundary = uuid.uuid4().hex
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="short.wav"\r\n'
            f"Content-Type: audio/wav\r\n\r\n").encode() + wav.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    status, _, raw = request(server, "POST", "/v1/jobs", QA, body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert status == 202, raw
    job_id = json.loads(raw)["job_id"]
    assert request(server, "POST", f"/v1/jobs/{job_id}/report-link", AGENT1)[0] == 403
    assert request(server, "POST", "/v1/jobs/nope/report-link", QA)[0] == 404

    status, _, raw = request(server, "POST", f"/v1/jobs/{job_id}/report-link", QA)
    link = json.loads(raw)["url"]
    status, headers, _ = request(server, "GET", link)
    assert status == 303 and headers["location"] == f"/v1/jobs/{job_id}/reports/index.html"  # the ticket leaves the URL
    cookie = headers["set-cookie"]
    value = cookie.split(";")[0].split("=", 1)[1]
    assert value.startswith("tkt_") and value not in TOKENS
    assert f"Path=/v1/jobs/{job_id}/reports" in cookie and "HttpOnly" in cookie and "Secure" not in cookie
    assert request(server, "GET", link)[0] == 401  # a link opens once
    # behind a TLS proxy (X-Forwarded-Proto from a trusted address) the cookie is Secure
    link = json.loads(request(server, "POST", f"/v1/jobs/{job_id}/report-link", QA)[2])["url"]
    assert "Secure" in request(server, "GET", link, headers={"X-Forwarded-Proto": "https"})[1]["set-cookie"]

    jar = {"Cookie": f"calltone_reports={value}"}
    wait_for_index(server, job_id)
    status, headers, page = request(server, "GET", f"/v1/jobs/{job_id}/reports/index.html", headers=jar)
    assert status == 200 and b"short" in page
    assert_html_headers(server, headers)
    assert request(server, "GET", "/v1/calls", headers=jar)[0] == 401  # the cookie opens this job's reports only
    assert request(server, "GET", f"/v1/jobs/{job_id}", headers=jar)[0] == 401
    assert request(server, "GET", f"/v1/jobs/{job_id}x/reports/index.html", headers=jar)[0] == 401
    assert request(server, "GET", f"/v1/jobs/{job_id}/reports/index.html", QA)[0] == 200  # API clients: the header


def wait_for_index(server, job_id: str) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        job = json.loads(request(server, "GET", f"/v1/jobs/{job_id}", QA)[2])
        if job["status"] in ("done", "failed"):
            assert job["status"] == "done", job
            return
        time.sleep(0.5)
    raise AssertionError("the scoring job did not finish")


# --------------------------------------------------------------------------- origins


def test_cross_site_websockets_and_posts_are_refused(server):
    feed = "/v1/calls/sec-a1/events?ticket="
    own = f"http://{server.host}:{server.port}"
    assert refused_handshake(server, feed + ticket(server, SUP), origin=EVIL) == 403
    assert refused_handshake(server, "/v1/calls/evil-1/audio", origin=EVIL, headers={"Authorization": f"Bearer {INGEST}"}) == 403
    assert refused_handshake(server, "/v1/alerts", origin="null", headers={"Authorization": f"Bearer {SUP}"}) == 403
    for origin in (own, PARTNER, None):  # same origin, server.allowed_origins, a non-browser client
        msg, code = first_frame(server, feed + ticket(server, SUP), origin=origin)
        assert msg["type"] == "call.started" and code is None, origin
    # behind a TLS proxy (server.trusted_proxies): the page's https origin is the service's own
    tls = {"X-Forwarded-Proto": "https"}
    msg, code = first_frame(server, feed + ticket(server, SUP), origin=own.replace("http:", "https:"), headers=tls)
    assert msg["type"] == "call.started" and code is None
    assert refused_handshake(server, feed + ticket(server, SUP), origin=own.replace("http:", "https:")) == 403
    csp = request(server, "GET", "/agent", headers=tls)[1]["content-security-policy"]
    assert f"connect-src 'self' wss://{server.host}:{server.port};" in csp
    # a cross-site form post of recordings, a ticket or an acknowledgement
    boundary = uuid.uuid4().hex
    form = f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="x.wav"\r\n\r\nRIFF\r\n--{boundary}--\r\n'
    status, _, raw = request(server, "POST", "/v1/jobs", QA, form.encode(),
                             {"Origin": EVIL, "Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert status == 403 and b"cross-origin" in raw
    assert request(server, "POST", "/v1/ws-ticket", SUP, headers={"Origin": EVIL})[0] == 403
    assert request(server, "POST", "/v1/alerts/x/ack", SUP, b"{}", {"Origin": EVIL, "Content-Type": "application/json"})[0] == 403
    assert request(server, "POST", "/v1/ws-ticket", SUP, headers={"Origin": own})[0] == 200
    assert request(server, "POST", "/v1/ws-ticket", SUP, headers={"Origin": PARTNER})[0] == 200
    assert request(server, "GET", "/v1/calls", SUP, headers={"Origin": EVIL})[0] == 200  # reads: the browser keeps the answer


def test_dev_mode_checks_origin_and_host(dev_server):
    feed = "/v1/calls/unknown/events"
    assert refused_handshake(dev_server, feed, origin=EVIL) == 403
    msg, code = first_frame(dev_server, feed, origin=f"http://localhost:{dev_server.port}", host=f"localhost:{dev_server.port}")
    assert (msg["code"], code) == ("not_found", 4404)  # same origin: served (dev mode: admin)
    # DNS rebinding: evil.example resolved to 127.0.0.1, so its page is "same origin" with the service
    rebound = f"evil.example:{dev_server.port}"
    assert refused_handshake(dev_server, feed, origin=f"http://{rebound}", host=rebound) == 403
    assert request(dev_server, "GET", "/v1/calls", headers={"Host": rebound})[0] == 403
    assert request(dev_server, "GET", "/v1/calls")[0] == 200


# --------------------------------------------------------------------------- headers, /docs


def assert_html_headers(srv, headers: dict[str, str]) -> None:
    csp = headers["content-security-policy"]
    directives = dict((d.strip().split(" ", 1) + [""])[:2] for d in csp.split(";"))
    assert directives["connect-src"] == f"'self' ws://{srv.host}:{srv.port}", csp
    assert directives["frame-ancestors"] == "'none'" and directives["script-src"] == "'self'" and "default-src" in directives
    assert headers["x-frame-options"] == "DENY" and headers["x-content-type-options"] == "nosniff"


def test_every_html_response_has_security_headers(server):
    for path in ("/", "/agent", "/supervisor", "/qa", "/docs"):
        status, headers, page = request(server, "GET", path)
        assert status == 200 and headers["content-type"].startswith("text/html"), path
        assert_html_headers(server, headers)
        assert b"http://" not in page and b"https://" not in page and b"<script>" not in page, path  # no CDN, no inline script
    for path in ("/v1/calls", "/static/js/common.js", "/openapi.json"):
        status, headers, _ = request(server, "GET", path, SUP)
        assert status == 200 and headers["x-content-type-options"] == "nosniff", path
    vendored = json.loads((REPO / "server" / "static" / "vendor" / "VERSIONS.json").read_text())
    pinned = json.loads((REPO / "web" / "package.json").read_text())["dependencies"]
    assert vendored == pinned, "server/static/vendor is stale: run `make web`"
    assert (REPO / "server" / "static" / "vendor" / "swagger-ui.LICENSE").is_file()


def test_docs_work_offline_under_the_csp(server):
    playwright_sync = pytest.importorskip("playwright.sync_api", reason="pip install playwright (make test installs it)")
    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():
        pytest.fail(f"{chromium} missing: `make test` installs Debian's chromium")
    with playwright_sync.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), headless=True, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        elsewhere: list[str] = []
        page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(server.http)
                   else (elsewhere.append(route.request.url), route.abort()))
        problems: list[str] = []
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.goto(f"{server.http}/docs")
        page.wait_for_selector(".swagger-ui .info .title", timeout=30_000)
        assert "calltone" in page.locator(".swagger-ui .info .title").inner_text()
        page.wait_for_selector(".opblock-summary-path[data-path='/v1/ws-ticket']", timeout=10_000)
        browser.close()
    assert not elsewhere, elsewhere
    assert not problems, problems


# --------------------------------------------------------------------------- probing


def test_an_agent_cannot_tell_unknown_calls_from_other_agents_calls(server):
    other = request(server, "GET", "/v1/calls/sec-a2", AGENT1)
    unknown = request(server, "GET", "/v1/calls/sec-none", AGENT1)
    assert other[0] == unknown[0] == 403
    assert json.loads(other[2])["detail"].replace("sec-a2", "ID") == json.loads(unknown[2])["detail"].replace("sec-none", "ID")
    assert request(server, "GET", "/v1/calls/sec-a1", AGENT1)[0] == 200
    assert request(server, "GET", "/v1/calls/sec-none", SUP)[0] == 404  # supervisors see every call anyway
    frames = []
    for call_id in ("sec-a2", "sec-none"):
        msg, code = first_frame(server, f"/v1/calls/{call_id}/events", headers={"Authorization": f"Bearer {AGENT1}"})
        frames.append((msg["code"], code, msg["message"].replace(call_id, "ID")))
    assert frames[0] == frames[1] and frames[0][:2] == ("forbidden", 1008)


def test_demo_banner_urls_keep_tokens_out_of_requests(server):
    s = Settings()
    s.server = ServerSettings(port=server.port, tokens=dict(TOKENS))
    banner = demo_banner(s, dict(TOKENS))
    assert "?token=" not in banner
    assert f"/agent#token={AGENT1}" in banner and f"/supervisor#token={SUP}" in banner and f"/qa#token={QA}" in banner
