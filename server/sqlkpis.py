"""The SQL of the operations view: KPI sums per slot and group (``server/kpis.py``), the anomalies raised on
them (``server/anomaly.py``) and the turns that let one node of many run a periodic task's interval."""

from __future__ import annotations

from calltone.server.kpis import GROUP_COLUMNS, KpiSlot, KpiSlotQuery, KpiSums
from calltone.server.sqlstatements import SqlStatements, check_fields, decode, encode

ANOMALY_FIELDS = ("anomaly_id", "kpi", "scope", "scope_value", "bucket_start", "figures", "raised_at")
TURNS_KEPT = 100  # slots of a periodic task's turns kept (take_turn)

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


class KpiQueries(SqlStatements):
    """KPI sums, anomalies and turns: the :class:`~calltone.server.store.Repository` methods of the ops view."""

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


def _slot_order(item: tuple[tuple[float, str | None], KpiSums]) -> tuple[float, bool, str]:
    (slot, group), _ = item
    return slot, group is None, group or ""
