"""Anomaly alerts: a queue's or agent's KPI that departs from its own recent baseline raises ``ops.anomaly``.

Every ``anomaly.interval_s`` one node (the first to take the interval's turn in the store) judges two
windows: the current UTC hour so far and the hour before it (whose calls may have ended since).  For each
queue and agent (``anomaly.scopes``) and each KPI that is a share of calls (``anomaly.kpis``: the angry-call
share, the escalation rate), the window's share ``p`` over its ``n`` ended calls is set against the baseline
``p0``: the same window of the same weekday in each of the ``anomaly.baseline_weeks`` weeks before, pooled.
It alarms when ``n >= min_calls``, the baseline has at least ``min_baseline_calls`` calls, ``p - p0 >=
min_increase`` and ``(p - p0) / sqrt(p0 (1 - p0) / n) >= min_z`` (``p0`` kept within ``1 / baseline calls``
of 0 and 1 there, so a baseline of none is not certainty).

An anomaly's id is made from what it judged (KPI, scope, value, hour), and the store keeps it once
(``Repository.insert_anomaly``): however often a window is judged, one ``ops.anomaly`` goes to the
supervisors' alert feed (topic ``alerts``) and the webhooks.  Rule and defaults: ``docs/ops.md``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field

from calltone.server.bus import Message
from calltone.server.kpis import GROUP_COLUMNS, KpiSlotQuery, KpiSums
from calltone.settings import AnomalyKpi

if TYPE_CHECKING:
    from calltone.server.calls import Services
    from calltone.server.store import Repository
    from calltone.settings import AnomalySettings

log = logging.getLogger("calltone.server.anomaly")

HOUR_S = 3600
WEEK_S = 7 * 86400
ANOMALY = "ops.anomaly"
TURN = "anomaly"  # the periodic task's name in the store's turns
# KPI -> (the KpiSums field counting the calls that have it, the field counting the calls it is a share of)
SHARES: dict[str, tuple[str, str]] = {"angry_call_share": ("reached_angry", "summarised"),
                                      "escalation_rate": ("escalated", "calls")}
Scope = Literal["queue", "agent"]


class AnomalyFigures(BaseModel):
    """What made the alarm: the window's share against the baseline's, and the thresholds it passed."""

    calls: int = Field(description="ended calls in the window")
    count: int = Field(description="of which had the KPI (reached angry / escalated)")
    value: float = Field(description="count / calls, 0-1")
    baseline_calls: int = Field(description="calls in the baseline windows")
    baseline_count: int
    baseline_value: float = Field(description="baseline_count / baseline_calls, 0-1")
    z: float = Field(description="(value - baseline_value) in standard errors of the baseline share over `calls`")
    baseline_weeks: int
    min_calls: int
    min_increase: float
    min_z: float


class AnomalyAlert(BaseModel):
    """What ``WS /v1/alerts``, the webhooks (``X-Calltone-Event: ops.anomaly``) and ``GET /v1/anomalies`` carry."""

    type: Literal["ops.anomaly"] = ANOMALY
    alert_id: str
    kpi: AnomalyKpi
    scope: Scope
    scope_value: str = Field(description="the queue or agent id")
    window_start: float = Field(description="Unix seconds: the hour judged")
    window_end: float = Field(description="Unix seconds: its end, or the time it was judged while under way")
    figures: AnomalyFigures
    status: Literal["open"] = "open"
    raised_at: float

    def row(self) -> dict:
        return {"anomaly_id": self.alert_id, "kpi": self.kpi, "scope": self.scope, "scope_value": self.scope_value,
                "bucket_start": self.window_start, "figures": {**self.figures.model_dump(), "window_end": self.window_end},
                "raised_at": self.raised_at}

    @classmethod
    def of_row(cls, row: dict) -> "AnomalyAlert":
        figures = dict(row["figures"])
        end = figures.pop("window_end")
        return cls(alert_id=row["anomaly_id"], kpi=row["kpi"], scope=row["scope"], scope_value=row["scope_value"],
                   window_start=row["bucket_start"], window_end=end, figures=AnomalyFigures(**figures),
                   raised_at=row["raised_at"])


@dataclass(frozen=True)
class Window:
    start: float
    end: float


def windows(now: float) -> list[Window]:
    """The hour before this one, and this one so far."""
    hour = math.floor(now / HOUR_S) * HOUR_S
    return [Window(hour - HOUR_S, hour), Window(hour, now)]


def judge(kpi: str, current: KpiSums, baseline: KpiSums, cfg: "AnomalySettings") -> AnomalyFigures | None:
    """The figures of an anomaly, or None when the window is within its baseline (or has too few calls)."""
    has, of = SHARES[kpi]
    n, k, n0, k0 = getattr(current, of), getattr(current, has), getattr(baseline, of), getattr(baseline, has)
    if n < cfg.min_calls or n0 < cfg.min_baseline_calls:
        return None
    p, p0 = k / n, k0 / n0
    p0_bounded = min(max(p0, 1 / n0), 1 - 1 / n0)  # a baseline of 0 (or 1) calls is not certainty
    z = (p - p0) / math.sqrt(p0_bounded * (1 - p0_bounded) / n)
    if p - p0 < cfg.min_increase or z < cfg.min_z:
        return None
    return AnomalyFigures(calls=n, count=k, value=round(p, 4), baseline_calls=n0, baseline_count=k0,
                          baseline_value=round(p0, 4), z=round(z, 2), baseline_weeks=cfg.baseline_weeks,
                          min_calls=cfg.min_calls, min_increase=cfg.min_increase, min_z=cfg.min_z)


def anomaly_id(kpi: str, scope: str, value: str, window: Window) -> str:
    key = f"{kpi}|{scope}|{value}|{window.start:.0f}".encode()
    return "anom-" + hashlib.sha256(key).hexdigest()[:16]


def _sums(repo: "Repository", window: Window, column: str, weeks: int) -> tuple[dict, dict]:
    """Per value of ``column``: the window's sums and its baseline's (the same window 1..weeks weeks back)."""
    current = {s.group: s.sums for s in repo.kpi_sums(KpiSlotQuery(window.start, window.end, group=column))}
    baseline: dict[str | None, KpiSums] = {}
    for week in range(1, weeks + 1):
        back = week * WEEK_S
        for s in repo.kpi_sums(KpiSlotQuery(window.start - back, window.end - back, group=column)):
            baseline.setdefault(s.group, KpiSums()).add(s.sums)
    return current, baseline


async def evaluate(s: "Services", now: float) -> list[AnomalyAlert]:
    """Judge the windows at ``now``; store, publish and send each anomaly not raised before.  The new ones."""
    cfg = s.settings.anomaly
    raised: list[AnomalyAlert] = []
    for window in windows(now):
        for scope in cfg.scopes:
            current, baseline = await s.store.read(
                lambda r, w=window, c=GROUP_COLUMNS[scope]: _sums(r, w, c, cfg.baseline_weeks))
            for value, sums in current.items():
                for kpi in cfg.kpis:
                    figures = None if value is None else judge(kpi, sums, baseline.get(value, KpiSums()), cfg)
                    if figures is None:
                        continue
                    alert = AnomalyAlert(alert_id=anomaly_id(kpi, scope, value, window), kpi=kpi, scope=scope,
                                         scope_value=value, window_start=window.start, window_end=window.end,
                                         figures=figures, raised_at=round(time.time(), 3))
                    if await s.store.write(lambda r, row=alert.row(): r.insert_anomaly(row)):
                        publish(s, alert)
                        raised.append(alert)
    return raised


def publish(s: "Services", alert: AnomalyAlert) -> None:
    body = alert.model_dump_json()
    log.warning("%s: %s %s %s at %.3f against a baseline of %.3f (%d calls)", ANOMALY, alert.kpi, alert.scope,
                alert.scope_value, alert.figures.value, alert.figures.baseline_value, alert.figures.calls)
    s.bus.publish("alerts", Message.of(ANOMALY, body))
    s.metrics.alerts.labels(ANOMALY).inc()
    if s.webhooks is not None:
        s.webhooks.send(alert.alert_id, ANOMALY, body)


async def anomaly_loop(s: "Services") -> None:
    """Every ``anomaly.interval_s`` slot of Unix time, the one node that takes the slot's turn in the store judges,
    until cancelled."""
    cfg = s.settings.anomaly
    if not cfg.enabled:
        return
    node = s.registry.ownership.node_id
    while True:
        now = time.time()
        slot = int(now // cfg.interval_s)
        try:
            if await s.store.write(lambda r: r.take_turn(TURN, slot, node, now)):
                await evaluate(s, now)
        except Exception:  # noqa: BLE001 -- judged again next interval
            log.exception("anomaly evaluation failed")
        await asyncio.sleep(max(0.0, (slot + 1) * cfg.interval_s - time.time()))
