"""REST endpoints: calls, alerts, health, readiness and metrics."""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Callable, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, Field

from calltone.server.auth import Principal
from calltone.server.bus import Message
from calltone.server.calls import Services
from calltone.server.protocol import AckRequest, AlertFields, AlertMessage
from calltone.server.summary import compute_summary, timeline

router = APIRouter()


# --------------------------------------------------------------------------- auth


def _services(request: Request) -> Services:
    return request.app.state.services


def principal(permission: str) -> Callable[[Request], Principal]:
    def dep(request: Request) -> Principal:
        auth = request.app.state.auth
        p = auth.lookup(auth.token_from(request.headers, request.query_params))
        if p is None:
            raise HTTPException(401, "a valid bearer token is required", headers={"WWW-Authenticate": "Bearer"})
        if not p.can(permission):
            raise HTTPException(403, f"role {p.role!r} may not do this")
        return p

    return dep


# --------------------------------------------------------------------------- models


class CallInfo(BaseModel):
    call_id: str
    status: Literal["live", "ended", "interrupted"]
    agent_id: str | None = None
    language: str | None = None
    roles: list[str] | None = None
    metadata: dict | None = None
    started_at: float
    ended_at: float | None = None
    duration_s: float | None = None
    escalations: int = 0
    last_seq: int = 0
    summary: dict | None = None


class CallList(BaseModel):
    calls: list[CallInfo]


class AlertInfo(AlertFields):
    reason: str | None = None
    evidence: dict | None = None
    excerpt: list[dict] | None = None
    status: str
    t: float | None = None
    note: str | None = None
    deliveries: list[dict] | None = Field(None, description="webhook delivery log (GET /v1/alerts/{id} only)")


class CallDetail(CallInfo):
    transcript: list[dict] = Field(default_factory=list, description="final transcript segments in order")
    emotion: list[dict] = Field(default_factory=list, description="emotion timeline (emotion.update events)")
    alerts: list[AlertInfo] = Field(default_factory=list)


class Health(BaseModel):
    status: str


class Ready(BaseModel):
    ready: bool
    model: str | None = None
    active_calls: int = 0


def _since(value: str | None) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise HTTPException(422, "since must be Unix seconds or an ISO 8601 time") from None


# --------------------------------------------------------------------------- calls


@router.get("/v1/calls", response_model=CallList, tags=["calls"], summary="List live and past calls")
async def list_calls(request: Request,
                     status: Literal["live", "ended", "interrupted"] | None = Query(None),
                     agent_id: str | None = Query(None, description="only this agent's calls (agents always see only their own)"),
                     since: str | None = Query(None, description="started at or after: Unix seconds or ISO 8601"),
                     escalated: bool | None = Query(None, description="only calls with (true) / without (false) escalations"),
                     limit: int = Query(50, ge=1, le=500),
                     who: Principal = Depends(principal("read_calls"))) -> CallList:
    s = _services(request)
    if who.role == "agent":
        if agent_id and agent_id != who.agent_id:
            raise HTTPException(403, "agents can list only their own calls")
        agent_id = who.agent_id
    ts = _since(since)
    rows = await s.store.read(lambda r: r.list_calls(status=status, agent_id=agent_id, since=ts, escalated=escalated, limit=limit))
    return CallList(calls=[CallInfo(**{k: v for k, v in row.items() if k in CallInfo.model_fields}) for row in rows])


@router.get("/v1/calls/{call_id}", response_model=CallDetail, tags=["calls"],
            summary="One call: summary, transcript, emotion timeline, alerts")
async def get_call(call_id: str, request: Request, who: Principal = Depends(principal("read_calls"))) -> CallDetail:
    s = _services(request)

    def load(r):
        return r.get_call(call_id), r.events(call_id, 0), r.list_alerts(call_id=call_id, limit=1000)

    row, events, alerts = await s.store.read(load)
    if row is None:
        raise HTTPException(404, f"no call {call_id}")
    if not who.can_see_call(row["agent_id"]):
        raise HTTPException(403, "this call belongs to another agent")
    decoded = [json.loads(body) for _, _, body in events]
    summary = row.get("summary")
    if summary is None:  # live or interrupted: summarise what is stored so far
        duration = max((e.get("t", 0.0) for e in decoded), default=0.0)
        summary = compute_summary(decoded, duration, {"partial": True})
    tl = timeline(decoded)
    info = {k: v for k, v in row.items() if k in CallInfo.model_fields}
    info["summary"] = summary
    return CallDetail(**info, transcript=tl["transcript"], emotion=tl["emotion"],
                      alerts=[AlertInfo(**a) for a in alerts])


# --------------------------------------------------------------------------- alerts


@router.get("/v1/alerts", response_model=list[AlertInfo], tags=["alerts"], summary="List alerts")
async def list_alerts(request: Request, status: Literal["open", "cleared", "acked"] | None = None,
                      call_id: str | None = None, limit: int = Query(100, ge=1, le=1000),
                      who: Principal = Depends(principal("list_alerts"))) -> list[AlertInfo]:
    rows = await _services(request).store.read(lambda r: r.list_alerts(call_id=call_id, status=status, limit=limit))
    return [AlertInfo(**a) for a in rows]


@router.get("/v1/alerts/{alert_id}", response_model=AlertInfo, tags=["alerts"], summary="One alert with its webhook deliveries")
async def get_alert(alert_id: str, request: Request, who: Principal = Depends(principal("list_alerts"))) -> AlertInfo:
    row, deliveries = await _services(request).store.read(lambda r: (r.get_alert(alert_id), r.deliveries(alert_id)))
    if row is None:
        raise HTTPException(404, f"no alert {alert_id}")
    return AlertInfo(**row, deliveries=deliveries)


@router.post("/v1/alerts/{alert_id}/ack", response_model=AlertInfo, tags=["alerts"],
             summary="Acknowledge an alert (records who, when, and whether they barge in)")
async def ack_alert(alert_id: str, body: AckRequest, request: Request,
                    who: Principal = Depends(principal("ack"))) -> AlertInfo:
    s = _services(request)
    now = time.time()

    def ack(r):
        row = r.get_alert(alert_id)
        if row is None:
            return None, "missing"
        if row["status"] == "acked":
            return row, "already"
        r.update_alert(alert_id, status="acked", acked_by=who.name, acked_at=now, barge_in=body.barge_in, note=body.note)
        return r.get_alert(alert_id), "ok"

    row, outcome = await s.store.write(ack)
    if outcome == "missing":
        raise HTTPException(404, f"no alert {alert_id}")
    if outcome == "already":
        raise HTTPException(409, f"alert {alert_id} was already acknowledged by {row['acked_by']}")
    msg = AlertMessage(type="alert.acked", **{k: v for k, v in row.items() if k in AlertMessage.model_fields and k != "type"})
    payload = msg.model_dump_json()
    s.bus.publish("alerts", Message.of("alert.acked", payload))
    s.metrics.alerts.inc(1, "alert.acked")
    if s.webhooks is not None:
        s.webhooks.send(alert_id, "alert.acked", payload)
    return AlertInfo(**row)


# --------------------------------------------------------------------------- operations


@router.get("/healthz", response_model=Health, tags=["operations"], summary="Liveness (the process answers)")
async def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Ready, tags=["operations"], summary="Readiness (speech model loaded)",
            responses={503: {"model": Ready}})
async def readyz(request: Request):
    s = _services(request)
    body = Ready(ready=s.ready, model=s.settings.asr.model if s.ready else None, active_calls=len(s.registry))
    if not s.ready:
        from fastapi.responses import JSONResponse

        return JSONResponse(body.model_dump(), status_code=503)
    return body


@router.get("/metrics", response_class=PlainTextResponse, tags=["operations"], summary="Prometheus metrics")
async def metrics(request: Request, who: Principal = Depends(principal("metrics"))) -> PlainTextResponse:
    return PlainTextResponse(_services(request).metrics.render(), media_type="text/plain; version=0.0.4")
