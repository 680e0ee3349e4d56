"""The SQL of reviewing calls: searching them (``server/search.py``), where a scored call's recording is, and the
audio access log that every playback writes (``server/playback.py``)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Mapping

from calltone.events import GRADES
from calltone.server.sqlstatements import SqlStatements, check_fields, decode, like_literal

if TYPE_CHECKING:
    from calltone.server.store import CallSearch

AUDIO_ACCESS_FIELDS = ("id", "at", "principal", "role", "call_id", "kind", "byte_range", "status", "bytes")


class ReviewQueries(SqlStatements):
    """Call search, recordings and the audio access log: the :class:`~calltone.server.store.Repository` methods
    of reviewing calls."""

    # -- the audio access log and where a scored call's recording is ---------------------------------
    def log_audio_access(self, access: Mapping[str, Any]) -> None:
        check_fields(access, AUDIO_ACCESS_FIELDS, "audio access")
        self._insert("audio_access", AUDIO_ACCESS_FIELDS, access)

    def audio_accesses(self, call_id: str | None = None, limit: int = 100, offset: int = 0) -> tuple[list[dict], int]:
        """One page of the log, newest first, and how many entries there are in all."""
        conditions, params = self._equal({"call_id": call_id})
        where = self._where(conditions)
        total = self._rows(f"SELECT COUNT(*) AS n FROM audio_access{where}", params)[0]["n"]
        rows = self._rows(f"SELECT * FROM audio_access{where} ORDER BY at DESC, id DESC LIMIT {self._p('limit')} "
                          f"OFFSET {self._p('offset')}", {**params, "limit": limit, "offset": offset})
        return [dict(r) for r in rows], int(total)

    def recording_of(self, call_id: str) -> dict | None:
        """The recording a scoring job made this call from: the item's ``file`` and its job's ``options``."""
        rows = self._rows(f"SELECT i.file, j.options FROM job_items i JOIN jobs j ON j.job_id = i.job_id "
                          f"WHERE i.call_id = {self._p('id')} AND i.status = 'done' ORDER BY i.finished_at DESC",
                          {"id": call_id})
        return decode(rows[0]) if rows else None

    # -- searching calls -------------------------------------------------------------------------------
    def search_calls(self, q: "CallSearch") -> tuple[list[dict], int]:
        """One page of the calls matching ``q``, newest first, and how many match in all.  Dialect-free SQL:
        a word is looked for in the stored (masked) text of the call's finals, which in the stored JSON lies
        between the keys ``"text":`` and ``"final":`` (calltone/events.py), whichever separators the writer used."""
        p = self._p
        conditions, params = self._equal({"status": q.status, "agent_id": q.agent_id})
        for i, word in enumerate(q.words):
            conditions.append(f"EXISTS (SELECT 1 FROM events e WHERE e.call_id = calls.call_id AND "
                              f"e.type = 'transcript.final' AND LOWER(e.body) LIKE {p(f'w{i}')} ESCAPE '!')")
            params[f"w{i}"] = f'%"text":%{like_literal(json.dumps(word.lower(), ensure_ascii=False)[1:-1])}%"final":%'
        if q.queue:
            conditions.append(f"(queue = {p('queue')} OR (queue IS NULL AND metadata LIKE {p('queue_json')} "
                              "ESCAPE '!'))")
            queue_json = like_literal(json.dumps({"queue": q.queue}, ensure_ascii=False)[1:-1])
            params.update(queue=q.queue, queue_json=f"%{queue_json}%")
        for name, value, op in (("since", q.since, ">="), ("until", q.until, "<")):
            if value is not None:
                conditions.append(f"started_at {op} {p(name)}")
                params[name] = value
        if q.escalated is not None:
            conditions.append("escalations > 0" if q.escalated else "escalations = 0")
        if q.peak_grade:
            conditions.append(self._peak_is(q.peak_grade, params))
        where = self._where(conditions)
        total = self._rows(f"SELECT COUNT(*) AS n FROM calls{where}", params)[0]["n"]
        rows = self._rows(f"SELECT * FROM calls{where} ORDER BY started_at DESC, call_id DESC "
                          f"LIMIT {p('limit')} OFFSET {p('offset')}", {**params, "limit": q.limit, "offset": q.offset})
        return [decode(r) for r in rows], int(total)

    def _peak_is(self, grade: str, params: dict[str, Any]) -> str:
        """The call's highest graded emotion (any scored speaker's emotion.update) is ``grade``: it reached it
        and nothing above it."""
        def reached(g: str) -> str:
            params[f"g_{g}"], params[f"gs_{g}"] = f'%"grade":"{g}"%', f'%"grade": "{g}"%'
            return (f"EXISTS (SELECT 1 FROM events e WHERE e.call_id = calls.call_id AND e.type = 'emotion.update' "
                    f"AND (e.body LIKE {self._p(f'g_{g}')} OR e.body LIKE {self._p(f'gs_{g}')}))")

        above = GRADES[GRADES.index(grade) + 1:]
        return " AND ".join([reached(grade), *(f"NOT {reached(g)}" for g in above)])
