"""The per-call QA report: a digest of the call's events (``calltone.events``).

``build_report`` turns the events a :class:`calltone.pipeline.CallPipeline` emitted
for a recording (and the speech intervals its VAD heard) into a :class:`CallReport`:
transcript segments with the speaker's grade at the end of each, the emotion
timeline, alerts and conversation metrics.  The report keeps the events themselves,
so anything on the agent desktop or the QA page can be rebuilt from it.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from typing import Literal

from pydantic import BaseModel, Field

from calltone.events import Event, Grade, Probs
from calltone.summary import GRADE_ORDER, CallSummary, _conversation as conversation_metrics, _union, summarize

REPORT_VERSION = 1


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


class SpeakerMetrics(BaseModel):
    talk_s: float = Field(description="seconds of speech")
    talk_ratio: float = Field(description="share of all speech, 0-1")
    segments: int
    speaking_rate: float | None = Field(None, description="in rate_unit, over this speaker's speech time")
    rate_unit: str | None = Field(None, description="'words/min' or 'characters/min' (Chinese)")
    interruptions: int = Field(0, description="times this speaker started while the other was mid-sentence")
    scored: bool = Field(False, description="whether this speaker's emotion was graded")
    grade_share: dict[str, float] = Field(default_factory=dict, description="share of graded time per grade, 0-1")
    peak_grade: Grade | None = None
    peak_index: float | None = None


class CallMetrics(BaseModel):
    duration_s: float
    speakers: dict[str, SpeakerMetrics]
    silence_s: float = Field(description="seconds nobody spoke")
    silence_ratio: float = Field(description="0-1")
    longest_silence_s: float
    overtalk_s: float = Field(description="seconds both spoke at once")
    interruptions: int
    peak_grade: Grade | None = None
    peak_index: float | None = None
    escalations: int = 0
    first_escalation_t: float | None = Field(None, description="seconds into the call")


class CallReport(BaseModel):
    version: int = REPORT_VERSION
    call_id: str
    source: str = Field(description="the recording's path")
    source_sha256: str = ""
    duration_s: float
    language: str | None
    channels: dict[str, int] = Field(description="role -> channel index in the recording")
    mono: bool = Field(False, description="a mono recording: both parties mixed, graded as one speaker")
    notes: list[str] = Field(default_factory=list)
    segments: list[ReportSegment]
    timeline: list[TimelinePoint]
    alerts: list[ReportAlert]
    metrics: CallMetrics
    summary: CallSummary | None = Field(None, description="the call summary (docs/events.md), as in call.ended")
    scored_at: float = Field(description="Unix seconds")
    scoring_s: float = Field(0.0, description="wall seconds spent scoring")
    options: dict = Field(default_factory=dict)
    events: list[Event] = Field(default_factory=list, description="the pipeline's events (docs/events.md)")


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
    language = summary.language
    metrics = _metrics({r: _union(iv) for r, iv in speech.items()}, duration_s, segs, updates, list(alerts.values()), language)
    notes = ["mono recording: both parties are mixed and graded as one speaker ('customer')"] if mono else []
    return CallReport(call_id=call_id, source=source, source_sha256=source_sha256, duration_s=round(duration_s, 3),
                      language=language, channels=channels, mono=mono, notes=notes, segments=segs, timeline=timeline,
                      alerts=list(alerts.values()), metrics=metrics, summary=summary, scored_at=scored_at, options=options or {},
                      events=[e for e in events if e.type != "transcript.partial"])


def _rate(segments: list[ReportSegment], talk_s: float, language: str | None) -> tuple[float | None, str | None]:
    text = " ".join(s.text for s in segments)
    if not text.strip() or talk_s <= 0:
        return None, None
    han = len(re.findall(r"[\u4e00-\u9fff]", text))
    if language == "zh" or han > len(text) / 3:
        return round(han / talk_s * 60, 1), "characters/min"
    return round(len(re.findall(r"[\w']+", text)) / talk_s * 60, 1), "words/min"


def _metrics(speech, duration_s, segs, updates, alerts, language) -> CallMetrics:
    conv = conversation_metrics(speech, duration_s)
    total_talk = sum(conv["talk_s"].values())
    speakers: dict[str, SpeakerMetrics] = {}
    for ch in speech:
        mine = [s for s in segs if s.channel == ch]
        talk = conv["talk_s"].get(ch, 0.0)
        rate, unit = _rate(mine, talk, language)
        ups = sorted(updates.get(ch, []), key=lambda u: u.t)
        share: dict[str, float] = {}
        if ups:
            w = {g: 0.0 for g in GRADE_ORDER}
            for i, u in enumerate(ups):  # each update holds until the next (capped: silence is not graded time)
                nxt = ups[i + 1].t if i + 1 < len(ups) else u.t + 1.0
                w[u.grade] += min(max(nxt - u.t, 0.0), 5.0)
            tot = sum(w.values()) or 1.0
            share = {g: round(v / tot, 3) for g, v in w.items()}
        peak = max(ups, key=lambda u: (GRADE_ORDER[u.grade], u.index), default=None)
        speakers[ch] = SpeakerMetrics(talk_s=talk, talk_ratio=round(talk / total_talk, 3) if total_talk else 0.0,
                                      segments=len(mine), speaking_rate=rate, rate_unit=unit,
                                      interruptions=conv["interruptions"].get(ch, 0), scored=bool(ups), grade_share=share,
                                      peak_grade=peak.grade if peak else None,
                                      peak_index=round(max(u.index for u in ups), 1) if ups else None)
    graded = [s for s in speakers.values() if s.peak_grade]
    top = max(graded, key=lambda s: (GRADE_ORDER[s.peak_grade], s.peak_index or 0.0), default=None)
    return CallMetrics(duration_s=round(duration_s, 3), speakers=speakers, silence_s=conv["silence_s"],
                       silence_ratio=round(conv["silence_s"] / duration_s, 3) if duration_s else 0.0,
                       longest_silence_s=conv["longest_silence_s"], overtalk_s=conv["overtalk_s"],
                       interruptions=sum(conv["interruptions"].values()),
                       peak_grade=top.peak_grade if top else None,
                       peak_index=max((s.peak_index for s in graded if s.peak_index is not None), default=None),
                       escalations=len(alerts), first_escalation_t=min((a.t for a in alerts), default=None))


def report_json_schema() -> dict:
    return CallReport.model_json_schema()
