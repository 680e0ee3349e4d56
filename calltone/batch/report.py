"""The per-call QA report: a digest of the call's events (``calltone.events``).

``build_report`` turns the events a :class:`calltone.pipeline.CallPipeline` emitted
for a recording (and the speech intervals its VAD heard) into a :class:`CallReport`:
transcript segments with the speaker's grade at the end of each, the emotion
timeline, alerts and the call summary (:func:`calltone.summary.summarize`, the same figures as
a live call's ``call.ended``).  The report keeps the events themselves,
so anything on the agent desktop or the QA page can be rebuilt from it.
"""

from __future__ import annotations

from bisect import bisect_right
from typing import Literal

from pydantic import BaseModel, Field

from calltone.events import Event, Grade, Probs
from calltone.summary import CallSummary, summarize

REPORT_VERSION = 2  # 2: the call summary (summary) replaces metrics


class ReportSegment(BaseModel):
    channel: str
    start: float = Field(description="seconds")
    end: float = Field(description="seconds")
    text: str = Field(description="empty with --no-transcript")
    grade: Grade | None = Field(None, description="the speaker's grade when the segment ended (None: speaker not scored)")
    probs: Probs | None = None
    index: float | None = Field(None, description="emotion index 0-100 when the segment ended")


class TimelinePoint(BaseModel):
    t: float = Field(description="seconds")
    channel: str
    grade: Grade
    index: float


class ReportAlert(BaseModel):
    t: float = Field(description="seconds")
    kind: Literal["escalation"] = "escalation"
    channel: str
    alert_id: str
    reason: str
    evidence: dict = Field(default_factory=dict)
    cleared_t: float | None = Field(None, description="seconds; when the escalation cleared")


class CallReport(BaseModel):
    version: int = REPORT_VERSION
    call_id: str
    source: str = Field(description="the recording as the user named it (relative to the folder or upload given)")
    source_sha256: str = ""
    duration_s: float
    language: str | None
    channels: dict[str, int] = Field(description="role -> channel index in the recording")
    mono: bool = Field(False, description="a mono recording: both parties mixed, graded as one speaker")
    notes: list[str] = Field(default_factory=list)
    segments: list[ReportSegment]
    timeline: list[TimelinePoint]
    alerts: list[ReportAlert]
    summary: CallSummary = Field(description="the call summary (docs/events.md, 'The call summary'), as in call.ended")
    scored_at: float = Field(description="Unix seconds")
    scoring_s: float = Field(0.0, description="wall seconds spent scoring")
    options: dict = Field(default_factory=dict)
    events: list[Event] = Field(default_factory=list, description="the pipeline's events (docs/events.md)")

    def named(self, source: str) -> "CallReport":
        """This report with the recording named ``source`` (as the user gave it), in ``call.started`` too."""
        events = [e.model_copy(update={"metadata": {**e.metadata, "source": source}}) if e.type == "call.started" else e
                  for e in self.events]
        return self.model_copy(update={"source": source, "events": events})


def build_report(call_id: str, source: str, events: list[Event], speech: dict[str, list[tuple[float, float]]],
                 duration_s: float, channels: dict[str, int], *, mono: bool = False, scored_at: float = 0.0,
                 source_sha256: str = "", options: dict | None = None) -> CallReport:
    updates: dict[str, list] = {}
    for e in events:
        if e.type == "emotion.update":
            updates.setdefault(e.channel, []).append(e)
    times = {ch: [u.t for u in ups] for ch, ups in updates.items()}

    def state_at(channel: str, t: float):
        i = bisect_right(times.get(channel, []), t + 1e-6)
        return updates[channel][i - 1] if i else None

    finals = sorted((e for e in events if e.type == "transcript.final"), key=lambda e: (e.start, e.channel))
    segs = []
    if finals:
        spans = [(f.channel, f.start, f.end, f.text) for f in finals]
    else:  # no transcript: the speech the VAD heard
        spans = sorted(((ch, s, e, "") for ch, iv in speech.items() for s, e in iv), key=lambda x: (x[1], x[0]))
    for ch, start, end, text in spans:
        u = state_at(ch, end)
        segs.append(ReportSegment(channel=ch, start=round(start, 3), end=round(end, 3), text=text,
                                  grade=u.grade if u else None, probs=u.probs if u else None,
                                  index=round(u.index, 1) if u else None))
    timeline = [TimelinePoint(t=u.t, channel=ch, grade=u.grade, index=round(u.index, 1))
                for ch, ups in updates.items() for u in ups]
    timeline.sort(key=lambda p: (p.t, p.channel))
    alerts: dict[str, ReportAlert] = {}
    for e in events:
        if e.type == "escalation.raised":
            alerts[e.alert_id] = ReportAlert(t=e.t, channel=e.channel, alert_id=e.alert_id, reason=e.reason, evidence=e.evidence)
        elif e.type == "escalation.cleared" and e.alert_id in alerts:
            alerts[e.alert_id].cleared_t = e.t
    language = next((e.summary.get("language") for e in events if e.type == "call.ended"), None)
    summary = summarize(events, duration_s, speech, roles=channels, language=language)
    events = [e.model_copy(update={"summary": summary.model_dump()}) if e.type == "call.ended" else e for e in events]
    notes = ["mono recording: both parties are mixed and graded as one speaker ('customer')"] if mono else []
    return CallReport(call_id=call_id, source=source, source_sha256=source_sha256, duration_s=round(duration_s, 3),
                      language=summary.language, channels=channels, mono=mono, notes=notes, segments=segs, timeline=timeline,
                      alerts=list(alerts.values()), summary=summary, scored_at=scored_at, options=options or {},
                      events=[e for e in events if e.type != "transcript.partial"])


def report_json_schema() -> dict:
    return CallReport.model_json_schema()
