"""What the SQL repositories share: the columns callers may write and every statement that SQLite and
PostgreSQL run alike (one definition, so both stores answer the same).

:class:`SqlRepository` is the one SQL implementation of :class:`~calltone.server.store.Repository`.  It keeps
the statements on calls, events, alerts, deliveries, retention and scoring jobs, and composes the query classes
of the other nouns: ``server/sqlkpis.py`` (KPI sums, anomalies, turns) and ``server/sqlreview.py`` (search,
recordings, the audio access log).  How values are stored (JSON as text, booleans as 0/1, times as floats) and
what a subclass supplies (its connection, ``transaction()``, ``is_storage_failure``, ``close()`` and its
dialect) are in ``server/sqlstatements.py``.
"""

from __future__ import annotations

import os
import time
from typing import Any, Sequence

from calltone.server.sqlkpis import KpiQueries
from calltone.server.sqlreview import ReviewQueries
from calltone.server.sqlstatements import check_fields, decode, encode

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
JOB_OPEN = "status IN ('queued', 'running')"  # a job someone may (still) score
PURGE_CHUNK = 500  # call ids per DELETE (SQLite bounds the number of parameters)
PROBE_BYTES = 4096  # a page's worth: the probe needs free space as an event would (random: not compressible)


class SqlRepository(KpiQueries, ReviewQueries):
    """The :class:`~calltone.server.store.Repository` methods, over a subclass's connection: calls, events,
    alerts, deliveries, retention and scoring jobs here; KPIs, anomalies and turns from :class:`KpiQueries`;
    search, recordings and the audio access log from :class:`ReviewQueries`."""

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

    # -- scoring jobs (server/jobs.py): a job row, one item row per recording --------------------
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
