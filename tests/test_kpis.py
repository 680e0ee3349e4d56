"""GET /v1/kpis and GET /v1/anomalies on a real server (uvicorn on loopback, SQLite) over calls seeded into its
store: figures checked against hand computations, filters, grouping, time zones (DST too), empty ranges, bad
parameters; ops.anomaly on a seeded spike (alert feed, webhook, once) and not on normal traffic."""

from __future__ import annotations

import asyncio
import http.server
import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from websockets.sync.client import connect

from calltone.server.app import ServerThread, create_app
from calltone.server.kpis import KpiRequest, KpiSlotQuery, call_columns, plan, read_slots, report
from calltone.server.postgres import PostgresRepository
from calltone.server.replay import read_audio, stream_call
from calltone.server.sqlbase import SqlRepository
from calltone.server.sqlite import SqliteRepository
from calltone.settings import AnomalySettings, PrivacySettings, ServerSettings, Settings
from calltone.summary import CallSummary, ChannelGrades

from .conftest import EMOTION_SPEECH, MAKE_CALLS, needs_shared, require
from .pg import PgServer, postgres  # noqa: F401 -- the session's PostgreSQL server

TOKENS = {"supervisor-tok-01": "supervisor:sam", "qa-token-0000001": "qa:quinn", "agent-a1-token-01": "agent:a1",
          "ingest-token-0001": "ingest"}
SUP, QA, AGENT, INGEST = TOKENS
SHANGHAI = ZoneInfo("Asia/Shanghai")


@dataclass
class Seed:
    """One ended call as the store keeps it (its row written from a CallSummary, as at call end)."""

    call_id: str
    started_at: float
    queue: str | None = "billing"
    agent: str = "a1"
    language: str = "zh"
    direction: str | None = "inbound"
    duration_s: float = 100.0
    escalations: int = 0
    angry_s: float = 0.0
    peak_index: float = 30.0
    talk: tuple[float, float] = (40.0, 40.0)  # customer, agent seconds
    silence_s: float = 20.0
    overtalk_s: float = 2.0
    interruptions: tuple[int, int] = (1, 0)
    rate: float | None = 200.0
    alerts: list[tuple[bool | None, float | None]] = field(default_factory=list)  # (barge_in, seconds to ack)

    def summary(self) -> CallSummary:
        peak = "angry" if self.angry_s > 0 else "calm"
        grades = {"customer": ChannelGrades(seconds={"calm": self.talk[0] - self.angry_s, "anxious": 0.0, "angry": self.angry_s},
                                            share={}, peak_index=self.peak_index, peak_grade=peak, peak_t=10.0,
                                            reached_angry=self.angry_s > 0, angry_s=self.angry_s, updates=5)}
        talk = {"customer": self.talk[0], "agent": self.talk[1]}
        return CallSummary(duration_s=self.duration_s, language=self.language, speech_source="vad", talk_s=talk,
                           talk_share={}, silence_s=self.silence_s, silence_share=self.silence_s / self.duration_s,
                           longest_silence_s=5.0, overtalk_s=self.overtalk_s,
                           interruptions={"customer": self.interruptions[0], "agent": self.interruptions[1]},
                           agent_speech_rate=self.rate, speech_rate={}, grades=grades, escalations=self.escalations,
                           final_segments=10)


def seed(repo: SqlRepository, calls: list[Seed]) -> None:
    with repo.transaction():
        for c in calls:
            summary = c.summary()
            meta = {k: v for k, v in (("queue", c.queue), ("direction", c.direction)) if v}
            repo.upsert_call({"call_id": c.call_id, "status": "ended", "agent_id": c.agent, "language": c.language,
                              "metadata": meta, "roles": ["customer", "agent"], "started_at": c.started_at,
                              "ended_at": c.started_at + c.duration_s, "duration_s": c.duration_s,
                              "escalations": c.escalations, "summary": summary.model_dump(), "updated_at": time.time(),
                              **call_columns(summary, meta)})
            for i, (barge, ack_s) in enumerate(c.alerts):
                raised = c.started_at + 30
                repo.insert_alert({"alert_id": f"{c.call_id}-al{i}", "call_id": c.call_id, "agent_id": c.agent,
                                   "channel": "customer", "reason": "rising", "status": "acked" if ack_s else "cleared",
                                   "raised_at": raised, "acked_at": raised + ack_s if ack_s else None,
                                   "barge_in": barge})


def at(local: str, tz: ZoneInfo = SHANGHAI) -> float:
    return datetime.fromisoformat(local).replace(tzinfo=tz).timestamp()


# Monday 24 and Tuesday 25 November 2025, Shanghai time.  Hand-computed figures are in the tests.
CALLS = [
    Seed("d1-a", at("2025-11-24T09:10"), duration_s=120, escalations=1, angry_s=30, peak_index=80, talk=(50, 40),
         silence_s=30, overtalk_s=4, interruptions=(2, 1), rate=180, alerts=[(True, 20.0)]),
    Seed("d1-b", at("2025-11-24T09:40"), queue="sales", agent="a2", language="en", duration_s=60, peak_index=20,
         talk=(20, 30), silence_s=10, overtalk_s=0, interruptions=(0, 0), rate=150),
    Seed("d1-c", at("2025-11-24T14:05"), agent="a2", duration_s=180, escalations=2, angry_s=60, peak_index=90,
         talk=(80, 60), silence_s=40, overtalk_s=6, interruptions=(3, 0), rate=None, alerts=[(False, 40.0), (None, None)]),
    # 07:30 Shanghai on the 25th is 23:30 UTC on the 24th
    Seed("d2-a", at("2025-11-25T07:30"), direction="outbound", duration_s=240, peak_index=40, talk=(100, 100),
         silence_s=40, overtalk_s=10, interruptions=(1, 1), rate=210),
]


NEW_YORK = ZoneInfo("America/New_York")  # summer time ends at 02:00 on Sunday 1 November 2026: a 25-hour day
DST_CALLS = [Seed("ny-1", at("2026-11-01T00:30", NEW_YORK), queue="night"),   # EDT, -04:00
             Seed("ny-2", at("2026-11-01T23:30", NEW_YORK), queue="night"),   # EST, -05:00: the same local day
             Seed("ny-3", at("2026-11-02T00:10", NEW_YORK), queue="night")]


def rest(srv: ServerThread, path: str, token: str | None = SUP, **params) -> tuple[int, dict]:
    query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
    req = urllib.request.Request(f"{srv.http}{path}" + (f"?{query}" if query else ""),
                                 headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def kpis(srv: ServerThread, **params) -> dict:
    status, body = rest(srv, "/v1/kpis", **params)
    assert status == 200, body
    return body


@pytest.fixture(scope="module")
def server(tmp_path_factory, runtime):
    data = tmp_path_factory.mktemp("data")
    repo = SqliteRepository(data / "calltone.db")
    seed(repo, CALLS)
    seed(repo, DST_CALLS)
    seed(repo, [Seed("old-live", at("2025-11-24T10:00"))])  # then made live: only ended calls count
    repo.update_call("old-live", status="live")
    repo.close()
    s = Settings(privacy=PrivacySettings(retention_days=0))  # the seeded calls are older than the default 30 days
    s.server = ServerSettings(data_dir=data, tokens=dict(TOKENS))
    with ServerThread(create_app(s, runtime), s) as srv:
        yield srv


# --------------------------------------------------------------------------- figures


def test_day_buckets_in_the_viewers_time_zone_match_a_hand_computation(server) -> None:
    body = kpis(server, **{"from": "2025-11-24", "to": "2025-11-25"}, tz="Asia/Shanghai", bucket="day")
    assert body["tz"] == "Asia/Shanghai" and body["start"] == at("2025-11-24T00:00") and body["end"] == at("2025-11-26T00:00")
    [series] = body["series"]
    day1, day2 = series["buckets"]
    assert (day1["label"], day2["label"]) == ("2025-11-24T00:00:00+08:00", "2025-11-25T00:00:00+08:00")
    # day 1: d1-a, d1-b, d1-c (durations 120 + 60 + 180 = 360 s)
    assert day1["calls"] == 3
    assert day1["handle_time_s"] == 120.0                       # 360 / 3
    assert day1["escalation_rate"] == round(2 / 3, 4)          # d1-a, d1-c
    assert day1["alerts"] == 3
    assert day1["barge_in_rate"] == round(1 / 3, 4)            # one barged of three alerts
    assert day1["ack_time_s"] == 30.0                           # (20 + 40) / 2 acknowledged
    assert day1["angry_call_share"] == round(2 / 3, 4)
    assert day1["angry_min_per_100_min"] == 25.0                # 100 * 90 s angry / 360 s
    assert day1["peak_index"] == round(190 / 3, 4)              # (80 + 20 + 90) / 3
    assert day1["customer_talk_share"] == round(150 / 280, 4)   # (50 + 20 + 80) / (90 + 50 + 140)
    assert day1["silence_share"] == round(80 / 360, 4)
    assert day1["overtalk_s_per_call"] == round(10 / 3, 4)
    assert day1["interruptions_per_call"] == 2.0                # (3 + 0 + 3) / 3
    assert day1["agent_speech_rate"] == 165.0                   # (180 + 150) / 2: d1-c has no rate
    assert day2["calls"] == 1 and day2["handle_time_s"] == 240.0 and day2["alerts"] == 0
    assert day2["barge_in_rate"] is None and day2["ack_time_s"] is None  # no alerts: nothing to measure
    assert series["total"]["calls"] == body["total"]["calls"] == 4
    assert body["total"]["handle_time_s"] == 150.0              # 600 / 4
    assert body["units"]["handle_time_s"].startswith("s") and "per 100 call minutes" in body["units"]["angry_min_per_100_min"]


def test_the_same_calls_in_utc_days_and_hours(server) -> None:
    utc = kpis(server, **{"from": "2025-11-24", "to": "2025-11-25"}, tz="UTC", bucket="day")
    assert [b["calls"] for b in utc["series"][0]["buckets"]] == [4, 0]  # 07:30 Shanghai on the 25th is the 24th in UTC
    hours = kpis(server, **{"from": "2025-11-24T09:00", "to": "2025-11-24T15:00"}, tz="Asia/Shanghai", bucket="hour")
    buckets = hours["series"][0]["buckets"]
    assert len(buckets) == 6 and buckets[0]["label"] == "2025-11-24T09:00:00+08:00"
    assert [b["calls"] for b in buckets] == [2, 0, 0, 0, 0, 1]
    assert buckets[0]["handle_time_s"] == 90.0 and buckets[1]["handle_time_s"] is None


def test_week_buckets_start_on_monday_and_days_follow_daylight_saving(server) -> None:
    week = kpis(server, **{"from": "2025-11-23", "to": "2025-11-30"}, tz="Asia/Shanghai", bucket="week")
    assert [(b["label"], b["calls"]) for b in week["series"][0]["buckets"]] == [
        ("2025-11-17T00:00:00+08:00", 0), ("2025-11-24T00:00:00+08:00", 4)]  # Sunday 23rd is in the week of the 17th
    later = kpis(server, **{"from": "2025-11-26", "to": "2025-11-27"}, tz="Asia/Shanghai", bucket="week")
    [bucket] = later["series"][0]["buckets"]  # the range counts: calls of the 24th and 25th are outside it
    assert bucket["label"] == "2025-11-24T00:00:00+08:00" and bucket["calls"] == 0
    body = kpis(server, **{"from": "2026-10-31", "to": "2026-11-02"}, tz="America/New_York", bucket="day")
    buckets = body["series"][0]["buckets"]
    assert [(b["label"], b["calls"]) for b in buckets] == [
        ("2026-10-31T00:00:00-04:00", 0), ("2026-11-01T00:00:00-04:00", 2), ("2026-11-02T00:00:00-05:00", 1)]
    assert buckets[2]["start"] - buckets[1]["start"] == 25 * 3600 and buckets[0]["start"] == at("2026-10-31T00:00", NEW_YORK)
    hours = kpis(server, **{"from": "2026-11-01T00:00", "to": "2026-11-01T03:00"}, tz="America/New_York", bucket="hour")
    assert [b["label"] for b in hours["series"][0]["buckets"]] == [  # 01:00 twice: EDT, then EST
        "2026-11-01T00:00:00-04:00", "2026-11-01T01:00:00-04:00", "2026-11-01T01:00:00-05:00", "2026-11-01T02:00:00-05:00"]
    assert [b["calls"] for b in hours["series"][0]["buckets"]] == [1, 0, 0, 0]


def test_filters_and_grouping(server) -> None:
    span = {"from": "2025-11-24", "to": "2025-11-25", "tz": "Asia/Shanghai"}
    by_queue = kpis(server, **span, group_by="queue")
    assert [(s["group"], s["total"]["calls"]) for s in by_queue["series"]] == [("billing", 3), ("sales", 1)]
    assert by_queue["series"][1]["total"]["customer_talk_share"] == 0.4  # 20 / 50
    by_agent = kpis(server, **span, group_by="agent", queue="billing")
    assert [(s["group"], s["total"]["calls"]) for s in by_agent["series"]] == [("a1", 2), ("a2", 1)]
    assert by_agent["series"][1]["total"]["alerts"] == 2 and by_agent["series"][1]["total"]["ack_time_s"] == 40.0
    assert kpis(server, **span, language="en")["total"]["calls"] == 1
    outbound = kpis(server, **span, direction="outbound", group_by="language")
    assert [(s["group"], s["total"]["handle_time_s"]) for s in outbound["series"]] == [("zh", 240.0)]
    assert kpis(server, **span, agent="a2", queue="sales")["total"]["calls"] == 1
    assert kpis(server, **span, queue="nobody")["series"][0]["buckets"][0]["calls"] == 0


def test_an_empty_range_has_its_buckets_and_no_figures(server) -> None:
    body = kpis(server, **{"from": "2025-01-06", "to": "2025-01-08"}, tz="UTC", bucket="day")
    [series] = body["series"]
    assert [b["calls"] for b in series["buckets"]] == [0, 0, 0]
    assert all(v is None for k, v in body["total"].items() if k not in ("calls", "alerts"))
    assert kpis(server, **{"from": "2025-01-06", "to": "2025-01-08"}, group_by="queue")["series"] == []


@pytest.mark.parametrize(("params", "message"), [
    ({"tz": "Mars/Olympus"}, "unknown time zone 'Mars/Olympus'"),
    ({"from": "yesterday"}, "from: 'yesterday' is neither Unix seconds nor an ISO 8601"),
    ({"from": "2025-11-25", "to": "2025-11-24"}, "must be before to"),
    ({"from": "2020-01-01", "to": "2026-01-01", "bucket": "hour"}, "more than 2000 hour buckets"),
    ({"bucket": "month"}, "bucket"),
    ({"group_by": "colour"}, "group_by"),
])
def test_bad_parameters_are_422_with_a_clear_message(server, params: dict, message: str) -> None:
    status, body = rest(server, "/v1/kpis", **params)
    assert status == 422 and message in json.dumps(body["detail"], ensure_ascii=False), body


def test_only_supervisors_qa_and_admins_read_kpis(server) -> None:
    assert rest(server, "/v1/kpis", token=QA)[0] == 200
    status, body = rest(server, "/v1/kpis", token=AGENT)
    assert status == 403 and "agent" in body["detail"]
    assert rest(server, "/v1/kpis", token=None)[0] == 401
    assert rest(server, "/v1/anomalies", token=AGENT)[0] == 403


def test_postgresql_sums_as_sqlite_does(tmp_path: Path, postgres: PgServer) -> None:
    lite, pg = SqliteRepository(tmp_path / "calltone.db"), PostgresRepository(postgres.create_database())
    try:
        answers = []
        for repo in (lite, pg):
            seed(repo, CALLS)
            req = KpiRequest(at("2025-11-24T00:00"), at("2025-11-26T00:00"), "day", SHANGHAI, "agent", {"queue": "billing"})
            answers.append(report(req, read_slots(repo, plan(req))).model_dump())
            whole = repo.kpi_sums(KpiSlotQuery(at("2025-11-24T00:00"), at("2025-11-26T00:00")))
            assert [(s.slot, s.group, s.sums.calls, s.sums.alerts) for s in whole] == [(0.0, None, 4, 3)]
        assert answers[0] == answers[1]
        assert [(s["group"], s["total"]["calls"]) for s in answers[0]["series"]] == [("a1", 2), ("a2", 1)]
    finally:
        lite.close()
        pg.close()


def test_a_periodic_turn_goes_to_one_node_on_sqlite_and_postgresql(tmp_path: Path, postgres: PgServer) -> None:
    url = postgres.create_database()
    for first, second in ((SqliteRepository(tmp_path / "calltone.db"), SqliteRepository(tmp_path / "calltone.db")),
                          (PostgresRepository(url), PostgresRepository(url))):  # two nodes on one database
        try:
            assert first.take_turn("anomaly", 7, "node-a", 1.0) and not second.take_turn("anomaly", 7, "node-b", 1.1)
            assert second.take_turn("anomaly", 8, "node-b", 2.0) and not first.take_turn("anomaly", 8, "node-a", 2.0)
            assert first.take_turn("purge", 7, "node-a", 1.0)  # another task's turns are its own
        finally:
            first.close()
            second.close()


@needs_shared(EMOTION_SPEECH)
def test_a_live_call_is_counted_with_the_figures_of_its_summary(server, tmp_path: Path) -> None:
    """A composed call (the escalate script) streamed through the native websocket: its row's KPI columns come from its
    call.ended summary, and GET /v1/kpis gives back that summary's figures."""
    subprocess.run([sys.executable, str(require(MAKE_CALLS)), str(EMOTION_SPEECH), str(tmp_path), "--calls", "4",
                    "--telephony", "--lang", "en"], check=True, capture_output=True, timeout=120)
    audio, rate = read_audio(require(tmp_path / "call001-escalate.wav"))
    before = time.time()
    ended = asyncio.run(stream_call(server.ws, "kpi-live-1", audio, rate, speed=0.0, token=INGEST, language="en",
                                    agent_id="a9", metadata={"queue": "care", "direction": "inbound"}, partials=False))
    assert ended is not None
    summary = CallSummary.model_validate(ended["summary"])
    body = kpis(server, **{"from": str(before - 60), "to": str(time.time() + 60)}, queue="care", bucket="week")
    total, customer = body["total"], summary.grades["customer"]
    assert total["calls"] == 1 and total["handle_time_s"] == round(summary.duration_s, 4)
    assert total["escalation_rate"] == (1.0 if summary.escalations else 0.0) and total["alerts"] == summary.escalations
    assert total["angry_call_share"] == float(customer.reached_angry)
    assert total["angry_min_per_100_min"] == round(100 * customer.angry_s / summary.duration_s, 4)
    assert total["peak_index"] == round(customer.peak_index, 4)
    assert total["silence_share"] == round(summary.silence_s / summary.duration_s, 4)
    assert total["customer_talk_share"] == round(summary.talk_s["customer"] / sum(summary.talk_s.values()), 4)
    assert total["interruptions_per_call"] == sum(summary.interruptions.values())
    assert total["agent_speech_rate"] == (round(summary.agent_speech_rate, 4) if summary.agent_speech_rate else None)
    assert customer.peak_index > 0 and summary.silence_s > 0 and summary.talk_s["agent"] > 0  # real figures, not zeros
    by_direction = kpis(server, **{"from": str(before - 60), "to": str(time.time() + 60)}, agent="a9", group_by="direction")
    assert [(s["group"], s["total"]["calls"]) for s in by_direction["series"]] == [("inbound", 1)]


def test_the_retention_purge_drops_old_anomalies_with_their_deliveries(tmp_path: Path) -> None:
    repo = SqliteRepository(tmp_path / "calltone.db")
    try:
        for name, raised in (("old", 1000.0), ("new", 5000.0)):
            assert repo.insert_anomaly({"anomaly_id": f"anom-{name}", "kpi": "angry_call_share", "scope": "queue",
                                        "scope_value": "billing", "bucket_start": raised - 100, "figures": {},
                                        "raised_at": raised})
            repo.log_delivery(f"anom-{name}", "http://127.0.0.1:9/hook", "ops.anomaly", 1, True, 204, None)
        assert not repo.insert_anomaly({"anomaly_id": "anom-new", "kpi": "angry_call_share", "scope": "queue",
                                        "scope_value": "billing", "bucket_start": 0.0, "figures": {}, "raised_at": 1.0})
        repo.purge(3000.0)
        assert [a["anomaly_id"] for a in repo.list_anomalies(0.0)] == ["anom-new"]
        assert repo.deliveries("anom-old") == [] and len(repo.deliveries("anom-new")) == 1
    finally:
        repo.close()


# --------------------------------------------------------------------------- anomalies


class Hooks(http.server.BaseHTTPRequestHandler):
    received: list[tuple[dict, bytes]] = []

    def do_POST(self) -> None:  # noqa: N802
        Hooks.received.append((dict(self.headers), self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def hour_traffic(prefix: str, start: float, queue: str, agents: list[str], calls: int, angry: int) -> list[Seed]:
    """``calls`` calls spread over the hour from ``start`` (agents in turn), the first ``angry`` of them angry."""
    return [Seed(f"{prefix}-{queue}-{i}", start + 60 + i * (3000 / calls), queue=queue, agent=agents[i % len(agents)],
                 angry_s=20.0 if i < angry else 0.0) for i in range(calls)]


def traffic(hour: float, spike: str | None, weeks: int = 4) -> list[Seed]:
    """Billing and sales, 12 calls in the hour from ``hour`` (1 angry: normal; 8: the spike queue) and 20 calls
    (2 angry) in the same hour of each of ``weeks`` weeks before."""
    calls: list[Seed] = []
    for queue in ("billing", "sales"):
        agents = [f"{queue[0]}{k}" for k in range(4)]  # 3 calls each this hour: below min_calls per agent
        calls += hour_traffic(f"now{hour:.0f}", hour, queue, agents, 12, 8 if queue == spike else 1)
        for week in range(1, weeks + 1):
            calls += hour_traffic(f"w{week}-{hour:.0f}", hour - week * 7 * 86400, queue, agents, 20, 2)
    return calls


@pytest.fixture(scope="module")
def hooks():
    Hooks.received = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hooks)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/hook"
    httpd.shutdown()


def ws_ticket(srv: ServerThread) -> str:
    req = urllib.request.Request(f"{srv.http}/v1/ws-ticket", method="POST", headers={"Authorization": f"Bearer {SUP}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())["ticket"]


def test_a_spike_raises_one_anomaly_on_the_feed_and_webhook_and_normal_traffic_none(tmp_path: Path, runtime, hooks) -> None:
    now = time.time()
    last_hour = (now // 3600 - 1) * 3600  # a whole hour, judged at every evaluation
    repo = SqliteRepository(tmp_path / "calltone.db")
    seed(repo, traffic(last_hour, spike=None))
    repo.close()
    s = Settings(anomaly=AnomalySettings(interval_s=0.2))
    s.server = ServerSettings(data_dir=tmp_path, tokens=dict(TOKENS), webhooks=[hooks])
    with ServerThread(create_app(s, runtime), s) as srv:
        with connect(f"{srv.ws}/v1/alerts?ticket={ws_ticket(srv)}") as ws:
            time.sleep(1.0)  # several evaluations of normal traffic
            assert rest(srv, "/v1/anomalies")[1] == [] and Hooks.received == []
            repo = SqliteRepository(tmp_path / "calltone.db")
            seed(repo, [Seed(f"spike-{i}", last_hour + 100 + i, agent=f"b{i % 4}", angry_s=30.0) for i in range(8)])
            repo.close()
            msg = json.loads(ws.recv(timeout=30))
        time.sleep(1.0)  # more evaluations: the same anomaly is not raised again
        status, listed = rest(srv, "/v1/anomalies", token=QA)
    # billing, last hour: 8 + 1 angry of 20 calls (45 %) against 8 of 80 (10 %)
    assert msg["type"] == "ops.anomaly" and (msg["kpi"], msg["scope"], msg["scope_value"]) == ("angry_call_share",
                                                                                               "queue", "billing")
    figures = msg["figures"]
    assert (figures["calls"], figures["count"], figures["baseline_calls"], figures["baseline_count"]) == (20, 9, 80, 8)
    assert figures["value"] == 0.45 and figures["baseline_value"] == 0.1
    assert figures["z"] == round(0.35 / (0.1 * 0.9 / 20) ** 0.5, 2) and msg["window_start"] == last_hour
    assert status == 200 and [a["alert_id"] for a in listed] == [msg["alert_id"]]
    deadline = time.time() + 10
    while not Hooks.received and time.time() < deadline:
        time.sleep(0.05)
    [(headers, body)] = Hooks.received
    assert headers["X-Calltone-Event"] == "ops.anomaly" and json.loads(body) == msg
