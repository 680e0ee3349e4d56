"""Readiness: whether this node takes a new call now, and why not; draining it.

``GET /readyz`` is what a load balancer checks (503 with the reason while the speech model loads,
the store cannot write, the node drains, or admission control says it is full: ``server/admission.py``);
``GET /readyz?for=api`` leaves the load out, since a full node still serves REST, pages and feeds.
``POST /v1/drain`` answers the same body.
"""

from __future__ import annotations

import logging
from typing import Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from calltone.server.api import _services, principal
from calltone.server.auth import Principal
from calltone.server.calls import Services

log = logging.getLogger("calltone.server.readiness")
router = APIRouter()


class Ready(BaseModel):
    ready: bool
    model: str | None = None
    active_calls: int = 0
    reason: str | None = Field(None, description="why not ready: the speech model is loading, the store cannot write, "
                                                  "the node is draining, at capacity or its ASR is lagging")
    draining: bool = Field(False, description="the node takes no new calls; its live calls carry on (POST /v1/drain)")
    capacity: int | None = Field(None, description="live calls this node takes (server.max_calls); null: no limit")
    headroom: int | None = Field(None, description="calls it may still take: capacity minus live calls (negative when "
                                                   "resumed calls took it past its capacity); null: no limit")
    asr_lag_s: float = Field(0.0, description="age of the ASR queue's oldest job (server.max_asr_lag_s refuses new calls)")


class DrainRequest(BaseModel):
    draining: bool = Field(True, description="true: take no new calls (readiness 503); false: take calls again")


@router.get("/readyz", response_model=Ready, tags=["operations"],
            summary="Readiness (speech model loaded, the store can write, room for a new call)",
            description="503 with `reason` while the node cannot take a new call: the model is loading, the store "
                        "cannot write, the node drains, is at capacity (`at_capacity`) or its ASR lags "
                        "(`asr_lagging`). `?for=api`: readiness for REST and feeds, which a full node still serves "
                        "(capacity and lag left out).", responses={503: {"model": Ready}})
async def readyz(request: Request, for_: Literal["calls", "api"] = Query("calls", alias="for")):
    body = await _readiness(_services(request), for_)
    if not body.ready:
        return JSONResponse(body.model_dump(), status_code=503)
    return body


async def _readiness(s: Services, for_: Literal["calls", "api"] = "calls") -> Ready:
    """Whether this node takes a new call now (``for_="api"``: serves REST and feeds), and why not."""
    store_ok = await s.store.probe()  # while the store is failed: a probe write, at most once a second
    reason = None if store_ok else f"store_unavailable: {s.store.failure}"
    if not s.ready:
        reason = "not_ready: the speech model is still loading"
    draining = s.registry.draining
    if draining and reason is None:
        reason = f"draining: no new calls; {len(s.registry)} live call(s) carry on"
    load = s.admission.load()
    overload = s.admission.overload(load) if for_ == "calls" else None
    if overload is not None and reason is None:
        reason = f"{overload.code}: {overload.message}"
    cap = s.admission.policy.capacity
    return Ready(ready=reason is None, model=s.settings.asr.model if s.ready else None, active_calls=len(s.registry),
                 reason=reason, draining=draining, capacity=cap, headroom=None if cap is None else cap - load.calls,
                 asr_lag_s=round(load.asr_lag_s, 3))


@router.post("/v1/drain", response_model=Ready, tags=["operations"], summary="Drain this node (or take it back)",
             description="Draining: /readyz answers 503, new calls are refused with 1012 (a load balancer sends them "
                         "elsewhere), live calls carry on. Stop the process once active_calls is 0; calls still live "
                         "then are left resumable. Also: SIGUSR1 to `calltone serve`. Role: admin.")
async def drain(request: Request, body: DrainRequest, who: Principal = Depends(principal("operate"))) -> Ready:
    s = _services(request)
    s.registry.draining = body.draining
    log.warning("%s: node %s by %s (%d live call(s))", "drain" if body.draining else "undrain",
                "draining" if body.draining else "taking calls again", who.name, len(s.registry))
    return await _readiness(s)
