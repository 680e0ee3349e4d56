"""KPI anomalies on the supervisor page in a real browser (Debian's Chromium through Playwright) against a real
server on loopback (SQLite): an ``ops.anomaly`` raised on a seeded spike (as in tests/test_kpis.py) is shown as
its own card, with the KPI, the queue and the figures that raised it, in English and Chinese, with no
acknowledge or barge-in button (an anomaly has no call); one raised while the page is open arrives on the alert
feed; the header and the anomaly section link to /ops.  A screenshot goes to test-output/pages/."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from calltone.server.app import ServerThread, create_app
from calltone.server.sqlite import SqliteRepository
from calltone.settings import AnomalySettings, PrivacySettings, ServerSettings, Settings

from .test_kpis import SUP, TOKENS, Seed, rest, seed, traffic
from .test_ops_page import OUT



@dataclass
class Served:
    srv: ServerThread
    db: Path  # the server's store, to seed more calls while it runs
    hour: float  # the last whole hour when the server started: judged at every evaluation of that hour and the next

    @property
    def http(self) -> str:
        return self.srv.http


@pytest.fixture(scope="module")
def server(tmp_path_factory, runtime):
    data = tmp_path_factory.mktemp("data")
    repo = SqliteRepository(data / "calltone.db")
    hour = (time.time() // 3600 - 1) * 3600  # taken now, not at import: a suite may run past the hour
    seed(repo, traffic(hour, spike="billing"))  # billing's angry share spikes; sales is normal
    repo.close()
    s = Settings(privacy=PrivacySettings(retention_days=0), anomaly=AnomalySettings(interval_s=0.2))
    s.server = ServerSettings(data_dir=data, tokens=dict(TOKENS))
    with ServerThread(create_app(s, runtime), s) as srv:
        deadline = time.time() + 30
        while not rest(srv, "/v1/anomalies")[1] and time.time() < deadline:
            time.sleep(0.1)
        yield Served(srv, data / "calltone.db", hour)


def open_supervisor(browser, server, locale: str):  # noqa: F811
    ctx = browser.new_context(locale=locale, timezone_id="Asia/Shanghai", viewport={"width": 1500, "height": 1000})
    page = ctx.new_page()
    page.goto(f"{server.http}/supervisor#token={SUP}")
    return page


def card(page, queue: str):
    return page.locator(f"[data-testid=anomalies] [data-anomaly][data-scope=queue][data-value={queue}]")


def test_an_anomaly_is_its_own_card_with_its_figures_and_no_call_buttons(browser, server) -> None:  # noqa: F811
    status, listed = rest(server.srv, "/v1/anomalies")
    assert status == 200 and [(a["kpi"], a["scope"], a["scope_value"]) for a in listed] == [
        ("angry_call_share", "queue", "billing")]
    f = listed[0]["figures"]
    assert (f["count"], f["calls"], f["baseline_count"], f["baseline_calls"]) == (8, 12, 8, 80)
    page = open_supervisor(browser, server, "en-US")
    billing = card(page, "billing")
    billing.wait_for(timeout=20_000)
    text = billing.inner_text()
    assert "Calls that reached angry" in text and "Queue billing" in text
    assert "66.7% of calls (8 of 12)" in text
    assert "Baseline 10.0% (8 of 80 calls, same hour of the 4 weeks before)" in text
    assert f"+56.7 percentage points (alarm from +15.0), {f['z']:.2f} standard errors (alarm from 3)" in text
    assert billing.locator("button").count() == 0  # no acknowledge, no barge-in: there is no call
    assert page.locator("[data-testid=alerts] [data-anomaly]").count() == 0  # not among the call alerts
    assert billing.locator("a[data-action=ops]").get_attribute("href").startswith("/ops?")
    assert page.locator("header nav a[href='/ops']").inner_text() == "Operations"

    # an anomaly raised while the page is open arrives on the alert feed: sales, 9 of 20 angry against 8 of 80
    repo = SqliteRepository(server.db)
    seed(repo, [Seed(f"sales-spike-{i}", server.hour + 100 + i, queue="sales", agent=f"s{i % 4}", angry_s=30.0)
                for i in range(8)])
    repo.close()
    sales = card(page, "sales")
    sales.wait_for(timeout=20_000)
    assert "45.0% of calls (9 of 20)" in sales.inner_text() and sales.locator("button").count() == 0
    OUT.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(OUT / "supervisor-anomaly.png"), full_page=True)

    page.click("#lang-toggle")
    zh = card(page, "billing").inner_text()
    assert "指标异常" in zh and "出现愤怒的通话占比" in zh and "队列 billing" in zh
    assert "12 通中 8 通（66.7%）" in zh and "基线 10.0%（前 4 周同一小时，80 通中 8 通）" in zh
    assert f"高出 56.7 个百分点（阈值 15.0），{f['z']:.2f} 个标准误（阈值 3）" in zh
    assert page.locator("header nav a[href='/ops']").inner_text() == "运营指标"
    page.context.close()


def test_the_chinese_page_shows_the_anomaly_from_the_start(browser, server) -> None:  # noqa: F811
    page = open_supervisor(browser, server, "zh-CN")
    billing = card(page, "billing")
    billing.wait_for(timeout=20_000)
    assert "出现愤怒的通话占比" in billing.inner_text() and billing.locator("button").count() == 0
    assert page.locator("[data-testid=anomalies-ops]").inner_text() == "运营指标 ↗"
    page.context.close()
