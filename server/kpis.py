"""KPIs over time: what ``GET /v1/kpis`` answers and how the store's sums become it.

A call's figures are columns of its row, written once at call end (:func:`call_columns`, migration
``0004_kpis``).  The store sums them per :data:`SLOT_S` slot of Unix time and per group in SQL
(``Repository.kpi_sums``, one statement for SQLite and PostgreSQL in ``server/sqlbase.py``); here the slots
are merged into the viewer's hours, days or weeks (an IANA time zone: a 15-minute slot lies wholly inside one
local hour in every zone, DST or not) and the sums become the figures (:class:`KpiFigures`).  Only ended
calls count, each in the bucket where it started.  Definitions and units: ``docs/ops.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import datetime, time, timedelta
from typing import TYPE_CHECKING, Any, Literal, Mapping
from zoneinfo import ZoneInfo

from pydantic import BaseModel, Field

if TYPE_CHECKING:
    from calltone.summary import CallSummary

MIDNIGHT = time(0)
SLOT_S = 900  # the store's time slots; every zone's offset from UTC is a multiple of 15 minutes
MAX_BUCKETS = 2000  # buckets in one answer (a year of days; 83 days of hours)
Bucket = Literal["hour", "day", "week"]
GroupBy = Literal["queue", "agent", "language", "direction"]
GROUP_COLUMNS: dict[str, str] = {"queue": "queue", "agent": "agent_id", "language": "language", "direction": "direction"}
CUSTOMER = "customer"
AGENT = "agent"
UNITS: dict[str, str] = {
    "calls": "calls", "handle_time_s": "s (mean per call)", "escalation_rate": "share of calls (0-1)",
    "alerts": "alerts", "barge_in_rate": "share of alerts (0-1)", "ack_time_s": "s (mean per acknowledged alert)",
    "angry_call_share": "share of calls (0-1)", "angry_min_per_100_min": "angry minutes per 100 call minutes",
    "peak_index": "emotion index 0-100 (mean per call)", "customer_talk_share": "share of talk time (0-1)",
    "silence_share": "share of call time (0-1)", "overtalk_s_per_call": "s per call",
    "interruptions_per_call": "interruptions per call", "agent_speech_rate": "words/min (en) or characters/min (zh) of agent speech, mean per call",
}


@dataclass(frozen=True)
class KpiSlotQuery:
    """What the store sums: ended calls started in ``[start, end)`` matching ``filters`` (column -> value), per
    ``slot_s`` slot (None: the whole range is one slot, 0) and per value of ``group`` (a column, or None)."""

    start: float
    end: float
    slot_s: int | None = SLOT_S
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
        return cls(**{f.name: row.get(f.name) or 0 for f in fields(cls)})

    def add(self, other: "KpiSums") -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def figures(self) -> "KpiFigures":
        return KpiFigures(
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


@dataclass(frozen=True)
class KpiSlot:
    """One row of the store's answer: the sums of one slot (its start, Unix s) and group value."""

    slot: float
    group: str | None
    sums: KpiSums


def _ratio(num: float, den: float) -> float | None:
    return round(num / den, 4) if den else None


class KpiFigures(BaseModel):
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


class KpiBucket(KpiFigures):
    start: float = Field(description="Unix seconds: the bucket's first instant")
    label: str = Field(description="the bucket's start in the viewer's time zone, ISO 8601 with its UTC offset")


class KpiSeries(BaseModel):
    group: str | None = Field(description="the group's value (None: calls without one, or no grouping)")
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


def report(slots: list[KpiSlot], q: KpiSlotQuery, bucket: Bucket, tz: ZoneInfo, group_by: GroupBy | None) -> KpiReport:
    """Merge the store's slots into the viewer's buckets, one series per group (every bucket, empty ones too)."""
    starts = bucket_starts(q.start, q.end, bucket, tz)
    index = {b.timestamp(): i for i, b in enumerate(starts)}
    per_group: dict[str | None, list[KpiSums]] = {}
    total = KpiSums()
    for s in slots:
        sums = per_group.setdefault(s.group, [KpiSums() for _ in starts])
        sums[index[bucket_start(s.slot, bucket, tz).timestamp()]].add(s.sums)
        total.add(s.sums)
    if group_by is None and not per_group:
        per_group[None] = [KpiSums() for _ in starts]
    series = []
    for group in sorted(per_group, key=lambda g: (g is None, g or "")):
        group_total = KpiSums()
        buckets = []
        for b, sums in zip(starts, per_group[group]):
            group_total.add(sums)
            buckets.append(KpiBucket(**sums.figures().model_dump(), start=b.timestamp(), label=b.isoformat()))
        series.append(KpiSeries(group=group, total=group_total.figures(), buckets=buckets))
    return KpiReport(tz=tz.key, bucket=bucket, start=q.start, end=q.end, group_by=group_by, filters=dict(q.filters),
                     total=total.figures(), series=series)


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
