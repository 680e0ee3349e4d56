"""The web pages in a real browser (Debian's Chromium driven by Playwright) against a real
server on loopback with the real model, while a composed escalating call streams in at
real time: the agent desktop follows the call, the supervisor acknowledges the alert, QA
reviews the call.  Screenshots go to test-output/pages/; `make screenshots` (which sets
CALLTONE_SCREENSHOTS=docs) also copies them into docs/screenshots/, which tests never touch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from calltone.server.demo import demo_banner
from calltone.speech.audio import encode_pcm
from calltone.settings import ServerSettings, Settings

from .conftest import EMOTION_SPEECH, MAKE_CALLS, REPO, page_server, require

OUT = REPO / "test-output" / "pages"
DOCS_SHOTS = REPO / "docs" / "screenshots"
TOKENS = {
    "ingest-token-0001": "ingest",
    "agent-a1-token-01": "agent:a1",
    "supervisor-tok-01": "supervisor:sam",
    "qa-token-0000001": "qa:quinn",
}
INGEST, AGENT, SUP, QA = TOKENS
CALL_ID = "pages-escalate-1"

playwright_sync = pytest.importorskip("playwright.sync_api", reason="pip install playwright (make test installs it)")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def escalate_call(tmp_path_factory) -> Path:
    require(EMOTION_SPEECH)
    out = tmp_path_factory.mktemp("calls")
    subprocess.run([sys.executable, str(require(MAKE_CALLS)), str(EMOTION_SPEECH), str(out), "--calls", "4", "--telephony",
                    "--lang", "en"], check=True, capture_output=True, timeout=120)
    return require(out / "call001-escalate.wav")


@pytest.fixture(scope="module")
def server(tmp_path_factory, runtime):
    with page_server(tmp_path_factory, runtime, TOKENS) as srv:
        yield srv


def new_page(browser, locale="en-US", width=1400, height=900):
    ctx = browser.new_context(locale=locale, viewport={"width": width, "height": height}, device_scale_factor=1)
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.errors = errors  # type: ignore[attr-defined]
    return page


def shot(page, name: str, docs: bool = True) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.png"
    page.screenshot(path=str(path), full_page=False)
    if docs and os.environ.get("CALLTONE_SCREENSHOTS") == "docs":
        DOCS_SHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, DOCS_SHOTS / f"{name}.png")


def rest(srv, path: str, token: str, method="GET", body=None):
    req = urllib.request.Request(srv.http + path, method=method, data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


class Streamer(threading.Thread):
    """Streams a stereo recording as one call over the native ingest protocol at real time
    (20 ms µ-law frames, like a telephony client); ``finish()`` sends stop early."""

    def __init__(self, srv, path: Path, call_id: str, agent_id: str = "a1") -> None:
        super().__init__(daemon=True, name="stream-call")
        from calltone.server.replay import read_audio

        self.audio, self.rate = read_audio(path)
        self.url = f"{srv.ws}/v1/calls/{call_id}/audio"
        self.agent_id = agent_id
        self.stop_now = threading.Event()
        self.ended = threading.Event()
        self.error: BaseException | None = None
        self.sent_s = 0.0

    def run(self) -> None:
        from websockets.sync.client import connect

        try:
            with connect(self.url, max_size=None, additional_headers={"Authorization": f"Bearer {INGEST}"}) as ws:
                ws.send(json.dumps({"type": "start", "sample_rate": self.rate, "encoding": "mulaw", "channels": 2,
                                    "channel_roles": ["customer", "agent"], "language": "en", "agent_id": self.agent_id}))
                assert json.loads(ws.recv(timeout=30))["type"] == "started"
                step = self.rate // 50
                t0 = time.monotonic()
                for i in range(0, len(self.audio), step):
                    if self.stop_now.is_set():
                        break
                    ws.send(encode_pcm(self.audio[i : i + step], "mulaw"))
                    self.sent_s = min(len(self.audio), i + step) / self.rate
                    delay = t0 + self.sent_s - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                ws.send(json.dumps({"type": "stop"}))
                try:
                    while True:
                        ws.recv(timeout=60)
                except Exception:  # noqa: BLE001 - closed after call.ended
                    pass
        except BaseException as e:  # noqa: BLE001
            self.error = e
        finally:
            self.ended.set()

    def finish(self, timeout: float = 90.0) -> None:
        self.stop_now.set()
        assert self.ended.wait(timeout), "the call did not end"
        assert self.error is None, self.error


def banner_url(srv, path: str) -> str:
    """The page URL that `calltone serve --demo` (`make run`) prints, with its #token= fragment, for this server."""
    s = Settings()
    s.server = ServerSettings(port=srv.port, tokens=dict(TOKENS))
    return next(line.split()[-1] for line in demo_banner(s, dict(TOKENS)).splitlines() if f"{path}#token=" in line)


def until(fn, timeout: float, what: str, every: float = 0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = fn()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


# --------------------------------------------------------------------------- tests


def test_pages_are_served_offline(server):
    """The pages and the vendored chart library come from the server itself (no CDN)."""
    for path in ("/", "/agent", "/supervisor", "/qa"):
        with urllib.request.urlopen(server.http + path, timeout=10) as r:
            html = r.read().decode()
            assert r.status == 200 and "text/html" in r.headers["content-type"]
            assert "http://" not in html and "https://" not in html  # nothing from elsewhere
    lock = json.loads((REPO / "web" / "package-lock.json").read_text())
    pinned = json.loads((REPO / "web" / "package.json").read_text())["dependencies"]["uplot"]
    assert lock["packages"]["node_modules/uplot"]["version"] == pinned
    vendored = json.loads((REPO / "server" / "static" / "vendor" / "VERSIONS.json").read_text())
    assert vendored["uplot"] == pinned, "server/static/vendor is stale: run `make web`"
    with urllib.request.urlopen(server.http + "/static/vendor/uPlot.iife.min.js", timeout=10) as r:
        assert r.status == 200 and len(r.read()) > 20_000


def test_sign_in_and_language(server, browser):
    """No token: the page asks for one (a wrong one is refused); the language toggle switches zh/en;
    a Chinese browser gets Chinese by default."""
    page = new_page(browser, locale="en-US")
    page.goto(server.http + "/qa")
    page.wait_for_selector("#token-dialog:not([hidden])", timeout=10_000)
    page.fill("#token-input", "not-a-valid-token")
    page.click("#token-dialog button[type=submit]")
    page.wait_for_selector("#token-bad:not([hidden])", timeout=10_000)
    page.fill("#token-input", QA)
    page.click("#token-dialog button[type=submit]")
    page.wait_for_selector("[data-testid=calls]", timeout=10_000)
    assert page.locator("header h1").inner_text() == "Call quality review"
    page.click("#lang-toggle")
    assert page.locator("header h1").inner_text() == "通话质检"
    page.context.close()

    zh = new_page(browser, locale="zh-CN")
    zh.goto(banner_url(server, "/agent"))  # the URL `make run` prints: the token rides in the fragment
    zh.wait_for_selector("[data-testid=waiting]", timeout=10_000)
    assert zh.locator("header h1").inner_text() == "坐席工作台"
    assert "token=" not in zh.url  # the token is moved out of the address bar
    assert zh.evaluate("sessionStorage.getItem('calltone.token')") == AGENT
    assert not zh.errors, zh.errors
    zh.context.close()


def test_live_call_in_agent_supervisor_and_qa_pages(server, browser, escalate_call):
    agent = new_page(browser)
    sockets: list[str] = []
    agent.on("websocket", lambda ws: sockets.append(ws.url))
    agent.goto(f"{server.http}/agent#token={AGENT}")
    agent.wait_for_selector("[data-testid=waiting]", timeout=10_000)
    sup = new_page(browser)
    sup.goto(banner_url(server, "/supervisor"))
    sup.wait_for_selector("[data-testid=wallboard]", timeout=10_000)

    streamer = Streamer(server, escalate_call, CALL_ID)
    streamer.start()
    try:
        # the agent desktop finds its live call by the agent token and shows transcript lines
        agent.wait_for_selector("[data-testid=conn][data-state=live]", timeout=20_000)
        agent.wait_for_selector("[data-testid=transcript] .line:not(.partial)", timeout=40_000)
        # the supervisor's wallboard lists the call
        sup.wait_for_selector(f"tr.call-row[data-call='{CALL_ID}']", timeout=10_000)

        # a dropped feed reconnects with ?after= and neither loses nor repeats lines (checked at the end)
        connects = agent.evaluate("window.calltone.feed.connects")
        agent.evaluate("window.calltone.feed.drop()")
        until(lambda: agent.evaluate("window.calltone.feed.connects") > connects and
              agent.evaluate("document.querySelector('[data-testid=conn]').dataset.state") == "live", 15, "reconnect")

        # the customer's grade turns angry on the agent desktop (large indicator: icon + word + colour)
        agent.wait_for_selector("[data-testid=grade][data-grade=angry]", timeout=150_000)
        assert agent.locator("[data-testid=grade-word]").inner_text() == "Angry"
        assert agent.locator("[data-testid=cues] li").count() >= 1
        # the supervisor gets the alert and barges in; the ack is stored
        card = sup.wait_for_selector(f".alert-card[data-status=open]:has(code:text-is('{CALL_ID}'))", timeout=60_000)
        alert_id = card.get_attribute("data-alert")
        agent.wait_for_selector("[data-testid=notice-raised]", timeout=10_000)
        sup.locator(f".alert-card[data-alert='{alert_id}'] button[data-action=barge]").click()
        sup.wait_for_selector(f".alert-card[data-alert='{alert_id}'][data-status=acked]", timeout=10_000)
        status, row = rest(server, f"/v1/alerts/{alert_id}", SUP)
        assert status == 200 and row["status"] == "acked" and row["barge_in"] is True and row["acked_by"] == "supervisor:sam"
        # barge-in opens the live view of the call on the console; the agent sees the supervisor joining
        sup.wait_for_selector("#follow [data-testid=transcript] .line", timeout=10_000)
        agent.wait_for_selector("[data-testid=notice-barge]", timeout=10_000)
        agent.wait_for_timeout(1500)
        shot(agent, "agent")
        sup.wait_for_timeout(500)
        shot(sup, "supervisor")
    finally:
        streamer.finish()

    # all lines once each, in the agent page, after the reconnect
    agent.wait_for_selector("[data-testid=notice-ended]", timeout=30_000)
    status, call = rest(server, f"/v1/calls/{CALL_ID}", QA)
    assert status == 200 and call["status"] == "ended"
    seqs = agent.eval_on_selector_all("[data-testid=transcript] .line:not(.partial)", "els => els.map(e => +e.dataset.seq)")
    assert sorted(seqs) == sorted(x["seq"] for x in call["transcript"]), "agent page lost or repeated transcript lines"
    # every websocket (first connect and reconnect) opened with its own single-use ticket, never the token
    assert len(sockets) >= 2 and len(set(sockets)) == len(sockets), sockets
    assert all("ticket=tkt_" in u and "token" not in u and AGENT not in u for u in sockets), sockets
    assert not agent.locator("[data-testid=transcript] .line.partial").count()
    # a customer line's badge is the grade the utterance got when it was scored (an update up to 1 s before its end)
    lines = agent.eval_on_selector_all("[data-testid=transcript] .line.customer:not(.partial)",
                                       "els => els.map(e => [+e.dataset.end, e.querySelector('.badge')?.dataset.grade])")
    updates = [u for u in call["emotion"] if u["channel"] == "customer"]
    checked = 0
    for end, badge in lines:
        near = [u for u in updates if end - 1.0 < u["t"] <= end + 0.05]
        if near:
            assert badge == near[-1]["grade"], (end, badge, near[-1])
            checked += 1
    assert checked >= 3, checked
    # and deterministically: a line rendered while the grade was calm takes the angry grade scored at its end
    badge = agent.evaluate("""() => {
        const v = window.calltone.view, end = 9000.5;
        const probs = {calm: 0.1, anxious: 0.2, angry: 0.7};
        v.handle({type: "emotion.update", channel: "customer", t: 8990, grade: "calm", probs, index: 5, cues: []});
        v.handle({type: "transcript.final", channel: "customer", start: 8998, end, text: "probe", seq: 999999, words: []});
        v.handle({type: "emotion.update", channel: "customer", t: end, grade: "angry", probs, index: 80, cues: []});
        return document.querySelector(`.line.customer[data-end="${end}"] .badge`).dataset.grade; }""")
    assert badge == "angry"
    assert not agent.errors and not sup.errors, (agent.errors, sup.errors)

    # QA: the call is listed (filter: escalated), its page renders the timeline, graded transcript and metrics
    qa = new_page(browser)
    qa.goto(f"{server.http}/qa?escalated=true#token={QA}")
    qa.wait_for_selector(f"[data-testid=calls] tr[data-call='{CALL_ID}']", timeout=10_000)
    qa.click(f"[data-testid=calls] tr[data-call='{CALL_ID}'] a")
    qa.wait_for_selector("[data-testid=timeline] canvas", timeout=10_000)
    assert qa.locator("[data-testid=qa-transcript] .line").count() == len(call["transcript"])
    assert qa.locator("[data-testid=qa-transcript] .badge.grade-angry").count() >= 1
    assert "Escalations" in qa.locator("[data-testid=metrics]").inner_text()
    qa.wait_for_timeout(300)
    shot(qa, "qa")
    qa.click("#lang-toggle")  # the same page in Chinese (test output only)
    assert qa.locator("header h1").inner_text() == "通话质检"
    qa.wait_for_timeout(300)
    shot(qa, "qa-zh", docs=False)
    assert not qa.errors, qa.errors
    for p in (agent, sup, qa):
        p.context.close()
