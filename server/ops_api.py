"""Operations endpoints: ``GET /v1/kpis`` (KPIs over time, ``server/kpis.py``) and ``GET /v1/anomalies`` (the
``ops.anomaly`` alerts raised on them, ``server/anomaly.py``).  Roles: supervisor, QA, admin."""

from __future__ import annotations

import asyncio
import time
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response

from calltone.server.anomaly import AnomalyAlert
from calltone.server.api import principal
from calltone.server.auth import Principal
from calltone.server.calls import Services
from calltone.server.kpis import Bucket, GroupBy, KpiReport, KpiRequest, bucket_starts, plan, read_slots, report

router = APIRouter()

DEFAULT_RANGE_S = 7 * 86400  # no `from`: the week before `to`
TIME_HELP = ("Unix seconds, or ISO 8601: a date (midnight in tz; as `to`, the end of that day) or a date-time (in tz "
             "unless it has an offset)")


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise HTTPException(422, f"tz: unknown time zone {name!r} (an IANA name such as 'Asia/Shanghai' or 'UTC')") from None


def _instant(name: str, value: str, tz: ZoneInfo, end_of_day: bool) -> float:
    try:
        return float(value)
    except ValueError:
        pass
    try:
        if len(value) == 10:
            day = date.fromisoformat(value) + timedelta(days=1 if end_of_day else 0)
            return datetime.combine(day, datetime.min.time(), tz).timestamp()
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise HTTPException(422, f"{name}: {value!r} is neither Unix seconds nor an ISO 8601 date or date-time") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=tz)).timestamp()


def _services(request: Request) -> Services:
    return request.app.state.services


@router.get("/v1/kpis", response_model=KpiReport, tags=["operations"], summary="Contact-centre KPIs over time",
            description="Ended calls counted where they started, per hour, day or week of the viewer's time zone, "
                        "filtered and optionally grouped by queue, agent, language or direction. Definitions and "
                        "units: docs/ops.md. Roles: supervisor, QA, admin.")
async def kpis(request: Request, start: str | None = Query(None, alias="from", description=TIME_HELP),
               end: str | None = Query(None, alias="to", description=f"{TIME_HELP}; default: now"),
               tz: str = Query("UTC", description="IANA time zone of the buckets and of dates without an offset"),
               bucket: Bucket = Query("day"), group_by: GroupBy | None = Query(None),
               queue: str | None = None, agent: str | None = None, language: str | None = None,
               direction: str | None = None, who: Principal = Depends(principal("read_kpis"))) -> Response:
    zone = _zone(tz)
    until = _instant("to", end, zone, end_of_day=True) if end else time.time()
    since = _instant("from", start, zone, end_of_day=False) if start else until - DEFAULT_RANGE_S
    if since >= until:
        raise HTTPException(422, f"from ({start}) must be before to ({end or 'now'})")
    wanted = {"queue": queue, "agent": agent, "language": language, "direction": direction}
    req = KpiRequest(since, until, bucket, zone, group_by, {k: v for k, v in wanted.items() if v})
    try:
        bucket_starts(since, until, bucket, zone)  # refuse a range of too many buckets before reading anything
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    queries = plan(req)
    slots = await _services(request).store.read(lambda r: read_slots(r, queries))
    answer = await asyncio.to_thread(lambda: report(req, slots).model_dump_json())  # ~10^4 buckets: off the loop
    return Response(answer, media_type="application/json")  # serialised once (not validated again)


@router.get("/v1/anomalies", response_model=list[AnomalyAlert], tags=["operations"],
            summary="ops.anomaly alerts raised in the last `hours` hours, newest first (roles: supervisor, QA, admin)")
async def anomalies(request: Request, hours: float = Query(24.0, gt=0, le=24 * 90), limit: int = Query(100, ge=1, le=1000),
                    who: Principal = Depends(principal("read_kpis"))) -> list[AnomalyAlert]:
    since = time.time() - hours * 3600
    rows = await _services(request).store.read(lambda r: r.list_anomalies(since, limit))
    return [AnomalyAlert.of_row(row) for row in rows]
