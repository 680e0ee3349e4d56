"""REST endpoints: calls, alerts, health, readiness and metrics."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import time
import uuid
from pathlib import Path
from datetime import datetime
from typing import Callable, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import FileResponse, PlainTextResponse, RedirectResponse
from pydantic import BaseModel, Field, ValidationError
from starlette.datastructures import UploadFile as StarletteUploadFile

from calltone.batch.scorer import ScoreOptions, find_recordings
from calltone.server.auth import (REPORT_COOKIE, REPORT_COOKIE_TTL_S, REPORT_LINK_TTL_S, WS_SCOPE, WS_TICKET_TTL_S,
                                   Authenticator, Principal, report_link_scope, report_scope)
from calltone.server.bus import Message
from calltone.server.calls import Services
from calltone.server.jobs import Job, JobRunner
from calltone.server.metrics import CONTENT_TYPE
from calltone.server.protocol import AckRequest, AlertFields, AlertMessage
from calltone.summary import CallSummary, summarize, timeline

log = logging.getLogger("calltone.server.api")
router = APIRouter()


# --------------------------------------------------------------------------- auth


def _services(request: Request) -> Services:
    return request.app.state.services


def _checked(p: Principal | None, permission: str | None) -> Principal:
    if p is None:
        raise HTTPException(401, "a valid bearer token is required", headers={"WWW-Authenticate": "Bearer"})
    if permission is not None and not p.can(permission):
        raise HTTPException(403, f"role {p.role!r} may not do this")
    return p


def principal(permission: str | None) -> Callable[[Request], Principal]:
    """REST: the ``Authorization: Bearer`` header only (a credential in the URL would be logged); ``None``: any role."""
    def dep(request: Request) -> Principal:
        auth: Authenticator = request.app.state.auth
        return _checked(auth.lookup(auth.bearer(request.headers)), permission)

    return dep


class WsTicket(BaseModel):
    ticket: str = Field(description="open a websocket with ?ticket=<ticket>; valid once, for expires_in seconds")
    expires_in: int


class ReportLink(BaseModel):
    url: str = Field(description="open in a browser once, within expires_in seconds; it sets a cookie valid for this "
                                 "job's reports only")
    expires_in: int


@router.post("/v1/ws-ticket", response_model=WsTicket, tags=["auth"],
             summary="Trade the bearer token for a single-use websocket ticket (browsers: no token in URLs)")
async def ws_ticket(request: Request, who: Principal = Depends(principal(None))) -> WsTicket:
    ticket = request.app.state.auth.tickets.issue(who, WS_SCOPE, WS_TICKET_TTL_S)
    return WsTicket(ticket=ticket, expires_in=int(WS_TICKET_TTL_S))


# --------------------------------------------------------------------------- models


class CallInfo(BaseModel):
    call_id: str = Field(description="live calls: the producer's id; scored recordings: '<file>-<job>' (metadata.source 'batch')")
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
    summary: CallSummary | None = Field(None, description="the call summary (docs/events.md); partial while live")
    transcript: list[dict] = Field(default_factory=list, description="final transcript segments in order")
    emotion: list[dict] = Field(default_factory=list, description="emotion timeline (emotion.update events)")
    alerts: list[AlertInfo] = Field(default_factory=list)


class Health(BaseModel):
    status: str


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
        row = r.get_call(call_id)
        decoded = [json.loads(body) for _, _, body in r.events(call_id, 0)] if row is not None else []
        return row, decoded, r.list_alerts(call_id=call_id, limit=1000), call_summary(row, decoded) if row else None

    row, decoded, alerts, summary = await s.store.read(load)  # the summary is computed in the reader thread
    access = who.call_access(row is not None, row["agent_id"] if row is not None else None)
    if access == "not_found":
        raise HTTPException(404, f"no call {call_id}")
    if access == "forbidden":  # the same answer for another agent's call and an unknown id
        raise HTTPException(403, f"call {call_id} is not one of your calls")
    tl = timeline(decoded)
    info = {k: v for k, v in row.items() if k in CallInfo.model_fields}
    info["summary"] = summary
    return CallDetail(**info, transcript=tl["transcript"], emotion=tl["emotion"],
                      alerts=[AlertInfo(**a) for a in alerts])


def call_summary(row: dict, events: list[dict]) -> CallSummary:
    """The stored call summary; for a call still live or interrupted, or one stored before the summary had its
    present form, the summary of the events stored so far (speech from the finals)."""
    stored = row.get("summary") or {}
    if row.get("status") == "ended":
        try:
            return CallSummary.model_validate(stored)
        except ValidationError:
            pass
    duration = max([row.get("duration_s") or 0.0] + [e.get("t", 0.0) for e in events])
    return summarize(events, duration, roles=row.get("roles") or (), partial=row.get("status") != "ended",
                     end_reason=stored.get("end_reason"))


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
    s.metrics.alerts.labels("alert.acked").inc()
    if s.webhooks is not None:
        s.webhooks.send(alert_id, "alert.acked", payload)
    return AlertInfo(**row)


# --------------------------------------------------------------------------- operations


@router.get("/healthz", response_model=Health, tags=["operations"], summary="Liveness (the process answers)")
async def healthz() -> Health:
    return Health(status="ok")


@router.get("/metrics", response_class=PlainTextResponse, tags=["operations"], summary="Prometheus metrics")
async def metrics(request: Request, who: Principal = Depends(principal("metrics"))) -> PlainTextResponse:
    return PlainTextResponse(_services(request).metrics.render(), media_type=CONTENT_TYPE)


# --------------------------------------------------------------------------- QA scoring jobs


class JobRequest(ScoreOptions):
    paths: list[str] = Field(description="recordings or folders under server.recordings_dir")


def _jobs(request: Request) -> JobRunner:
    return _services(request).jobs


def _options_from_form(form) -> ScoreOptions:
    fields = {k: form.get(k) for k in ("customer_channel", "mono", "language", "transcript") if form.get(k) not in (None, "")}
    for k in ("mono", "transcript"):
        if k in fields:
            fields[k] = str(fields[k]).lower() in ("1", "true", "yes", "on")
    try:
        return ScoreOptions.model_validate(fields)
    except ValidationError as exc:
        raise HTTPException(422, f"bad scoring options: {exc.errors()[0]['loc'][0]}: {exc.errors()[0]['msg']}") from None


@router.post("/v1/jobs", response_model=Job, status_code=202, tags=["jobs"],
             summary="Score recordings (multipart upload in 'files', or JSON {paths, options}) in the background")
async def create_job(request: Request, who: Principal = Depends(principal("score"))) -> Job:
    jobs = _jobs(request)
    settings = _services(request).settings
    ctype = request.headers.get("content-type", "")
    job_id = uuid.uuid4().hex[:12]
    if ctype.startswith("multipart/form-data"):
        limit = settings.server.max_upload_mb * 1024 * 1024
        form = await request.form()
        uploads = [u for u in form.getlist("files") if isinstance(u, StarletteUploadFile)]
        if not uploads:
            raise HTTPException(422, "no recordings: send them as multipart 'files'")
        options = _options_from_form(form)
        folder = jobs.dir(job_id) / "input"
        folder.mkdir(parents=True, exist_ok=True)
        files = []
        for k, u in enumerate(uploads):
            name = Path(u.filename or f"upload-{k}").name or f"upload-{k}"
            target = folder / name
            if target.exists():
                target = folder / f"{k}-{name}"
            size = 0
            with open(target, "wb") as f:
                while chunk := await u.read(1 << 20):
                    size += len(chunk)
                    if size > limit:
                        shutil.rmtree(folder, ignore_errors=True)
                        raise HTTPException(413, f"{name}: larger than server.max_upload_mb ({settings.server.max_upload_mb} MB)")
                    await asyncio.to_thread(f.write, chunk)
            files.append(target)
        return await jobs.submit(files, options, uploaded=True, job_id=job_id)
    if ctype.startswith("application/json"):
        try:
            body = JobRequest.model_validate(await request.json())
        except (ValidationError, ValueError) as exc:
            raise HTTPException(422, f"bad job request: {exc}") from None
        root = settings.server.recordings_dir
        if root is None:
            raise HTTPException(403, "server-side paths are disabled (set server.recordings_dir); upload the files instead")
        root = Path(root).resolve()
        resolved = [(root / p).resolve() for p in body.paths]
        outside = [p for p, r in zip(body.paths, resolved) if not r.is_relative_to(root)]
        if outside:
            raise HTTPException(403, f"paths outside server.recordings_dir: {outside}")
        files, missing = find_recordings(resolved)
        if missing or not files:
            raise HTTPException(422, f"no recordings found: {[m for m, _ in missing] or body.paths}")
        return await jobs.submit(files, ScoreOptions.model_validate(body.model_dump(exclude={"paths"})), uploaded=False,
                                 job_id=job_id)
    raise HTTPException(415, "send multipart/form-data (files) or application/json ({paths})")


@router.get("/v1/jobs", response_model=list[Job], tags=["jobs"], summary="Scoring jobs, newest first")
async def list_jobs(request: Request, who: Principal = Depends(principal("score"))) -> list[Job]:
    return await _jobs(request).list_jobs()


@router.get("/v1/jobs/{job_id}", response_model=Job, tags=["jobs"], summary="A job's progress, results and errors")
async def get_job(job_id: str, request: Request, who: Principal = Depends(principal("score"))) -> Job:
    job = await _jobs(request).get(job_id)  # read from the store: any node answers for any job
    if job is None:
        raise HTTPException(404, f"no job {job_id}")
    return job


@router.post("/v1/jobs/{job_id}/report-link", response_model=ReportLink, tags=["jobs"],
             summary="A link that opens the job's reports in a browser (single use; sets a cookie for this job only)")
async def report_link(job_id: str, request: Request, who: Principal = Depends(principal("score"))) -> ReportLink:
    if await _jobs(request).get(job_id) is None:
        raise HTTPException(404, f"no job {job_id}")
    ticket = request.app.state.auth.tickets.issue(who, report_link_scope(job_id), REPORT_LINK_TTL_S)
    return ReportLink(url=f"/v1/jobs/{job_id}/reports/index.html?ticket={ticket}", expires_in=int(REPORT_LINK_TTL_S))


@router.get("/v1/jobs/{job_id}/reports/{path:path}", tags=["jobs"],
            summary="A job's report files (index.html, <call>.html/.json, summary.csv): bearer header or report cookie")
async def job_report(job_id: str, path: str, request: Request):
    auth: Authenticator = request.app.state.auth
    link = request.query_params.get("ticket")
    linked = auth.tickets.redeem(link, report_link_scope(job_id)) if link else None
    if linked is not None and linked.can("score"):
        # a report link: trade its single-use ticket for a cookie scoped to this job, and drop it from the address bar
        response = RedirectResponse(request.url.path, status_code=303)
        cookie = auth.tickets.issue(linked, report_scope(job_id), REPORT_COOKIE_TTL_S, single_use=False)
        response.set_cookie(REPORT_COOKIE, cookie, max_age=int(REPORT_COOKIE_TTL_S), path=f"/v1/jobs/{job_id}/reports",
                            httponly=True, samesite="lax", secure=request.url.scheme == "https")
        return response
    cookie = request.cookies.get(REPORT_COOKIE)
    _checked(auth.lookup(auth.bearer(request.headers)) or (auth.tickets.redeem(cookie, report_scope(job_id)) if cookie else None),
             "score")
    root = (_jobs(request).dir(job_id) / "reports").resolve()
    target = (root / path).resolve()
    if not target.is_relative_to(root) or not target.is_file():
        raise HTTPException(404, f"no report file {path!r} in job {job_id}")
    return FileResponse(target)
