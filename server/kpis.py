"""KPIs over time: what ``GET /v1/kpis`` answers and how the store's sums become it.

A call's figures are columns of its row, written once at call end (:func:`call_columns`, migration
``0004_kpis``).  The store sums them in SQL per bucket and group (``Repository.kpi_sums``, one statement for
SQLite and PostgreSQL in ``server/sqlkpis.py``).  The viewer's hours, days and weeks (an IANA time zone) are
computed there as ``FLOOR((started_at + shift) / length) * length - shift`` with the zone's UTC offset in the
shift; so a range is cut where the offset changes (daylight saving time: :func:`plan`, one query per piece),
and a bucket that spans a change (the 23- or 25-hour day) adds up the pieces' sums.  The sums become the
figures here (:class:`KpiFigures`).  Only ended calls count, each in the bucket where it started.
Definitions and units: ``docs/ops.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import datetime, time, timedelta
from typing import TYPE_CHECKING, Any, Literal, Mapping
from zoneinfo import ZoneInfo

from pydantic import BaseModel, Field

if TYPE_CHECKING:
    from calltone.server.store import Repository
    from calltone.summary import CallSummary

MIDNIGHT = time(0)
MAX_BUCKETS = 2000  # buckets in one answer (five years of days; 83 days of hours)
Bucket = Literal["hour", "day", "week"]
BUCKET_S: dict[str, int] = {"hour": 3600, "day": 86400, "week": 7 * 86400}
MONDAY_S = 4 * 86400  # Unix time 0 was a Thursday: weeks start 4 days later
GroupBy = Literal["queue", "agent", "language", "direction"]
GROUP_COLUMNS: dict[str, str] = {"queue": "queue", "agent": "agent_id", "language": "language", "direction": "direction"}
CUSTOMER = "customer"
UNITS: dict[str, str] = {
    "calls": "calls", "handle_time_s": "s (mean per call)", "escalation_rate": "share of calls (0-1)",
    "alerts": "alerts", "barge_in_rate": "share of alerts (0-1)", "ack_time_s": "s (mean per acknowledged alert)",
    "angry_call_share": "share of calls (0-1)", "angry_min_per_100_min": "angry minutes per 100 call minutes",
    "peak_index": "emotion index 0-100 (mean per call)", "customer_talk_share": "share of talk time (0-1)",
    "silence_share": "share of call time (0-1)", "overtalk_s_per_call": "s per call",
    "interruptions_per_call": "interruptions per call",
    "agent_speech_rate": "words/min (en) or characters/min (zh) of agent speech, mean per call",
}


@dataclass(frozen=True)
class KpiRequest:
    """What ``GET /v1/kpis`` was asked: ended calls started in ``[start, end)`` (Unix s) matching ``filters``
    (group name -> value), per ``bucket`` of ``tz``, one series per value of ``group_by``."""

    start: float
    end: float
    bucket: Bucket
    tz: ZoneInfo
    group_by: GroupBy | None = None
    filters: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class KpiSlotQuery:
    """What the store sums: ended calls started in ``[start, end)`` matching ``filters`` (column -> value), per
    slot ``FLOOR((started_at + shift_s) / slot_s) * slot_s - shift_s`` (``slot_s`` None: one slot, 0) and per
    value of ``group`` (a column, or None)."""

    start: float
    end: float
    slot_s: int | None = None
    shift_s: int = 0
    group: str | None = None
    filters: Mapping[str, str] = field(default_factory=dict)


@dataclass
class KpiSums:
    """Sums over a set of calls (and their alerts); sums of sets add up (:meth:`add`)."""

    calls: int = 0
    duration_s: float = 0.0
    escalated: int = 0
    summarised: int = 0  # calls with the KPI columns (rows from before migration 0004 have none)
    summarised_s: float = 0.0  # their duration
    reached_angry: int = 0
    angry_s: float = 0.0
    peaks: int = 0
    peak_index: float = 0.0
    talk_s: float = 0.0
    customer_talk_s: float = 0.0
    silence_s: float = 0.0
    overtalk_s: float = 0.0
    interruptions: int = 0
    rated: int = 0  # calls with an agent speech rate
    agent_speech_rate: float = 0.0
    alerts: int = 0
    barged: int = 0
    acked: int = 0
    ack_s: float = 0.0

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> "KpiSums":
        """From a row of the store's sums (a NULL sum is 0)."""
        return cls(**{name: row.get(name) or 0 for name in SUM_FIELDS})

    def add(self, other: "KpiSums") -> None:
        mine, theirs = self.__dict__, other.__dict__
        for name in SUM_FIELDS:
            mine[name] += theirs[name]

    def figures(self) -> dict[str, Any]:
        """The :class:`KpiFigures` fields of these sums."""
        return dict(
            calls=self.calls, handle_time_s=_ratio(self.duration_s, self.calls),
            escalation_rate=_ratio(self.escalated, self.calls), alerts=self.alerts,
            barge_in_rate=_ratio(self.barged, self.alerts), ack_time_s=_ratio(self.ack_s, self.acked),
            angry_call_share=_ratio(self.reached_angry, self.summarised),
            angry_min_per_100_min=_ratio(100 * self.angry_s, self.summarised_s),
            peak_index=_ratio(self.peak_index, self.peaks), customer_talk_share=_ratio(self.customer_talk_s, self.talk_s),
            silence_share=_ratio(self.silence_s, self.summarised_s),
            overtalk_s_per_call=_ratio(self.overtalk_s, self.summarised),
            interruptions_per_call=_ratio(self.interruptions, self.summarised),
            agent_speech_rate=_ratio(self.agent_speech_rate, self.rated))


SUM_FIELDS = tuple(f.name for f in fields(KpiSums))


@dataclass(frozen=True)
class KpiSlot:
    """One row of the store's answer: the sums of one slot (its start, Unix s) and group value."""

    slot: float
    group: str | None
    sums: KpiSums


def _ratio(num: float, den: float) -> float | None:
    return round(num / den, 4) if den else None


@dataclass
class KpiFigures:
    """The KPIs of a set of calls; None where nothing was there to measure.  Units: ``units`` of the answer."""

    calls: int
    handle_time_s: float | None
    escalation_rate: float | None
    alerts: int
    barge_in_rate: float | None
    ack_time_s: float | None
    angry_call_share: float | None
    angry_min_per_100_min: float | None
    peak_index: float | None
    customer_talk_share: float | None
    silence_share: float | None
    overtalk_s_per_call: float | None
    interruptions_per_call: float | None
    agent_speech_rate: float | None


@dataclass
class KpiBucket(KpiFigures):
    start: float  # Unix seconds: the bucket's first instant
    label: str  # the bucket's start in the viewer's time zone, ISO 8601 with its UTC offset


@dataclass
class KpiSeries:
    group: str | None  # the group's value (None: calls without one, or no grouping)
    total: KpiFigures
    buckets: list[KpiBucket]


class KpiReport(BaseModel):
    tz: str
    bucket: Bucket
    start: float = Field(description="Unix seconds, inclusive")
    end: float = Field(description="Unix seconds, exclusive")
    group_by: GroupBy | None
    filters: dict[str, str]
    units: dict[str, str] = Field(default_factory=lambda: dict(UNITS))
    total: KpiFigures
    series: list[KpiSeries]


def bucket_start(t: float, bucket: Bucket, tz: ZoneInfo) -> datetime:
    """The local hour, day or week (from Monday) that Unix time ``t`` falls in, as an aware datetime."""
    local = datetime.fromtimestamp(t, tz)
    if bucket == "hour":
        return local.replace(minute=0, second=0, microsecond=0)
    day = local.date()
    if bucket == "week":
        day -= timedelta(days=day.weekday())
    return datetime.combine(day, MIDNIGHT, tz)


def next_bucket(start: datetime, bucket: Bucket, tz: ZoneInfo) -> datetime:
    """The start of the bucket after the one starting at ``start`` (local wall-clock arithmetic, DST-aware)."""
    if bucket == "hour":
        return datetime.fromtimestamp(start.timestamp() + 3600, tz).replace(minute=0, second=0, microsecond=0)
    days = 7 if bucket == "week" else 1
    return datetime.combine(start.date() + timedelta(days=days), MIDNIGHT, tz)


def bucket_starts(start: float, end: float, bucket: Bucket, tz: ZoneInfo) -> list[datetime]:
    """Every bucket meeting ``[start, end)``; ValueError past :data:`MAX_BUCKETS`."""
    out: list[datetime] = []
    b = bucket_start(start, bucket, tz)
    while b.timestamp() < end:
        out.append(b)
        if len(out) > MAX_BUCKETS:
            raise ValueError(f"more than {MAX_BUCKETS} {bucket} buckets: choose a shorter range or a longer bucket")
        b = next_bucket(b, bucket, tz)
    return out


def _offset(t: float, tz: ZoneInfo) -> int:
    return int(datetime.fromtimestamp(t, tz).utcoffset().total_seconds())  # type: ignore[union-attr]


def offset_pieces(start: float, end: float, tz: ZoneInfo) -> list[tuple[float, float, int]]:
    """``[start, end)`` cut where ``tz``'s UTC offset changes: (from, to, offset s); looked for day by day, found
    to the second."""
    pieces, a, off, t = [], start, _offset(start, tz), start
    while t < end:
        nxt = min(t + 86400, end)
        if nxt < end and _offset(nxt, tz) != off:
            lo, hi = int(t), int(nxt)  # the offset at lo is off, at hi it is not
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (mid, hi) if _offset(mid, tz) == off else (lo, mid)
            pieces.append((a, float(hi), off))
            a, off = float(hi), _offset(hi, tz)
        t = nxt
    pieces.append((a, end, off))
    return pieces


def plan(req: KpiRequest) -> list[KpiSlotQuery]:
    """The store queries of a request: one per piece of the range with one UTC offset."""
    length = BUCKET_S[req.bucket]
    filters = {GROUP_COLUMNS[k]: v for k, v in req.filters.items()}
    group = GROUP_COLUMNS[req.group_by] if req.group_by else None
    return [KpiSlotQuery(a, b, length, off - (MONDAY_S if req.bucket == "week" else 0), group, filters)
            for a, b, off in offset_pieces(req.start, req.end, req.tz)]


def read_slots(repo: "Repository", queries: list[KpiSlotQuery]) -> list[KpiSlot]:
    """Run the queries (in the store's reader thread).  A slot before its piece's start (the local day a change of
    offset falls in, seen with the later offset) is moved to the piece's start, which lies in the same bucket."""
    return [KpiSlot(max(s.slot, q.start), s.group, s.sums) for q in queries for s in repo.kpi_sums(q)]


def report(req: KpiRequest, slots: list[KpiSlot]) -> KpiReport:
    """The store's slots in the viewer's buckets, one series per group (every bucket, empty ones too)."""
    starts = bucket_starts(req.start, req.end, req.bucket, req.tz)
    index = {b.timestamp(): i for i, b in enumerate(starts)}
    per_group: dict[str | None, list[KpiSums]] = {}
    total = KpiSums()
    for s in slots:
        if s.group not in per_group:
            per_group[s.group] = [KpiSums() for _ in starts]
        sums = per_group[s.group]
        i = index.get(s.slot)
        sums[i if i is not None else index[bucket_start(s.slot, req.bucket, req.tz).timestamp()]].add(s.sums)
        total.add(s.sums)
    if req.group_by is None and not per_group:
        per_group[None] = [KpiSums() for _ in starts]
    labels = [(b.timestamp(), b.isoformat()) for b in starts]
    series = []  # thousands of buckets: dataclasses, and the report built without validation (model_construct)
    for group in sorted(per_group, key=lambda g: (g is None, g or "")):
        group_total = KpiSums()
        buckets = []
        for (start, label), sums in zip(labels, per_group[group]):
            group_total.add(sums)
            buckets.append(KpiBucket(**sums.figures(), start=start, label=label))
        series.append(KpiSeries(group=group, total=KpiFigures(**group_total.figures()), buckets=buckets))
    return KpiReport.model_construct(tz=req.tz.key, bucket=req.bucket, start=req.start, end=req.end,
                                     group_by=req.group_by, filters=dict(req.filters), units=dict(UNITS),
                                     total=KpiFigures(**total.figures()), series=series)


def call_columns(summary: "CallSummary", metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """The KPI columns of a call's row, from its summary and metadata (``queue``, ``direction``); written with the
    summary at call end.  Emotion figures are the customer's (None when the customer was not graded)."""
    meta = metadata or {}
    customer = summary.grades.get(CUSTOMER)
    return {
        "queue": _text(meta.get("queue")), "direction": _text(meta.get("direction")),
        "angry_s": customer.angry_s if customer else None,
        "reached_angry": int(customer.reached_angry) if customer else None,
        "peak_index": customer.peak_index if customer else None,
        "talk_s": sum(summary.talk_s.values()), "customer_talk_s": summary.talk_s.get(CUSTOMER, 0.0),
        "silence_s": summary.silence_s, "overtalk_s": summary.overtalk_s,
        "interruptions": sum(summary.interruptions.values()), "agent_speech_rate": summary.agent_speech_rate,
    }


def _text(value: Any) -> str | None:
    return str(value) if value not in (None, "") else None
