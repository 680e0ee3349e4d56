"""What the SQL repositories share: the columns callers may write, how values are stored, and every statement
that SQLite and PostgreSQL run alike (one definition, so both stores answer the same).

Values are stored alike on both: JSON fields as ``json.dumps`` text, booleans as integers 0/1 (``barge_in`` is
read back as ``bool``, a delivery's ``ok`` as 0/1), times as floats.  A subclass supplies the connection
(:meth:`SqlRepository._run`, :meth:`SqlRepository._rows`), ``transaction()``, ``is_storage_failure`` and
``close()``, and how it writes a named parameter.
"""

from __future__ import annotations

import json
import os
import time
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar, Iterable, Mapping, Sequence

from calltone.events import GRADES
from calltone.server.kpis import GROUP_COLUMNS, KpiSlot, KpiSlotQuery, KpiSums

if TYPE_CHECKING:
    from calltone.server.store import CallSearch

CALL_FIELDS = ("call_id", "status", "agent_id", "language", "metadata", "roles", "started_at", "ended_at",
               "duration_s", "escalations", "summary", "last_seq", "updated_at", "owner_node",
               # written at call end for the KPIs (server/kpis.py, migration 0004_kpis)
               "queue", "direction", "angry_s", "reached_angry", "peak_index", "talk_s", "customer_talk_s",
               "silence_s", "overtalk_s", "interruptions", "agent_speech_rate")
ALERT_FIELDS = ("alert_id", "call_id", "agent_id", "channel", "reason", "evidence", "excerpt", "status", "t", "seq",
                "raised_at", "cleared_at", "acked_by", "acked_at", "barge_in", "note")
JOB_FIELDS = ("job_id", "status", "engine", "options", "uploaded", "owner", "lease_until", "error", "created_at",
              "started_at", "finished_at", "updated_at")
JOB_ITEM_FIELDS = ("job_id", "seq", "file", "name", "status", "call_id", "report", "report_json", "error", "audio_s",
                   "language", "peak_grade", "escalations", "started_at", "finished_at", "updated_at")
AUDIO_ACCESS_FIELDS = ("id", "at", "principal", "role", "call_id", "kind", "byte_range", "status", "bytes")
ANOMALY_FIELDS = ("anomaly_id", "kpi", "scope", "scope_value", "bucket_start", "figures", "raised_at")
JOB_OPEN = "status IN ('queued', 'running')"  # a job someone may (still) score
JSON_FIELDS = frozenset({"metadata", "roles", "summary", "evidence", "excerpt", "options", "figures"})
TURNS_KEPT = 100  # slots of a periodic task's turns kept (take_turn)
PURGE_CHUNK = 500  # call ids per DELETE (SQLite bounds the number of parameters)
PROBE_BYTES = 4096  # a page's worth: the probe needs free space as an event would (random: not compressible)


def check_fields(fields: Iterable[str], allowed: tuple[str, ...], what: str) -> None:
    """Refuse column names a caller may not write (they are interpolated into SQL)."""
    bad = set(fields) - set(allowed)
    if bad:
        raise ValueError(f"unknown {what} fields {bad}")


def _like(text: str) -> str:
    """``text`` as a literal inside a LIKE pattern (with ``ESCAPE '!'``)."""
    return text.replace("!", "!!").replace("%", "!%").replace("_", "!_")


def encode(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Values as stored: JSON fields as text, booleans as 0/1."""
    out: dict[str, Any] = {}
    for k, v in fields.items():
        if k in JSON_FIELDS and v is not None:
            v = json.dumps(v, ensure_ascii=False)
        elif isinstance(v, bool):
            v = int(v)
        out[k] = v
    return out


def decode(row: Mapping[str, Any]) -> dict:
    """A stored call or alert row as callers see it: JSON fields parsed, ``barge_in`` as bool."""
    d = dict(row)
    for k in JSON_FIELDS & d.keys():
        if d[k] is not None:
            d[k] = json.loads(d[k])
    if d.get("barge_in") is not None:
        d["barge_in"] = bool(d["barge_in"])
    return d


class SqlRepository(ABC):
    """The :class:`~calltone.server.store.Repository` methods, over a subclass's connection."""

    PARAM: ClassVar[str]  # a named parameter: ":{}" (sqlite3) or "%({})s" (psycopg)
    GREATEST: ClassVar[str]  # the two-argument maximum: MAX (SQLite) or GREATEST (PostgreSQL)
    FLOOR: ClassVar[str]  # a positive number rounded down to an integer: CAST(... AS INTEGER) or FLOOR(...)

    # -- the subclass's connection ------------------------------------------------------------
    @abstractmethod
    def _run(self, sql: str, params: Mapping[str, Any]) -> int:
        """Execute one statement; the number of rows it changed."""

    @abstractmethod
    def _rows(self, sql: str, params: Mapping[str, Any]) -> Sequence[Mapping[str, Any]]:
        """Execute one query; its rows as mappings of column name to value."""

    def _p(self, name: str) -> str:
        return self.PARAM.format(name)

    def _in(self, column: str, values: Sequence[Any], prefix: str) -> tuple[str, dict[str, Any]]:
        params = {f"{prefix}{i}": v for i, v in enumerate(values)}
        return f"{column} IN ({', '.join(self._p(k) for k in params)})", params

    def _equal(self, filters: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
        """column=value conditions for the filters given (an empty or None value filters nothing)."""
        params = {k: v for k, v in filters.items() if v}
        return [f"{k}={self._p(k)}" for k in params], params

    @staticmethod
    def _where(conditions: list[str]) -> str:
        return " WHERE " + " AND ".join(conditions) if conditions else ""

    # -- writes ---------------------------------------------------------------------------
    def upsert_call(self, call: dict) -> None:
        row = encode({k: call.get(k) for k in CALL_FIELDS if k in call})
        updates = ", ".join(f"{k}=excluded.{k}" for k in row if k != "call_id")
        self._run(f"INSERT INTO calls ({', '.join(row)}) VALUES ({', '.join(self._p(k) for k in row)}) "
                  f"ON CONFLICT (call_id) DO UPDATE SET {updates}", row)

    def update_call(self, call_id: str, **fields: Any) -> None:
        if not fields:
            return
        check_fields(fields, CALL_FIELDS, "call")
        row = encode(fields)
        sets = ", ".join(f"{k}={self._p(k)}" for k in row)
        self._run(f"UPDATE calls SET {sets} WHERE call_id={self._p('_id')}", {**row, "_id": call_id})

    def append_event(self, call_id: str, seq: int, type: str, t: float, server_time: float, body: str) -> None:
        p = self._p
        args = {"call_id": call_id, "seq": seq, "type": type, "t": t, "server_time": server_time, "body": body}
        self._run(f"INSERT INTO events (call_id, seq, type, t, server_time, body) "
                  f"VALUES ({p('call_id')}, {p('seq')}, {p('type')}, {p('t')}, {p('server_time')}, {p('body')})", args)
        self._run(f"UPDATE calls SET last_seq={self.GREATEST}(last_seq, {p('seq')}), updated_at={p('server_time')} "
                  f"WHERE call_id={p('call_id')}", args)

    def insert_alert(self, alert: dict) -> None:
        """Insert, or replace every column of, the alert."""
        row = encode({k: alert.get(k) for k in ALERT_FIELDS})
        updates = ", ".join(f"{k}=excluded.{k}" for k in row if k != "alert_id")
        self._run(f"INSERT INTO alerts ({', '.join(row)}) VALUES ({', '.join(self._p(k) for k in row)}) "
                  f"ON CONFLICT (alert_id) DO UPDATE SET {updates}", row)

    def update_alert(self, alert_id: str, **fields: Any) -> None:
        check_fields(fields, ALERT_FIELDS, "alert")
        row = encode(fields)
        sets = ", ".join(f"{k}={self._p(k)}" for k in row)
        self._run(f"UPDATE alerts SET {sets} WHERE alert_id={self._p('_id')}", {**row, "_id": alert_id})

    def log_delivery(self, alert_id: str, url: str, event_type: str, attempt: int, ok: bool,
                     status_code: int | None, error: str | None) -> None:
        row = encode({"alert_id": alert_id, "url": url, "event_type": event_type, "attempt": attempt, "ok": ok,
                      "status_code": status_code, "error": error, "at": time.time()})
        self._run(f"INSERT INTO deliveries ({', '.join(row)}) VALUES ({', '.join(self._p(k) for k in row)})", row)

    def interrupt_live(self) -> int:
        """After a crash: calls left 'live' become 'interrupted' (a producer may resume them)."""
        return self._run("UPDATE calls SET status='interrupted' WHERE status='live'", {})

    def hold_call(self, call_id: str, owner: str, **fields: Any) -> bool:
        """Update the call's row only while it is live and ``owner`` owns it (the fence of a node's writes to its
        call); False, changing nothing, once another node has taken the call over or it was marked interrupted."""
        check_fields(fields, CALL_FIELDS, "call")
        row = encode(fields)
        sets = ", ".join(f"{k}={self._p(k)}" for k in row) or "owner_node=owner_node"
        return self._run(f"UPDATE calls SET {sets} WHERE call_id={self._p('_id')} AND owner_node={self._p('_owner')} "
                         "AND status='live'", {**row, "_id": call_id, "_owner": owner}) > 0

    def live_owners(self) -> list[str | None]:
        """The nodes owning live calls (None: calls from before calls had owners)."""
        return [r["owner_node"] for r in self._rows("SELECT DISTINCT owner_node FROM calls WHERE status='live'", {})]

    def interrupt_owned(self, owners: Sequence[str | None]) -> int:
        """The live calls of these (dead) nodes become 'interrupted' (a producer may resume them on any node)."""
        nodes = [o for o in owners if o is not None]
        conditions = [self._in("owner_node", nodes, "o")[0]] if nodes else []
        if len(nodes) < len(owners):
            conditions.append("owner_node IS NULL")
        if not conditions:
            return 0
        params = self._in("owner_node", nodes, "o")[1]
        return self._run(f"UPDATE calls SET status='interrupted' WHERE status='live' AND ({' OR '.join(conditions)})",
                         params)

    def probe(self) -> None:
        """Rewrite one row with a page's worth of bytes, so the write needs free space as an event would."""
        self._run(f"INSERT INTO probes (id, at, pad) VALUES (1, {self._p('at')}, {self._p('pad')}) "
                  "ON CONFLICT (id) DO UPDATE SET at=excluded.at, pad=excluded.pad",
                  {"at": time.time(), "pad": os.urandom(PROBE_BYTES)})

    def purge(self, before: float) -> list[str]:
        """Delete the calls started before ``before`` that are not live, with their events, alerts and deliveries;
        and the audio access log's entries and the anomalies (with their deliveries) from before ``before``."""
        rows = self._rows(f"SELECT call_id FROM calls WHERE started_at < {self._p('before')} AND status != 'live'",
                          {"before": before})
        ids = [r["call_id"] for r in rows]
        for i in range(0, len(ids), PURGE_CHUNK):
            where, params = self._in("call_id", ids[i : i + PURGE_CHUNK], "c")
            self._run(f"DELETE FROM deliveries WHERE alert_id IN (SELECT alert_id FROM alerts WHERE {where})", params)
            for table in ("events", "alerts", "calls"):
                self._run(f"DELETE FROM {table} WHERE {where}", params)
        self._run(f"DELETE FROM audio_access WHERE at < {self._p('before')}", {"before": before})
        old_anomalies = f"SELECT anomaly_id FROM anomalies WHERE raised_at < {self._p('before')}"
        self._run(f"DELETE FROM deliveries WHERE alert_id IN ({old_anomalies})", {"before": before})
        self._run(f"DELETE FROM anomalies WHERE raised_at < {self._p('before')}", {"before": before})
        return ids

    # -- reads ----------------------------------------------------------------------------
    def get_call(self, call_id: str) -> dict | None:
        rows = self._rows(f"SELECT * FROM calls WHERE call_id={self._p('id')}", {"id": call_id})
        return decode(rows[0]) if rows else None

    def list_calls(self, status: str | None = None, agent_id: str | None = None, since: float | None = None,
                   escalated: bool | None = None, limit: int = 50) -> list[dict]:
        """Newest first."""
        conditions, params = self._equal({"status": status, "agent_id": agent_id})
        if since is not None:
            conditions.append(f"started_at>={self._p('since')}")
            params["since"] = since
        if escalated is not None:
            conditions.append("escalations>0" if escalated else "escalations=0")
        sql = f"SELECT * FROM calls{self._where(conditions)} ORDER BY started_at DESC LIMIT {self._p('limit')}"
        rows = self._rows(sql, {**params, "limit": limit})
        return [decode(r) for r in rows]

    def events(self, call_id: str, after: int = 0, types: list[str] | None = None,
               limit: int | None = None) -> list[tuple[int, str, str]]:
        """(seq, type, JSON body) in seq order."""
        sql = f"SELECT seq, type, body FROM events WHERE call_id={self._p('call_id')} AND seq>{self._p('after')}"
        params: dict[str, Any] = {"call_id": call_id, "after": after}
        if types:
            where, typed = self._in("type", types, "t")
            sql += f" AND {where}"
            params.update(typed)
        sql += " ORDER BY seq"
        if limit:
            sql += f" LIMIT {self._p('limit')}"
            params["limit"] = limit
        return [(r["seq"], r["type"], r["body"]) for r in self._rows(sql, params)]

    def last_seq(self, call_id: str) -> int:
        rows = self._rows(f"SELECT MAX(seq) AS seq FROM events WHERE call_id={self._p('id')}", {"id": call_id})
        return int(rows[0]["seq"] or 0)

    def get_alert(self, alert_id: str) -> dict | None:
        rows = self._rows(f"SELECT * FROM alerts WHERE alert_id={self._p('id')}", {"id": alert_id})
        return decode(rows[0]) if rows else None

    def list_alerts(self, call_id: str | None = None, status: str | None = None, limit: int = 100) -> list[dict]:
        """Oldest raised first (an alert without ``raised_at`` before all others)."""
        conditions, params = self._equal({"call_id": call_id, "status": status})
        sql = f"SELECT * FROM alerts{self._where(conditions)} ORDER BY raised_at NULLS FIRST LIMIT {self._p('limit')}"
        rows = self._rows(sql, {**params, "limit": limit})
        return [decode(r) for r in rows]

    def deliveries(self, alert_id: str) -> list[dict]:
        """Every attempt logged for the alert, in the order they were logged."""
        rows = self._rows(f"SELECT * FROM deliveries WHERE alert_id={self._p('id')} ORDER BY id", {"id": alert_id})
        return [dict(r) for r in rows]

    # -- the audio access log (server/playback.py) and where a scored call's recording is -----------
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

    # -- searching calls (server/search.py) ----------------------------------------------------------
    def search_calls(self, q: "CallSearch") -> tuple[list[dict], int]:
        """One page of the calls matching ``q``, newest first, and how many match in all.  Dialect-free SQL:
        a word is looked for in the stored (masked) text of the call's finals, which in the stored JSON lies
        between the keys ``"text":`` and ``"final":`` (calltone/events.py), whichever separators the writer used."""
        p = self._p
        conditions, params = self._equal({"status": q.status, "agent_id": q.agent_id})
        for i, word in enumerate(q.words):
            conditions.append(f"EXISTS (SELECT 1 FROM events e WHERE e.call_id = calls.call_id AND "
                              f"e.type = 'transcript.final' AND LOWER(e.body) LIKE {p(f'w{i}')} ESCAPE '!')")
            params[f"w{i}"] = f'%"text":%{_like(json.dumps(word.lower(), ensure_ascii=False)[1:-1])}%"final":%'
        if q.queue:
            conditions.append(f"(queue = {p('queue')} OR (queue IS NULL AND metadata LIKE {p('queue_json')} "
                              "ESCAPE '!'))")
            params.update(queue=q.queue, queue_json=f"%{_like(json.dumps({'queue': q.queue}, ensure_ascii=False)[1:-1])}%")
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

    # -- scoring jobs (server/jobs.py): a job row, one item row per recording --------------------
    def _insert(self, table: str, fields: tuple[str, ...], values: Mapping[str, Any]) -> None:
        row = encode({k: values[k] for k in fields if k in values})
        self._run(f"INSERT INTO {table} ({', '.join(row)}) VALUES ({', '.join(self._p(k) for k in row)})", row)

    def insert_job(self, job: dict, items: list[dict]) -> None:
        self._insert("jobs", JOB_FIELDS, job)
        for item in items:
            self._insert("job_items", JOB_ITEM_FIELDS, {**item, "job_id": job["job_id"]})

    def claimable_jobs(self, now: float, limit: int = 10) -> list[str]:
        """Unfinished jobs nobody holds (never claimed, or their claim ran out), oldest first."""
        rows = self._rows(f"SELECT job_id FROM jobs WHERE {JOB_OPEN} AND (lease_until IS NULL OR lease_until < "
                          f"{self._p('now')}) ORDER BY created_at LIMIT {self._p('limit')}", {"now": now, "limit": limit})
        return [r["job_id"] for r in rows]

    def claim_job(self, job_id: str, owner: str, now: float, lease_until: float) -> bool:
        """Take the job for ``owner`` until ``lease_until`` if it is unfinished and nobody else holds it."""
        p = self._p
        return self._run(f"UPDATE jobs SET owner={p('owner')}, lease_until={p('until')}, updated_at={p('now')} "
                         f"WHERE job_id={p('id')} AND {JOB_OPEN} AND (owner={p('owner')} OR lease_until IS NULL "
                         f"OR lease_until < {p('now')})",
                         {"owner": owner, "until": lease_until, "now": now, "id": job_id}) == 1

    def update_job(self, job_id: str, owner: str, **fields: Any) -> bool:
        """Change the job only while ``owner`` holds it (a node that lost its claim changes nothing)."""
        check_fields(fields, JOB_FIELDS, "job")
        row = encode(fields)
        sets = ", ".join(f"{k}={self._p(k)}" for k in row)
        return self._run(f"UPDATE jobs SET {sets} WHERE job_id={self._p('_id')} AND owner={self._p('_owner')}",
                         {**row, "_id": job_id, "_owner": owner}) == 1

    def update_job_item(self, job_id: str, seq: int, owner: str, **fields: Any) -> bool:
        """Change one item only while ``owner`` holds its job."""
        check_fields(fields, JOB_ITEM_FIELDS, "job item")
        row = encode(fields)
        p = self._p
        sets = ", ".join(f"{k}={p(k)}" for k in row)
        return self._run(f"UPDATE job_items SET {sets} WHERE job_id={p('_id')} AND seq={p('_seq')} AND EXISTS "
                         f"(SELECT 1 FROM jobs WHERE job_id={p('_id')} AND owner={p('_owner')})",
                         {**row, "_id": job_id, "_seq": seq, "_owner": owner}) == 1

    def get_job(self, job_id: str) -> dict | None:
        rows = self._rows(f"SELECT * FROM jobs WHERE job_id={self._p('id')}", {"id": job_id})
        return decode(rows[0]) if rows else None

    def list_jobs(self, limit: int = 100) -> list[dict]:
        """Newest first."""
        rows = self._rows(f"SELECT * FROM jobs ORDER BY created_at DESC LIMIT {self._p('limit')}", {"limit": limit})
        return [decode(r) for r in rows]

    def job_items(self, job_ids: Sequence[str]) -> list[dict]:
        """The items of these jobs, by job then in the job's order."""
        if not job_ids:
            return []
        where, params = self._in("job_id", list(job_ids), "j")
        return [dict(r) for r in self._rows(f"SELECT * FROM job_items WHERE {where} ORDER BY job_id, seq", params)]

    # -- KPIs over time (server/kpis.py) and the anomalies raised (server/anomaly.py) ----------------
    def kpi_sums(self, q: KpiSlotQuery) -> list[KpiSlot]:
        """Sums of the ended calls started in ``[q.start, q.end)`` and of their alerts, per slot and group."""
        columns = set(GROUP_COLUMNS.values())
        if (q.group is not None and q.group not in columns) or not set(q.filters) <= columns:
            raise ValueError(f"KPIs group and filter by {sorted(columns)} only")
        p = self._p
        length, shift = int(q.slot_s or 0), int(q.shift_s)
        keys = [f"{self.FLOOR.format(f'(c.started_at + {shift}) / {length}')} * {length} - {shift}" if length else "0",
                f"c.{q.group}" if q.group else "NULL"]
        conditions = ["c.status = 'ended'", f"c.started_at >= {p('start')}", f"c.started_at < {p('end')}"]
        conditions += [f"c.{k} = {p('f_' + k)}" for k in q.filters]
        params = {"start": q.start, "end": q.end, **{f"f_{k}": v for k, v in q.filters.items()}}
        head = f"SELECT {keys[0]} AS slot, {keys[1]} AS grp, "
        tail = self._where(conditions) + self._group_by(q)
        calls = self._rows(head + KPI_CALL_SUMS + " FROM calls c" + tail, params)
        # a call has alert rows only if it escalated (server/record.py stores both together)
        alerts = self._rows(head + KPI_ALERT_SUMS + " FROM calls c JOIN alerts a ON a.call_id = c.call_id" +
                            self._where([*conditions, "c.escalations > 0"]) + self._group_by(q), params)
        merged: dict[tuple[float, str | None], KpiSums] = {}
        for row in map(dict, [*calls, *alerts]):
            if row.get("calls") == 0 or row.get("alerts") == 0:  # the one row of an ungrouped sum over nothing
                continue
            key = (float(row["slot"]), row["grp"])
            sums = KpiSums.of(row)
            if key in merged:
                merged[key].add(sums)
            else:
                merged[key] = sums
        return [KpiSlot(slot, group, sums) for (slot, group), sums in sorted(merged.items(), key=_slot_order)]

    @staticmethod
    def _group_by(q: KpiSlotQuery) -> str:
        keys = [k for k, used in (("1", q.slot_s), ("2", q.group)) if used]
        return f" GROUP BY {', '.join(keys)}" if keys else ""

    def insert_anomaly(self, anomaly: dict) -> bool:
        """Store an anomaly unless one with its id is stored already (raised by this node or another): True if new."""
        check_fields(anomaly, ANOMALY_FIELDS, "anomaly")
        row = encode(anomaly)
        return self._run(f"INSERT INTO anomalies ({', '.join(row)}) VALUES ({', '.join(self._p(k) for k in row)}) "
                         "ON CONFLICT (anomaly_id) DO NOTHING", row) == 1

    def take_turn(self, name: str, slot: int, node: str, now: float) -> bool:
        """Take interval ``slot`` of the periodic task ``name`` for ``node``: True for the first node to ask (the
        others get False).  Turns older than :data:`TURNS_KEPT` slots are dropped."""
        p = self._p
        args = {"name": name, "slot": slot, "node": node, "at": now, "old": slot - TURNS_KEPT}
        self._run(f"DELETE FROM turns WHERE name={p('name')} AND slot<{p('old')}", args)
        return self._run(f"INSERT INTO turns (name, slot, node, taken_at) VALUES ({p('name')}, {p('slot')}, {p('node')}, "
                         f"{p('at')}) ON CONFLICT (name, slot) DO NOTHING", args) == 1

    def list_anomalies(self, since: float, limit: int = 100) -> list[dict]:
        """Raised at or after ``since``, newest first."""
        rows = self._rows(f"SELECT * FROM anomalies WHERE raised_at >= {self._p('since')} ORDER BY raised_at DESC "
                          f"LIMIT {self._p('limit')}", {"since": since, "limit": limit})
        return [decode(r) for r in rows]


# What kpi_sums adds up (aliases: the fields of KpiSums).  "Summarised" calls have the KPI columns of
# migration 0004 (silence_s is always set with them); older rows count only in calls, handle time and escalations.
KPI_CALL_SUMS = ("COUNT(*) AS calls, SUM(c.duration_s) AS duration_s, "
                 "SUM(CASE WHEN c.escalations > 0 THEN 1 ELSE 0 END) AS escalated, "
                 "COUNT(c.silence_s) AS summarised, SUM(CASE WHEN c.silence_s IS NOT NULL THEN c.duration_s END) "
                 "AS summarised_s, SUM(c.reached_angry) AS reached_angry, SUM(c.angry_s) AS angry_s, "
                 "COUNT(c.peak_index) AS peaks, SUM(c.peak_index) AS peak_index, SUM(c.talk_s) AS talk_s, "
                 "SUM(c.customer_talk_s) AS customer_talk_s, SUM(c.silence_s) AS silence_s, "
                 "SUM(c.overtalk_s) AS overtalk_s, SUM(c.interruptions) AS interruptions, "
                 "COUNT(c.agent_speech_rate) AS rated, SUM(c.agent_speech_rate) AS agent_speech_rate")
KPI_ALERT_SUMS = ("COUNT(*) AS alerts, SUM(CASE WHEN a.barge_in = 1 THEN 1 ELSE 0 END) AS barged, "
                  "COUNT(a.acked_at) AS acked, SUM(a.acked_at - a.raised_at) AS ack_s")


def _slot_order(item: tuple[tuple[float, str | None], KpiSums]) -> tuple[float, bool, str]:
    (slot, group), _ = item
    return slot, group is None, group or ""
