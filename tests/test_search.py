"""GET /v1/search on a real server, on SQLite and on PostgreSQL: words of the stored (masked) transcript, agent,
queue, date range, peak grade, escalation, status, each alone and together, paging with totals, and agents kept
to their own calls.  Events are stored as the live path writes them (pydantic JSON) and, for one call, as scoring
jobs write them (``json.dumps``: other separators)."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime, timezone

import pytest

from calltone.events import EmotionUpdate, Probs, TranscriptFinal, Word
from calltone.server.app import ServerThread, create_app
from calltone.settings import ServerSettings, Settings

from .pg import postgres  # noqa: F401 -- the session's PostgreSQL server
from .conftest import BROWSER_ARGS, CHROMIUM
from .test_pages import new_page, playwright_sync

TOKENS = {"qa-token-0000001": "qa:quinn", "agent-a1-token-01": "agent:a1"}
QA, A1 = TOKENS
DAY = 86400.0
BASE = datetime(2026, 11, 2, tzinfo=timezone.utc).timestamp()  # a Monday, 00:00 UTC
FILLERS = 23  # calls of agent a3 in queue sales, for paging


def final(call_id: str, seq: int, t: float, text: str, channel: str = "customer") -> TranscriptFinal:
    words = [Word(word=w, start=t, end=t + 0.3) for w in text.split()]
    return TranscriptFinal(call_id=call_id, seq=seq, t=t, server_time=BASE, channel=channel, start=t - 1.0, end=t,
                           text=text, language="en", words=words)


def emotion(call_id: str, seq: int, t: float, grade: str, channel: str = "customer") -> EmotionUpdate:
    probs = {"calm": 0.1, "anxious": 0.1, "angry": 0.1} | {grade: 0.8}
    return EmotionUpdate(call_id=call_id, seq=seq, t=t, server_time=BASE, channel=channel, grade=grade,
                         probs=Probs(**probs), index={"calm": 10, "anxious": 50, "angry": 85}[grade])


# call id -> (agent, queue column, metadata queue, day, status, escalations, events, written as jobs write them)
CALLS = {
    "refund-angry": ("a1", "billing", "billing", 0, "ended", 1,
                     [final("refund-angry", 1, 3.0, "I want a REFUND for card ****"), emotion("refund-angry", 2, 3.0, "anxious"),
                      emotion("refund-angry", 3, 5.0, "angry"), emotion("refund-angry", 4, 7.0, "calm")], False),
    "complaint-zh": ("a2", "billing", "billing", 1, "ended", 0,
                     [final("complaint-zh", 1, 2.0, "我要投诉，叫你们经理来"), emotion("complaint-zh", 2, 2.0, "anxious"),
                      final("complaint-zh", 3, 6.0, "好的 refund", channel="agent")], True),
    "patience-calm": ("a1", "support", "support", 2, "ended", 0,
                      [final("patience-calm", 1, 2.0, "this is the end of my patience"), emotion("patience-calm", 2, 2.0, "calm")],
                      False),
    "live-refund": ("a1", None, "support", 3, "live", 0,
                    [final("live-refund", 1, 1.5, "refund please"), emotion("live-refund", 2, 1.5, "anxious"),
                     emotion("live-refund", 3, 1.5, "calm", channel="agent")], False),
} | {f"filler-{i:02d}": ("a3", "sales", "sales", 4 + i / 100, "ended", 0, [final(f"filler-{i:02d}", 1, 1.0, "hello there")],
                         False) for i in range(FILLERS)}


def seed(srv: ServerThread) -> None:
    def write(r):
        for call_id, (agent, queue, meta_queue, day, status, escalations, events, as_job) in CALLS.items():
            r.upsert_call({"call_id": call_id, "status": status, "agent_id": agent, "started_at": BASE + day * DAY,
                           "metadata": {"queue": meta_queue}, "queue": queue, "escalations": escalations,
                           "roles": ["customer", "agent"]})
            for ev in events:
                body = json.dumps(ev.model_dump(), ensure_ascii=False) if as_job else ev.model_dump_json()
                r.append_event(call_id, ev.seq, ev.type, ev.t, BASE, body)

    srv.call(lambda: srv.services.store.write(write))


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def server(request, tmp_path_factory, runtime):
    s = Settings()
    url = request.getfixturevalue("postgres").create_database() if request.param == "postgres" else None
    s.server = ServerSettings(data_dir=tmp_path_factory.mktemp(f"search-{request.param}"), tokens=dict(TOKENS),
                              database_url=url)
    with ServerThread(create_app(s, runtime), s) as srv:
        seed(srv)
        yield srv


def search(srv, token: str = QA, **params) -> tuple[int, dict]:
    req = urllib.request.Request(f"{srv.http}/v1/search?{urllib.parse.urlencode(params)}",
                                 headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def ids(srv, **params) -> list[str]:
    status, body = search(srv, limit=200, **params)
    assert status == 200, body
    assert body["total"] == len(body["calls"])
    return [c["call_id"] for c in body["calls"]]


def test_words_of_the_transcript(server):
    """Case-insensitive, in either speaker's finals, every word must occur; names of the stored JSON's keys
    and values outside the text (channel, 'final', the words list) are not matches."""
    assert ids(server, q="refund") == ["live-refund", "complaint-zh", "refund-angry"]
    assert ids(server, q="Refund CARD") == ["refund-angry"]
    assert ids(server, q="投诉") == ["complaint-zh"]
    assert ids(server, q="叫你们经理") == ["complaint-zh"]
    assert ids(server, q="end") == ["patience-calm"]
    assert ids(server, q="****") == ["refund-angry"]  # the masked number, as stored
    for not_text in ("customer", "final", "true", "word", "probability", "text"):
        assert ids(server, q=not_text) == [], not_text
    assert ids(server, q="100%") == [] and ids(server, q="re_und") == []  # LIKE's wildcards are literals here


def test_filters(server):
    assert ids(server, agent_id="a1") == ["live-refund", "patience-calm", "refund-angry"]
    assert ids(server, queue="billing") == ["complaint-zh", "refund-angry"]
    assert ids(server, queue="support") == ["live-refund", "patience-calm"]  # a live call: its metadata's queue
    since = datetime.fromtimestamp(BASE + DAY, timezone.utc).isoformat()
    assert ids(server, since=since, until=str(BASE + 3 * DAY)) == ["patience-calm", "complaint-zh"]
    assert ids(server, peak_grade="angry") == ["refund-angry"]  # it went back to calm: the peak counts
    assert ids(server, peak_grade="anxious") == ["live-refund", "complaint-zh"]  # the agent's calm is lower
    assert ids(server, peak_grade="calm", agent_id="a1") == ["patience-calm"]
    assert ids(server, escalated="true") == ["refund-angry"]
    assert ids(server, status="live") == ["live-refund"]
    assert ids(server, q="refund", queue="billing", escalated="false") == ["complaint-zh"]
    assert ids(server, q="hello", queue="billing") == []


def test_paging(server):
    """Pages of 10 over the 23 fillers: totals, next_offset, no call twice, newest first."""
    seen: list[str] = []
    offset: int | None = 0
    while offset is not None:
        status, body = search(server, queue="sales", limit=10, offset=offset)
        assert status == 200 and body["total"] == FILLERS and body["offset"] == offset
        assert len(body["calls"]) == min(10, FILLERS - offset)
        seen += [c["call_id"] for c in body["calls"]]
        offset = body["next_offset"]
    assert seen == [f"filler-{i:02d}" for i in reversed(range(FILLERS))]
    status, body = search(server, queue="sales", limit=10, offset=100)
    assert status == 200 and body["calls"] == [] and body["total"] == FILLERS and body["next_offset"] is None


def test_agents_and_bad_input(server):
    status, body = search(server, A1, q="refund")
    assert status == 200 and [c["call_id"] for c in body["calls"]] == ["live-refund", "refund-angry"]
    assert search(server, A1, agent_id="a2")[0] == 403
    status, body = search(server, peak_grade="furious")
    assert status == 422
    status, body = search(server, since="yesterday")
    assert status == 422 and "ISO 8601" in body["detail"]
    status, body = search(server, since=str(BASE + DAY), until=str(BASE))
    assert status == 422 and "after" in body["detail"]
    status, body = search(server, q=" ".join(f"w{i}" for i in range(9)))
    assert status == 422 and "at most 8 words" in body["detail"]


@pytest.mark.parametrize("server", ["sqlite"], indirect=True)  # the page is the same on either store
def test_search_on_the_qa_page(server):
    """/qa in Chromium: words and a queue filter the list through /v1/search; the pager walks the pages."""

    with playwright_sync.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=BROWSER_ARGS)
        page = new_page(browser, locale="zh-CN")
        page.goto(f"{server.http}/qa#token={QA}")
        rows = page.locator("[data-testid=calls] tr[data-call]")
        page.wait_for_selector("[data-testid=total]")
        assert page.locator("[data-testid=total]").inner_text() == f"共 {len(CALLS)} 通"
        page.fill("input[name=q]", "refund")
        page.fill("input[name=queue]", "billing")
        page.click("[data-testid=filters] button[type=submit]")
        page.wait_for_function("() => document.querySelector('[data-testid=total]')?.textContent === '共 2 通'")
        assert [rows.nth(i).get_attribute("data-call") for i in range(rows.count())] == ["complaint-zh", "refund-angry"]
        page.click("[data-testid=filters] button.link")  # reset
        page.fill("input[name=queue]", "sales")
        page.click("[data-testid=filters] button[type=submit]")
        page.wait_for_function(f"() => document.querySelector('[data-testid=total]')?.textContent === '共 {FILLERS} 通'")
        assert rows.count() == FILLERS and page.locator("[data-action=older]").count() == 0  # one page of 50
        page.goto(f"{server.http}/qa?offset=20")
        page.wait_for_selector("[data-action=newer]")
        assert rows.count() == len(CALLS) - 20 and page.locator("[data-action=older]").count() == 0
        page.click("[data-action=newer]")
        page.wait_for_function("() => !location.search.includes('offset=20')")
        page.wait_for_function(f"() => document.querySelectorAll('[data-testid=calls] tr[data-call]').length === {len(CALLS)}")
        assert not page.errors, page.errors  # type: ignore[attr-defined]
        browser.close()
