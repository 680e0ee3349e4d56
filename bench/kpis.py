"""GET /v1/kpis on a store of 100,000 calls: the API's latency for typical queries.

    python bench/kpis.py                          # 100,000 calls over 90 days in SQLite, 40 requests per query
    python bench/kpis.py --calls 20000 --requests 10
    python bench/kpis.py --database-url postgresql://user@127.0.0.1:5432/db   # an empty PostgreSQL database

Fills a new store (a temporary SQLite file unless ``--database-url``) with ``--calls`` synthetic ended calls
spread over the ``--days`` before now (more by day than by night), each row written as at call end: a
``CallSummary`` (random but plausible figures: 12 queues, 300 agents, zh/en, inbound/outbound, 30 % reaching
angry), its KPI columns (``server/kpis.py``: ``call_columns``) and one alert for each escalation (half of them
acknowledged, a quarter barged).  Then starts ``calltone serve`` on it (``bench/live.py``'s ``start_server``;
dev mode, retention off) and times each query ``--requests`` times, one at a time, from a client on the same
machine: the wall time of the whole HTTP request (p50, p95, max in ms), with the size of its answer.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

from live import start_server  # bench/live.py

from calltone.server.database import open_repository
from calltone.server.kpis import call_columns
from calltone.summary import CallSummary, ChannelGrades

QUEUES = [f"q{i:02d}" for i in range(12)]
AGENTS = [f"agent{i:03d}" for i in range(300)]
BATCH = 5000  # calls per transaction while filling
QUERIES = {  # name -> query parameters (from/to relative to now: days back)
    "7 days by day": {"days": 7, "bucket": "day"},
    "7 days by hour": {"days": 7, "bucket": "hour"},
    "24 h by hour, one queue": {"days": 1, "bucket": "hour", "queue": "q03"},
    "30 days by day, grouped by queue": {"days": 30, "bucket": "day", "group_by": "queue"},
    "30 days by day, one agent": {"days": 30, "bucket": "day", "agent": "agent042"},
    "90 days by week, grouped by agent": {"days": 90, "bucket": "week", "group_by": "agent"},
    "90 days by day, zh inbound": {"days": 90, "bucket": "day", "language": "zh", "direction": "inbound"},
}


def summary(rng: random.Random) -> CallSummary:
    duration = rng.lognormvariate(5.3, 0.6)  # median ~200 s
    cust, agent = duration * rng.uniform(0.25, 0.5), duration * rng.uniform(0.2, 0.45)
    angry = rng.random() < 0.3
    angry_s = cust * rng.uniform(0.05, 0.4) if angry else 0.0
    peak = rng.uniform(70, 100) if angry else rng.uniform(10, 69)
    grades = {"customer": ChannelGrades(seconds={"calm": cust - angry_s, "anxious": 0.0, "angry": angry_s}, share={},
                                        peak_index=round(peak, 1), peak_grade="angry" if angry else "calm",
                                        peak_t=duration / 2, reached_angry=angry, angry_s=round(angry_s, 3), updates=20)}
    overtalk = min(cust, agent) * rng.uniform(0, 0.08)
    return CallSummary(duration_s=round(duration, 3), language=rng.choice(["zh", "en"]), speech_source="vad",
                       talk_s={"customer": round(cust, 3), "agent": round(agent, 3)}, talk_share={},
                       silence_s=round(max(0.0, duration - cust - agent + overtalk), 3), silence_share=0.0,
                       longest_silence_s=5.0, overtalk_s=round(overtalk, 3),
                       interruptions={"customer": rng.randint(0, 4), "agent": rng.randint(0, 2)},
                       agent_speech_rate=round(rng.uniform(120, 260), 1), speech_rate={}, grades=grades,
                       escalations=(1 if angry and rng.random() < 0.5 else 0), final_segments=40)


def start_time(rng: random.Random, now: float, days: int) -> float:
    """A start in the last ``days`` days, mostly during the day (UTC 01-13: 09-21 in Shanghai)."""
    day = now - rng.randrange(days) * 86400
    hour = rng.uniform(1, 13) if rng.random() < 0.85 else rng.uniform(0, 24)
    return min(now - 600, (day // 86400) * 86400 + hour * 3600)


def fill(repo, calls: int, days: int, seed: int) -> int:
    rng = random.Random(seed)
    now, alerts = time.time(), 0
    for first in range(0, calls, BATCH):
        with repo.transaction():
            for i in range(first, min(calls, first + BATCH)):
                s = summary(rng)
                meta = {"queue": rng.choice(QUEUES), "direction": "inbound" if rng.random() < 0.8 else "outbound"}
                started, agent = start_time(rng, now, days), rng.choice(AGENTS)
                repo.upsert_call({"call_id": f"bench-{i:06d}", "status": "ended", "agent_id": agent,
                                  "language": s.language, "metadata": meta, "roles": ["customer", "agent"],
                                  "started_at": started, "ended_at": started + s.duration_s, "duration_s": s.duration_s,
                                  "escalations": s.escalations, "summary": s.model_dump(), "updated_at": now,
                                  **call_columns(s, meta)})
                if s.escalations:
                    alerts += 1
                    acked = rng.random() < 0.5
                    repo.insert_alert({"alert_id": f"bench-al-{i:06d}", "call_id": f"bench-{i:06d}", "agent_id": agent,
                                       "channel": "customer", "reason": "rising", "status": "acked" if acked else "cleared",
                                       "raised_at": started + 60, "acked_at": started + 60 + rng.uniform(5, 90) if acked else None,
                                       "barge_in": acked and rng.random() < 0.5})
    return alerts


def timed(url: str) -> tuple[float, int]:
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as resp:
        size = len(resp.read())
    return (time.perf_counter() - t0) * 1000, size


def measure(base: str, requests: int) -> list[dict]:
    now = time.time()
    out = []
    for name, spec in QUERIES.items():
        params = {k: v for k, v in spec.items() if k != "days"}
        params.update({"from": str(now - spec["days"] * 86400), "to": str(now), "tz": "Asia/Shanghai"})
        url = f"{base}/v1/kpis?{urllib.parse.urlencode(params)}"
        timed(url)  # warm
        runs = [timed(url) for _ in range(requests)]
        ms = sorted(r[0] for r in runs)
        out.append({"query": name, "p50_ms": round(statistics.median(ms), 1),
                    "p95_ms": round(ms[min(len(ms) - 1, int(0.95 * len(ms)))], 1), "max_ms": round(ms[-1], 1),
                    "answer_kb": round(runs[0][1] / 1024, 1)})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=100_000)
    ap.add_argument("--days", type=int, default=90)
    ap.add_argument("--requests", type=int, default=40, help="requests per query")
    ap.add_argument("--port", type=int, default=8771)
    ap.add_argument("--seed", type=int, default=15)
    ap.add_argument("--database-url", default="", help="an empty PostgreSQL database (default: a new SQLite file)")
    args = ap.parse_args()
    data = Path(tempfile.mkdtemp(prefix="calltone-kpis-"))
    t0 = time.perf_counter()
    repo = open_repository(args.database_url, data)
    alerts = fill(repo, args.calls, args.days, args.seed)
    repo.close()
    fill_s = time.perf_counter() - t0
    print(f"filled {args.calls} calls and {alerts} alerts in {fill_s:.1f} s ({repo!r})", file=sys.stderr)
    os.environ["CALLTONE_PRIVACY__RETENTION_DAYS"] = "0"  # the oldest calls are 90 days old
    if args.database_url:
        os.environ["CALLTONE_SERVER__DATABASE_URL"] = args.database_url
    proc = start_server(args.port, data)
    try:
        results = measure(f"http://127.0.0.1:{args.port}", args.requests)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(data, ignore_errors=True)
    print(json.dumps({"calls": args.calls, "alerts": alerts, "days": args.days, "requests": args.requests,
                      "fill_s": round(fill_s, 1), "store": repr(repo), "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
