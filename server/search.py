"""Searching calls: ``GET /v1/search`` by words of the (PII-masked) transcript, agent, queue, date range, peak grade
and escalation, one page at a time (the SQL: ``ReviewQueries.search_calls`` in ``server/sqlreview.py``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel, Field

from calltone.events import Grade
from calltone.server.api import CallInfo, _since, principal
from calltone.server.auth import Principal
from calltone.server.store import CallSearch

if TYPE_CHECKING:
    from calltone.server.calls import Services

router = APIRouter()

MAX_WORDS = 8  # words in one query (each is a scan of the calls' finals)
MAX_PAGE = 200


class SearchPage(BaseModel):
    calls: list[CallInfo]
    total: int = Field(description="calls matching, over all pages")
    limit: int
    offset: int
    next_offset: int | None = Field(None, description="offset of the next page (None: this is the last)")


def _time(name: str, value: str | None) -> float | None:
    try:
        return _since(value)
    except HTTPException:
        raise HTTPException(422, f"{name} must be Unix seconds or an ISO 8601 time") from None


def _words(q: str) -> tuple[str, ...]:
    words = tuple(dict.fromkeys(w for w in q.split() if w))
    if len(words) > MAX_WORDS:
        raise HTTPException(422, f"at most {MAX_WORDS} words in q (got {len(words)})")
    return words


@router.get("/v1/search", response_model=SearchPage, tags=["calls"], summary="Search calls (paged, newest first)",
            description="Every filter given must hold. `q`: words that must all occur in the call's final transcript "
                        "(as stored: PII-masked; case-insensitive; Chinese: a phrase is one word). Agents search "
                        "only their own calls.")
async def search(request: Request,
                 q: str = Query("", max_length=500, description="words of the transcript, space-separated"),
                 agent_id: str | None = Query(None), queue: str | None = Query(None, description="metadata.queue"),
                 since: str | None = Query(None, description="started at or after: Unix seconds or ISO 8601"),
                 until: str | None = Query(None, description="started before: Unix seconds or ISO 8601"),
                 peak_grade: Grade | None = Query(None, description="the highest grade any scored speaker reached"),
                 escalated: bool | None = Query(None),
                 status: Literal["live", "ended", "interrupted"] | None = Query(None),
                 limit: int = Query(50, ge=1, le=MAX_PAGE), offset: int = Query(0, ge=0),
                 who: Principal = Depends(principal("read_calls"))) -> SearchPage:
    if who.role == "agent":
        if agent_id and agent_id != who.agent_id:
            raise HTTPException(403, "agents can search only their own calls")
        agent_id = who.agent_id
    start, end = _time("since", since), _time("until", until)
    if start is not None and end is not None and end <= start:
        raise HTTPException(422, "until must be after since")
    query = CallSearch(words=_words(q), agent_id=agent_id or None, queue=queue or None, since=start, until=end,
                       peak_grade=peak_grade, escalated=escalated, status=status, limit=limit, offset=offset)
    s: "Services" = request.app.state.services
    rows, total = await s.store.read(lambda r: r.search_calls(query))
    calls = [CallInfo(**{k: v for k, v in row.items() if k in CallInfo.model_fields}) for row in rows]
    more = offset + len(calls) < total
    return SearchPage(calls=calls, total=total, limit=limit, offset=offset, next_offset=offset + len(calls) if more else None)
