"""The /ops page in a real browser (Debian's Chromium through Playwright) against a real server on loopback
(SQLite) with calls seeded over several days: the figures it shows match a hand computation, in the viewer's
time zone, in English and Chinese; the CSV export holds the same numbers; the anomaly raised on a seeded spike
(and none on normal traffic) is listed.  A screenshot goes to test-output/pages/ops.png."""

from __future__ import annotations

import csv
import io
import time
from datetime import datetime
from pathlib import Path

import pytest

from calltone.server.app import ServerThread, create_app
from calltone.server.sqlite import SqliteRepository
from calltone.settings import PrivacySettings, ServerSettings, Settings

from .conftest import REPO
from .test_kpis import CALLS, SHANGHAI, SUP, TOKENS, rest, seed, traffic

OUT = REPO / "test-output" / "pages"
RANGE = "from=2025-11-24&to=2025-11-25"  # Monday and Tuesday (tests/test_kpis.py: CALLS)

playwright_sync = pytest.importorskip("playwright.sync_api", reason="pip install playwright (make test installs it)")


@pytest.fixture(scope="module")
def server(tmp_path_factory, runtime):
    data = tmp_path_factory.mktemp("data")
    repo = SqliteRepository(data / "calltone.db")
    seed(repo, CALLS)
    seed(repo, traffic((time.time() // 3600 - 1) * 3600, spike="billing"))  # the last hour: billing's angry share spikes
    repo.close()
    s = Settings(privacy=PrivacySettings(retention_days=0))  # the seeded days are older than the default 30 days
    s.server = ServerSettings(data_dir=data, tokens=dict(TOKENS))
    with ServerThread(create_app(s, runtime), s) as srv:
        deadline = time.time() + 30  # the first evaluation runs as the server starts
        while not rest(srv, "/v1/anomalies")[1] and time.time() < deadline:
            time.sleep(0.1)
        yield srv


def open_ops(browser, server, query: str, zone: str = "Asia/Shanghai", locale: str = "en-US"):
    ctx = browser.new_context(locale=locale, timezone_id=zone, viewport={"width": 1500, "height": 1100}, accept_downloads=True)
    page = ctx.new_page()
    page.goto(f"{server.http}/ops?{query}#token={SUP}")
    page.wait_for_selector("[data-testid=ops-table], [data-testid=ops-error]")
    return page


def cells(page, bucket: str, group: str = "") -> dict[str, str]:
    row = page.locator(f"[data-testid=ops-table] tr[data-bucket='{bucket}'][data-group='{group}']")
    return {c.get_attribute("data-kpi"): c.inner_text() for c in row.locator("td[data-kpi]").all()}


def tiles(page) -> dict[str, str]:
    return {m.get_attribute("data-kpi"): m.locator(".v").inner_text()
            for m in page.locator("[data-testid=ops-totals] .metric").all()}


def test_figures_match_a_hand_computation_in_the_viewers_time_zone(browser, server) -> None:
    page = open_ops(browser, server, RANGE)
    try:
        assert "Asia/Shanghai" in page.get_by_test_id("ops-zone").inner_text()
        # all four calls: 600 s, 2 of 4 escalated and angry, 90 s angry, peaks 80 20 90 40, 1 of 3 alerts barged
        assert tiles(page) == {"calls": "4", "handle_time_s": "2:30", "escalation_rate": "50.0%",
                               "angry_call_share": "50.0%", "angry_min_per_100_min": "15.0", "peak_index": "57.5",
                               "barge_in_rate": "33.3%", "ack_time_s": "30.0 s"}
        day1 = cells(page, "2025-11-24T00:00:00+08:00")
        assert day1 == {"calls": "3", "handle_time_s": "2:00", "escalation_rate": "66.7%", "alerts": "3",
                        "barge_in_rate": "33.3%", "ack_time_s": "30.0 s", "angry_call_share": "66.7%",
                        "angry_min_per_100_min": "25.0", "peak_index": "63.3", "customer_talk_share": "53.6%",
                        "silence_share": "22.2%", "overtalk_s_per_call": "3.3 s", "interruptions_per_call": "2.00",
                        "agent_speech_rate": "165/min"}
        day2 = cells(page, "2025-11-25T00:00:00+08:00")  # 07:30 in Shanghai: the 25th here, the 24th in UTC
        assert (day2["calls"], day2["handle_time_s"], day2["barge_in_rate"]) == ("1", "4:00", "–")
        assert page.locator("[data-testid=ops-table] tbody tr td:first-child").all_inner_texts() == ["2025-11-24", "2025-11-25"]
        assert page.locator("[data-testid=ops-chart] canvas").count() >= 1
        OUT.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(OUT / "ops.png"), full_page=True)
    finally:
        page.context.close()
    utc = open_ops(browser, server, RANGE, zone="UTC")
    try:
        assert cells(utc, "2025-11-24T00:00:00+00:00")["calls"] == "4" and cells(utc, "2025-11-25T00:00:00+00:00")["calls"] == "0"
    finally:
        utc.context.close()


def test_the_anomaly_of_the_spike_is_listed_and_normal_traffic_has_none(browser, server) -> None:
    page = open_ops(browser, server, RANGE)
    try:
        rows = page.locator("[data-testid=ops-anomalies] tbody tr")
        assert rows.count() == 1  # billing: 8 of 12 calls angry against 8 of 80; sales (1 of 12) and agents: none
        texts = rows.first.locator("td").all_inner_texts()
        [anomaly] = rest(server, "/v1/anomalies")[1]
        assert texts[3] == datetime.fromtimestamp(anomaly["window_start"], SHANGHAI).strftime("%Y-%m-%d %H:%M")
        assert texts[1:3] == ["Calls that reached angry", "Queue billing"]
        assert texts[4:] == ["66.7%", "10.0% (4 weeks)", "12 / 80"]
    finally:
        page.context.close()


def test_csv_export_holds_the_tables_numbers(browser, server) -> None:
    page = open_ops(browser, server, RANGE + "&group_by=queue")
    try:
        with page.expect_download() as info:
            page.get_by_test_id("ops-csv").click()
        download = info.value
        assert download.suggested_filename == "kpis_2025-11-24_2025-11-25_day.csv"
        text = Path(download.path()).read_text(encoding="utf-8-sig")
    finally:
        page.context.close()
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0][:4] == ["bucket_start", "group", "calls", "handle_time_s"] and len(rows[0]) == 16
    assert rows[1][:4] == ["", "queue", "calls", "s (mean per call)"]
    table = {(r[0], r[1]): dict(zip(rows[0], r)) for r in rows[2:]}
    assert set(table) == {(d, q) for d in ("2025-11-24T00:00:00+08:00", "2025-11-25T00:00:00+08:00")
                          for q in ("billing", "sales")}
    billing = table[("2025-11-24T00:00:00+08:00", "billing")]  # d1-a and d1-c
    assert (billing["calls"], billing["handle_time_s"], billing["escalation_rate"]) == ("2", "150", "1")
    assert (billing["angry_min_per_100_min"], billing["ack_time_s"], billing["agent_speech_rate"]) == ("30", "30", "180")
    assert table[("2025-11-25T00:00:00+08:00", "sales")]["calls"] == "0"
    assert table[("2025-11-25T00:00:00+08:00", "sales")]["handle_time_s"] == ""


def test_chinese_page_and_grouping_from_the_form(browser, server) -> None:
    page = open_ops(browser, server, RANGE, locale="zh-CN")
    try:
        assert page.locator("header h1").inner_text() == "运营指标"
        labels = page.locator("[data-testid=ops-totals] .metric .k").all_inner_texts()
        assert labels[:4] == ["通话数", "平均处理时长（分:秒）", "升级率", "出现愤怒的通话占比"]
        assert tiles(page)["calls"] == "4"
        assert "时区 Asia/Shanghai" in page.get_by_test_id("ops-zone").inner_text()
        assert page.locator("[data-testid=ops-anomalies] tbody td").nth(2).inner_text() == "队列 billing"
        page.select_option("#f-group_by", "agent")
        page.locator("[data-testid=ops-filters] button[type=submit]").click()
        page.wait_for_selector("[data-testid=ops-table] tr[data-group='a2']")
        assert cells(page, "2025-11-24T00:00:00+08:00", "a2")["calls"] == "2"  # d1-b and d1-c
        assert cells(page, "2025-11-25T00:00:00+08:00", "a1")["calls"] == "1"
        assert "group_by=agent" in page.url
    finally:
        page.context.close()


def test_a_bad_time_zone_is_explained_on_the_page(browser, server) -> None:
    page = open_ops(browser, server, RANGE + "&tz=Mars/Olympus")
    try:
        assert "unknown time zone 'Mars/Olympus'" in page.get_by_test_id("ops-error").inner_text()
    finally:
        page.context.close()
