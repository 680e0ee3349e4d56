"""CallRecord: how one call's events are stored, whether the call is live or scored from a recording.

The live call (``server/calls.py``) and scoring jobs (``server/jobs.py``) store a call's events through the same
:class:`CallRecord`, so a scored call has what a live one has: seq numbers assigned one by one as the events are
stored, an alert row per ``escalation.raised`` (cleared with its ``escalation.cleared``), the call row's
escalation count, and at ``call.ended`` the summary with the KPI columns (``server/kpis.py``).
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping

from calltone.server.kpis import call_columns
from calltone.server.protocol import AlertMessage
from calltone.summary import CallSummary

if TYPE_CHECKING:
    from calltone.server.store import Repository

SUMMARY_TYPES = ("transcript.final", "emotion.update", "escalation.raised", "escalation.cleared")
EXCERPT_LINES = 6  # recent final transcript lines an alert carries
Op = Callable[["Repository"], Any]


@dataclass
class Recorded:
    """One event ready to store: its JSON, the store operations that write it, and the alert it raised or cleared."""

    body: str
    ops: list[Op]
    alert: AlertMessage | None


class CallRecord:
    """One call's stored state: the last seq, the events its summary needs, its open alerts."""

    def __init__(self, call_id: str, agent_id: str | None, metadata: Mapping[str, Any] | None, *, seq: int = 0,
                 history: list[dict] | None = None) -> None:
        self.call_id, self.agent_id, self.metadata = call_id, agent_id, dict(metadata or {})
        self.seq = seq
        self.history: list[dict] = list(history or [])  # the stored events of SUMMARY_TYPES
        self.recent_finals: deque[dict] = deque((e for e in self.history if e.get("type") == "transcript.final"),
                                                maxlen=EXCERPT_LINES)
        self.open_alerts: dict[str, dict] = {}

    def stamp(self, ev: Any, now: float) -> None:
        """The event's ``seq`` (the next one) and ``server_time``."""
        self.seq += 1
        ev.seq, ev.server_time = self.seq, round(now, 3)

    def record(self, ev: Any, now: float) -> Recorded:
        """A stamped event as JSON plus the writes that store it (event row, alert row, call row)."""
        body = ev.model_dump_json()
        if ev.type in SUMMARY_TYPES:
            d = json.loads(body)
            self.history.append(d)
            if ev.type == "transcript.final":
                self.recent_finals.append(d)
        call_id = self.call_id
        ops: list[Op] = [lambda r: r.append_event(call_id, ev.seq, ev.type, ev.t, now, body)]
        alert = None
        if ev.type == "escalation.raised":
            alert = self._raised(ev, now, ops)
        elif ev.type == "escalation.cleared":
            alert = self._cleared(ev, now, ops)
        elif ev.type == "call.ended":
            summary = ev.summary
            fields = call_columns(CallSummary.model_validate(summary), self.metadata)  # what GET /v1/kpis sums
            if summary.get("language"):
                fields["language"] = summary["language"]  # the language heard (call.started may say "auto")
            ops.append(lambda r: r.update_call(call_id, status="ended", ended_at=now, duration_s=summary["duration_s"],
                                               summary=summary, updated_at=now, **fields))
        elif ev.type == "call.started" and getattr(ev, "language", None):
            lang = ev.language
            ops.append(lambda r: r.update_call(call_id, language=lang))
        return Recorded(body, ops, alert)

    def _raised(self, ev: Any, now: float, ops: list[Op]) -> AlertMessage:
        call_id = self.call_id
        excerpt = [{"channel": e["channel"], "t": e["end"], "text": e["text"]} for e in self.recent_finals]
        alert = AlertMessage(type="escalation.raised", alert_id=ev.alert_id, call_id=call_id, agent_id=self.agent_id,
                             channel=ev.channel, reason=ev.reason, evidence=ev.evidence, excerpt=excerpt, status="open",
                             t=ev.t, seq=ev.seq, raised_at=now)
        self.open_alerts[ev.alert_id] = alert.model_dump()
        row = alert.model_dump(exclude={"type", "replay"})
        n_esc = sum(1 for e in self.history if e.get("type") == "escalation.raised")
        ops.append(lambda r: r.insert_alert(row))
        ops.append(lambda r: r.update_call(call_id, escalations=n_esc))
        return alert

    def _cleared(self, ev: Any, now: float, ops: list[Op]) -> AlertMessage:
        """The alert as it was raised (its reason and evidence kept), now cleared."""
        prev = self.open_alerts.pop(ev.alert_id, None)
        if prev is None:  # raised before a resume: its event is in the history the call resumed with
            raised = next((e for e in self.history if e.get("type") == "escalation.raised"
                           and e.get("alert_id") == ev.alert_id), {})
            prev = {"alert_id": ev.alert_id, "call_id": self.call_id, "agent_id": self.agent_id, "channel": ev.channel,
                    "reason": raised.get("reason", ev.reason), "evidence": raised.get("evidence", {}),
                    "t": raised.get("t", ev.t), "seq": raised.get("seq")}
        prev = {**prev, "type": "escalation.cleared", "status": "cleared", "cleared_at": now}
        ops.append(lambda r: r.update_alert(ev.alert_id, status="cleared", cleared_at=now))
        return AlertMessage(**{k: v for k, v in prev.items() if k in AlertMessage.model_fields})
