"""Pages a new user can read, in a real browser (Debian's Chromium, Playwright) against a real server on loopback:
no "null" on the agent desktop's first paint, voice cues in plain words, alert reasons in the viewer's language
with one rounding of the emotion index, barge-in only on an open alert of a live call, the recording panel, one
date locale per viewer language, and a demo banner whose links work.  Calls are stored through the server's own
write path (server/record.py) or streamed through its ingest websocket with their escalations injected into the
live pipeline, so no speech model has to grade anything; the Chinese pages are checked for their content."""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from websockets.sync.client import connect

from calltone.emotion.escalation import EscalationConfig, EscalationPolicy, reason_text
from calltone.emotion.tracker import TrackerState
from calltone.events import EscalationCleared, EscalationRaised, Probs, parse_event
from calltone.server.demo import demo_banner
from calltone.server.record import CallRecord
from calltone.settings import ServerSettings, Settings
from calltone.summary import summarize

from .conftest import page_server

TOKENS = {"ingest-token-0001": "ingest", "agent-a1-token-01": "agent:a1", "supervisor-tok-01": "supervisor:sam",
          "qa-token-00000001": "qa:quinn"}
INGEST, AGENT, SUP, QA = TOKENS
RISE = {"rise": 31.2, "window_s": 12.0, "index": 67.5, "from_index": 36.3}  # index 67.5: "to 68" and "Emotion index 68"
CALM = {"grade": "calm", "calm_s": 20.0}
NULL_WATCH = """() => { window.__nullSeen = [];
  const look = () => { const s = document.body ? document.body.innerText : "";
    if (/\\bnull\\b|\\bundefined\\b/.test(s)) window.__nullSeen.push(s.slice(0, 300)); };
  new MutationObserver(look).observe(document, {subtree: true, childList: true, characterData: true}); }"""

playwright_sync = pytest.importorskip("playwright.sync_api", reason="pip install playwright (make test installs it)")


@pytest.fixture(scope="module")
def server(tmp_path_factory, runtime):
    with page_server(tmp_path_factory, runtime, TOKENS) as srv:
        yield srv


def new_page(browser, locale: str = "en-US"):
    page = browser.new_context(locale=locale, viewport={"width": 1400, "height": 900}).new_page()
    page.errors = []  # type: ignore[attr-defined]
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    return page


def rest(srv, path: str, token: str | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(srv.http + path, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def escalation(call_id: str, t: float) -> EscalationRaised:
    """An index_rise alert as emotion/escalation.py words it (reason, code, figures, evidence)."""
    evidence = {"rule": "index_rise", "rules": [{"rule": "index_rise", "reason": reason_text("index_rise", RISE), **RISE}],
                "grade": "anxious", "index": RISE["index"]}
    return EscalationRaised(call_id=call_id, t=t, channel="customer", alert_id=f"{call_id}:customer:esc1",
                            reason=reason_text("index_rise", RISE), reason_code="index_rise", reason_figures=RISE,
                            evidence=evidence)


def cleared(call_id: str, t: float) -> EscalationCleared:
    return EscalationCleared(call_id=call_id, t=t, channel="customer", alert_id=f"{call_id}:customer:esc1",
                             reason=reason_text("calm", CALM), reason_code="calm", reason_figures=CALM)


def seed_ended_call(srv, call_id: str) -> None:
    """An ended call with a cleared alert, stored as live calls are (server/record.py)."""
    cue = {"name": "hammarberg", "label": "tenser voice (Hammarberg)", "value": -2.1, "unit": "dB", "z": -2.6}
    probs = {"calm": 0.2, "anxious": 0.6, "angry": 0.2}
    raw = [
        {"type": "call.started", "call_id": call_id, "t": 0.0, "channels": {"customer": 0, "agent": 1}, "language": "en",
         "agent_id": "a1"},
        {"type": "transcript.final", "call_id": call_id, "t": 6.0, "channel": "customer", "start": 1.0, "end": 6.0,
         "text": "I was charged twice for the same order", "final": True, "language": "en"},
        {"type": "emotion.update", "call_id": call_id, "t": 6.0, "channel": "customer", "grade": "anxious", "probs": probs,
         "index": 67.5, "trend": 30.0, "cues": [cue]},
    ]
    events = [parse_event(e) for e in raw] + [escalation(call_id, 6.5), cleared(call_id, 30.0)]
    summary = summarize(events, 40.0, end_reason="stopped").model_dump()
    events.append(parse_event({"type": "call.ended", "call_id": call_id, "t": 40.0, "summary": summary}))
    now = time.time()
    record = CallRecord(call_id, "a1", {})
    row = {"call_id": call_id, "status": "ended", "agent_id": "a1", "language": "en", "metadata": {},
           "roles": ["customer", "agent"], "started_at": now - 40, "updated_at": now}
    ops = [lambda r: r.upsert_call(row)]
    for e in events:
        record.stamp(e, now)
        ops.extend(record.record(e, now).ops)
    srv.call(srv.services.store.write, lambda r: [op(r) for op in ops])


class LiveCall:
    """A call held open on a native ingest websocket (a little silence), its escalations put into the server's
    live pipeline as emotion/escalation.py would emit them."""

    def __init__(self, srv, call_id: str, ws) -> None:
        self.srv, self.call_id, self.ws = srv, call_id, ws
        self.ws.send(json.dumps({"type": "start", "sample_rate": 16000, "encoding": "pcm_s16le", "channels": 2,
                                 "channel_roles": ["customer", "agent"], "language": "en", "agent_id": "a1"}))
        assert json.loads(self.ws.recv(timeout=30))["type"] == "started"
        self.ws.send(np.zeros(3200, np.int16).tobytes())

    def emit(self, event) -> None:
        live = self.srv.call(lambda: self.srv.services.registry.live[self.call_id])
        self.srv.call(live.pipeline.emit, event)

    def stop(self) -> None:
        self.ws.send(json.dumps({"type": "stop"}))
        try:
            while True:
                self.ws.recv(timeout=30)
        except Exception:  # noqa: BLE001 - closed after call.ended
            pass


def test_alert_reason_is_a_code_with_figures_rounded_once():
    """The index_rise sentence and the alert's evidence say one number: the index 67.46 is 67.5 in the figures and
    the evidence, and "68" wherever it is shown (the pages round as whole() does)."""
    cfg = EscalationConfig(angry_sustained={"enabled": False}, phrase={"enabled": False},
                           index_rise={"enabled": True, "points": 20.0, "window_s": 20.0, "min_index": 65.0, "hold_s": 0.0})
    policy = EscalationPolicy(channel="customer", call_id="c1", config=cfg)
    probs = Probs(calm=0.3, anxious=0.4, angry=0.3)

    def state(t: float, grade: str, index: float) -> TrackerState:
        return TrackerState(t=t, channel="customer", grade=grade, previous_grade="calm", grade_since=0.0, probs=probs,
                            raw=probs, index=index, trend=0.0, cues=(), event=None)

    assert policy.update(state(0.0, "calm", 30.0)) == []
    (raised,) = policy.update(state(5.0, "anxious", 67.46))
    assert raised.reason_code == "index_rise" and raised.reason_figures == {"rise": 37.5, "window_s": 5.0, "index": 67.5,
                                                                             "from_index": 30.0}
    assert raised.reason == "emotion index rose 38 points in 5 s to 68" == reason_text("index_rise", raised.reason_figures)
    assert raised.evidence["index"] == 67.5 and raised.evidence["rules"][0]["index"] == 67.5
    (ended,) = policy.close(9.0)
    assert (ended.reason_code, ended.reason, ended.reason_figures) == ("call_ended", "call ended", {})


def test_agent_desktop_first_paint_cues_and_alert_reasons_in_both_languages(server, browser):
    seed_ended_call(server, "pa-ended-1")
    page = new_page(browser)
    page.add_init_script(f"({NULL_WATCH})()")
    page.goto(f"{server.http}/agent#token={AGENT}")  # no live call: the waiting screen
    page.wait_for_selector("[data-testid=waiting]", timeout=10_000)
    page.goto(f"{server.http}/agent?call=pa-ended-1#token={AGENT}")
    page.wait_for_selector("[data-testid=notice-ended]", timeout=20_000)
    page.wait_for_selector("[data-testid=cues] li", timeout=10_000)
    assert page.evaluate("window.__nullSeen") == []  # from the first paint on: never "null" or "undefined"

    cues = page.inner_text("[data-testid=cues]")
    assert "tenser voice" in cues and "far from this caller's usual" in cues
    assert "Hammarberg" not in cues and "σ" not in cues
    cleared_text = page.inner_text("[data-testid=notice-cleared]")
    assert "Alert cleared" in cleared_text and "caller calm for 20 s" in cleared_text
    assert "emotion index rose 31 points in 12 s to 68" in cleared_text  # the raised reason, kept
    assert page.inner_text("[data-testid=index]") == "68"  # the same rounding as the reason

    page.click("#lang-toggle")
    assert page.locator("header h1").inner_text() == "坐席工作台"
    cues = page.inner_text("[data-testid=cues]")
    assert "声音更紧绷" in cues and "与该客户平常差别很大" in cues and "Hammarberg" not in cues
    cleared_text = page.inner_text("[data-testid=notice-cleared]")
    assert "告警已解除" in cleared_text and "客户已平静 20 秒" in cleared_text
    assert "情绪指数在 12 秒内上升 31 点，达到 68" in cleared_text
    assert "caller" not in cleared_text and "emotion index" not in cleared_text  # nothing left in English
    assert page.inner_text("[data-testid=grade]").startswith("客户情绪")
    assert page.evaluate("window.__nullSeen") == [] and not page.errors, page.errors
    page.context.close()


def test_alert_cards_barge_in_only_while_open_and_live_and_say_one_index(server, browser):
    sup = new_page(browser)
    sup.goto(f"{server.http}/supervisor#token={SUP}")
    sup.wait_for_selector("[data-testid=alerts]", timeout=10_000)
    with connect(f"{server.ws}/v1/calls/pa-live-1/audio", additional_headers={"Authorization": f"Bearer {INGEST}"}) as ws:
        call = LiveCall(server, "pa-live-1", ws)
        sup.wait_for_selector("tr.call-row[data-call='pa-live-1']", timeout=20_000)
        call.emit(escalation("pa-live-1", 2.0))
        card = ".alert-card[data-alert='pa-live-1:customer:esc1']"
        sup.wait_for_selector(f"{card}[data-status=open] button[data-action=barge]", timeout=20_000)
        text = sup.inner_text(card)
        assert "emotion index rose 31 points in 12 s to 68" in text and "Emotion index 68" in text
        call.emit(cleared("pa-live-1", 25.0))
        sup.wait_for_selector(f"{card}[data-status=cleared]", timeout=20_000)
        assert sup.inner_text(f"{card} .reason") == "emotion index rose 31 points in 12 s to 68"  # kept on clearing
        call.stop()
    sup.wait_for_selector(f"{card}[data-live=false]", timeout=20_000)  # the call ended
    assert sup.locator(f"{card} button[data-action=barge]").count() == 0
    assert sup.locator(f"{card} button[data-action=ack]").count() == 1  # it can still be acknowledged
    sup.click("#lang-toggle")
    text = sup.inner_text(card)
    assert "情绪指数在 12 秒内上升 31 点，达到 68" in text and "情绪指数 68" in text and "已解除" in text
    assert "介入通话" not in text and "emotion index" not in text
    assert not sup.errors, sup.errors
    sup.context.close()


@pytest.mark.parametrize("locale,pattern", [("en-US", r"^\d{1,2}/\d{1,2}/\d{2}, "), ("en-GB", r"^\d{2}/\d{2}/\d{4}, "),
                                            ("zh-CN", r"^\d{4}/\d{1,2}/\d{1,2} ")])
def test_dates_follow_one_locale_per_viewer_language(server, browser, locale, pattern):
    seed_ended_call(server, f"pa-dates-{locale}")
    page = new_page(browser, locale)
    page.goto(f"{server.http}/qa#token={QA}")
    cell = page.wait_for_selector(f"[data-testid=calls] tr[data-call='pa-dates-{locale}'] td", timeout=10_000)
    shown = cell.inner_text()
    assert re.match(pattern, shown), shown  # the browser's date pickers use this locale too
    page.context.close()


def test_recording_panel_says_what_is_known(server, browser):
    seed_ended_call(server, "pa-rec-1")
    for locale, words in (("en-US", ["Source", "streamed live", "Speakers", "Customer · Agent", "0:40"]),
                          ("zh-CN", ["来源", "实时接入", "说话人", "客户 · 坐席", "0:40"])):
        page = new_page(browser, locale)
        page.goto(f"{server.http}/qa?call=pa-rec-1#token={QA}")
        panel = page.wait_for_selector("[data-testid=recording-facts]", timeout=10_000).inner_text()
        assert all(w in panel for w in words), panel
        metrics = page.inner_text("[data-testid=metrics]")
        assert ("升级次数" if locale == "zh-CN" else "Escalations") in metrics
        assert "null" not in metrics and "undefined" not in metrics
        alerts = page.inner_text(".call-alerts")
        assert ("情绪指数在 12 秒内上升 31 点，达到 68" if locale == "zh-CN" else "emotion index rose 31 points in 12 s to 68") in alerts
        assert not page.errors, page.errors
        page.context.close()


def test_demo_banner_links_work_in_a_browser_and_api_lines_say_the_header(server, browser):
    s = Settings()
    s.server = ServerSettings(port=server.port, tokens=dict(TOKENS))
    banner = demo_banner(s, dict(TOKENS))
    browser_part, api_part = banner.split("the API needs the header")
    links = re.findall(r"https?://\S+", browser_part)
    assert len(links) == 6 and all("#token=" in u for u in links if re.search(r"/(agent|supervisor|qa)#", u))
    page = new_page(browser)
    for url in links:  # what a new user clicks: each answers 200, and a page signs itself in
        response = page.goto(url)
        assert response is not None and response.status == 200, url
        if "#token=" in url:
            page.wait_for_selector("header h1", timeout=10_000)
            assert page.locator("#token-dialog:not([hidden])").count() == 0, url
    page.context.close()
    commands = re.findall(r"curl -H 'Authorization: Bearer (\S+)' (\S+)", api_part)
    assert len(commands) == 2
    for token, url in commands:  # the commands work as printed; the same URLs without the header are refused
        path = url.removeprefix(server.http)
        assert rest(server, path, token)[0] == 200 and rest(server, path)[0] == 401, url
