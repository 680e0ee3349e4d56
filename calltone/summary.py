"""The call summary: one typed :class:`CallSummary`, computed in one place (:func:`summarize`).

Every figure about a whole call -- the live call's ``call.ended``, scored jobs, batch
reports (JSON, HTML, ``summary.csv``), the pages and the API -- comes from
:func:`summarize`, from the call's events and each speaker's speech intervals.
``docs/events.md`` ("The call summary") defines each figure.

Speech intervals, one rule: the VAD's speech segments (in call time) when the pipeline heard the
whole call (a live call that was not resumed, a scored recording); the final transcripts'
``start``..``end`` otherwise (a resumed call, a call summarised while still live, a stored
call summarised again).  ``speech_source`` says which.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, Field

from calltone.events import GRADES, Grade

GRADE_ORDER = {g: i for i, g in enumerate(GRADES)}
INTERRUPTION_MIN_S = 0.5  # an interruption: the other had spoken this long before, and went on this long after
RateUnit = Literal["words/min", "characters/min"]
Intervals = list[tuple[float, float]]
_HAN = re.compile(r"[\u4e00-\u9fff]")
_WORD = re.compile(r"[\w']+")


class ChannelGrades(BaseModel):
    """How one scored speaker's emotion went over the call."""

    seconds: dict[Grade, float] = Field(description="seconds of this speaker's speech in each grade")
    share: dict[Grade, float] = Field(description="seconds / this speaker's graded speech, 0-1")
    peak_index: float = Field(description="emotion index 0-100 at the peak")
    peak_grade: Grade = Field(description="the highest grade this speaker reached")
    peak_t: float = Field(description="seconds into the call: the peak (highest grade, then highest index)")
    reached_angry: bool
    angry_s: float = Field(description="seconds of speech graded angry (= seconds['angry'])")
    updates: int = Field(description="emotion.update events of this speaker")


class CallSummary(BaseModel):
    """Figures about one call; each is defined in docs/events.md ("The call summary")."""

    duration_s: float = Field(description="seconds of call time")
    language: str | None = Field(None, description="zh or en; None when not known")
    speech_source: Literal["vad", "finals"] = Field(description="where the speech intervals came from")
    talk_s: dict[str, float] = Field(description="role -> seconds of speech")
    talk_share: dict[str, float] = Field(description="role -> share of all speech, 0-1 (empty: nobody spoke)")
    silence_s: float = Field(description="seconds nobody spoke")
    silence_share: float = Field(description="silence_s / duration_s, 0-1")
    longest_silence_s: float = Field(description="seconds, the longest stretch nobody spoke")
    overtalk_s: float = Field(description="seconds both spoke at once")
    interruptions: dict[str, int] = Field(description="role -> times that role started while the other was mid-speech")
    agent_speech_rate: float | None = Field(None, description="the agent's speech rate in agent_speech_rate_unit")
    agent_speech_rate_unit: RateUnit | None = Field(None, description="words/min (en) or characters/min (zh)")
    speech_rate: dict[str, float] = Field(description="role -> speech rate in speech_rate_unit (roles with transcript)")
    speech_rate_unit: RateUnit | None = Field(None, description="the call's rate unit: words/min or characters/min")
    grades: dict[str, ChannelGrades] = Field(description="per scored speaker (a speaker with emotion updates)")
    peak_grade: Grade | None = Field(None, description="the highest grade any scored speaker reached")
    peak_index: float | None = Field(None, description="emotion index 0-100 at the call's peak")
    peak_channel: str | None = None
    peak_t: float | None = Field(None, description="seconds into the call")
    escalations: int = Field(description="escalation.raised events")
    first_escalation_t: float | None = Field(None, description="seconds into the call")
    final_segments: int = Field(description="transcript.final events")
    partial: bool = Field(False, description="summarised while the call was still live or interrupted")
    resumed: bool = Field(False, description="the call was resumed after an interruption")
    end_reason: str | None = Field(None, description="how the live call ended (stopped, disconnected, ...)")


def _dict(e: Mapping | BaseModel) -> Mapping:
    return e if isinstance(e, Mapping) else e.model_dump()


def summarize(events: Iterable[Mapping | BaseModel], duration_s: float, speech: Mapping[str, Intervals] | None = None,
              *, roles: Iterable[str] = (), language: str | None = None, partial: bool = False, resumed: bool = False,
              end_reason: str | None = None) -> CallSummary:
    """The summary of a call from its events (dicts or models) and, when the pipeline heard the whole call, the
    VAD's speech intervals per role (``speech``; None: the finals' start..end).  ``roles``: the call's speakers
    (also taken from ``call.started``); ``language``: the pipeline's (else the finals' most common one)."""
    evs = [_dict(e) for e in events]
    finals = [e for e in evs if e.get("type") == "transcript.final"]
    started = next((e for e in evs if e.get("type") == "call.started"), None)
    roles = list(dict.fromkeys([*roles, *((started or {}).get("channels") or {})]))
    if speech is None:
        source: Literal["vad", "finals"] = "finals"
        spans: dict[str, Intervals] = {r: [] for r in roles}
        for f in finals:
            spans.setdefault(f["channel"], []).append((float(f["start"]), float(f["end"])))
    else:
        source, spans = "vad", {r: [] for r in roles} | {r: list(iv) for r, iv in speech.items()}
    last = max((float(e.get("end") or e.get("t") or 0.0) for e in evs if e.get("type") != "call.ended"), default=0.0)
    duration = max(float(duration_s), last)
    merged = {r: _union(iv) for r, iv in spans.items()}
    conv = _conversation(merged, duration)
    lang = language if language and language != "auto" else _language(finals, started)
    unit = _rate_unit([f.get("text") or "" for f in finals], lang)
    rates = {r: rate for r in merged if (rate := _rate([f.get("text") or "" for f in finals if f["channel"] == r],
                                                      conv.talk_s[r], unit)) is not None}
    grades = _grades(evs, merged)
    top = max(grades.items(), key=lambda kv: (GRADE_ORDER[kv[1].peak_grade], kv[1].peak_index), default=None)
    raised = [float(e["t"]) for e in evs if e.get("type") == "escalation.raised"]
    total = sum(conv.talk_s.values())
    return CallSummary(
        duration_s=round(duration, 3), language=lang, speech_source=source, talk_s=conv.talk_s,
        talk_share={r: round(v / total, 3) for r, v in conv.talk_s.items()} if total > 0 else {},
        silence_s=conv.silence_s, silence_share=round(conv.silence_s / duration, 3) if duration > 0 else 0.0,
        longest_silence_s=conv.longest_silence_s, overtalk_s=conv.overtalk_s, interruptions=conv.interruptions,
        agent_speech_rate=rates.get("agent"), agent_speech_rate_unit=unit if "agent" in rates else None,
        speech_rate=rates, speech_rate_unit=unit if rates else None, grades=grades,
        peak_grade=top[1].peak_grade if top else None, peak_index=top[1].peak_index if top else None,
        peak_channel=top[0] if top else None, peak_t=top[1].peak_t if top else None,
        escalations=len(raised), first_escalation_t=round(min(raised), 3) if raised else None,
        final_segments=len(finals), partial=partial, resumed=resumed, end_reason=end_reason)


def _language(finals: list[Mapping], started: Mapping | None) -> str | None:
    heard = Counter(f.get("language") for f in finals if f.get("language") in ("zh", "en"))
    if heard:
        return heard.most_common(1)[0][0]
    said = (started or {}).get("language")
    return said if said in ("zh", "en") else None


def _rate_unit(texts: list[str], language: str | None) -> RateUnit:
    """Characters per minute for Chinese, words per minute otherwise: the call's language decides, the transcript
    when the language is not known (more than a third Han characters: Chinese)."""
    if language is not None:
        return "characters/min" if language == "zh" else "words/min"
    text = " ".join(texts)
    return "characters/min" if len(_HAN.findall(text)) > len(text) / 3 else "words/min"


def _rate(texts: list[str], talk_s: float, unit: RateUnit) -> float | None:
    """Han characters (characters/min) or words (words/min) of the speaker's finals per minute of their speech."""
    text = " ".join(texts)
    if not text.strip() or talk_s <= 0:
        return None
    n = len(_HAN.findall(text)) if unit == "characters/min" else len(_WORD.findall(text))
    return round(n / talk_s * 60, 1)


def _grades(evs: list[Mapping], speech: Mapping[str, Intervals]) -> dict[str, ChannelGrades]:
    """Each emotion.update's grade holds from its t until the speaker's next update; the speaker's speech before
    their first update takes the first update's grade; only the speaker's own speech counts."""
    updates: dict[str, list[Mapping]] = {}
    for e in evs:
        if e.get("type") == "emotion.update":
            updates.setdefault(e["channel"], []).append(e)
    out: dict[str, ChannelGrades] = {}
    for ch, ups in updates.items():
        ups.sort(key=lambda u: float(u["t"]))
        bounds = [float("-inf")] + [float(u["t"]) for u in ups[1:]] + [float("inf")]
        holds = [(bounds[i], bounds[i + 1], u["grade"]) for i, u in enumerate(ups)]
        seconds = _overlap_by_label(speech.get(ch, []), holds)
        total = sum(seconds.values())
        peak = max(ups, key=lambda u: (GRADE_ORDER[u["grade"]], float(u.get("index") or 0.0)))
        out[ch] = ChannelGrades(
            seconds={g: round(seconds[g], 3) for g in GRADES},
            share={g: round(seconds[g] / total, 3) if total > 0 else 0.0 for g in GRADES},
            peak_index=round(float(peak.get("index") or 0.0), 1), peak_grade=peak["grade"], peak_t=round(float(peak["t"]), 3),
            reached_angry=any(u["grade"] == "angry" for u in ups), angry_s=round(seconds["angry"], 3), updates=len(ups))
    return out


def _overlap_by_label(speech: Intervals, holds: list[tuple[float, float, str]]) -> dict[str, float]:
    """Seconds of ``speech`` (merged, sorted) inside each label's hold intervals (sorted, disjoint)."""
    out = {g: 0.0 for g in GRADES}
    i = j = 0
    while i < len(speech) and j < len(holds):
        lo, hi = max(speech[i][0], holds[j][0]), min(speech[i][1], holds[j][1])
        if hi > lo:
            out[holds[j][2]] += hi - lo
        if speech[i][1] < holds[j][1]:
            i += 1
        else:
            j += 1
    return out


def _union(intervals: Intervals) -> Intervals:
    out: list[list[float]] = []
    for s, e in sorted(intervals):
        if e <= s:
            continue
        if out and s <= out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return [(s, e) for s, e in out]


def _total(intervals: Intervals) -> float:
    return sum(e - s for s, e in intervals)


def _intersection(a: Intervals, b: Intervals) -> float:
    return _overlap_by_label(a, [(s, e, "calm") for s, e in b])["calm"]


@dataclass(frozen=True)
class _Conversation:
    talk_s: dict[str, float]
    silence_s: float
    longest_silence_s: float
    overtalk_s: float
    interruptions: dict[str, int]


def _conversation(merged: Mapping[str, Intervals], duration_s: float) -> _Conversation:
    """Talk, silence, overtalk and interruptions from each speaker's merged speech intervals."""
    anyone = _union([iv for ivs in merged.values() for iv in ivs])
    gaps = [b - a for a, b in zip([0.0] + [e for _, e in anyone], [s for s, _ in anyone] + [duration_s])]
    roles = list(merged)
    overtalk = _intersection(merged[roles[0]], merged[roles[1]]) if len(roles) == 2 else 0.0
    interruptions = {r: 0 for r in roles}
    if len(roles) == 2:
        for who, other in ((roles[0], roles[1]), (roles[1], roles[0])):
            starts = [os_ for os_, _ in merged[other]]
            for s, _ in merged[who]:  # the other's intervals are disjoint: only the last one starting by s can hold s
                k = bisect_right(starts, s) - 1
                if k >= 0 and merged[other][k][0] + INTERRUPTION_MIN_S <= s <= merged[other][k][1] - INTERRUPTION_MIN_S:
                    interruptions[who] += 1
    return _Conversation(talk_s={r: round(_total(iv), 3) for r, iv in merged.items()},
                         silence_s=round(max(0.0, duration_s - _total(anyone)), 3),
                         longest_silence_s=round(max([g for g in gaps if g > 0], default=0.0), 3),
                         overtalk_s=round(overtalk, 3), interruptions=interruptions)


def timeline(events: list[dict]) -> dict:
    """Transcript, emotion timeline and escalation events of a call, for GET /v1/calls/{id}."""
    transcript = [{"seq": e.get("seq"), "channel": e["channel"], "start": e["start"], "end": e["end"], "text": e["text"],
                   "language": e.get("language")} for e in events if e.get("type") == "transcript.final"]
    emotion = [{"seq": e.get("seq"), "t": e["t"], "channel": e["channel"], "grade": e["grade"], "index": e.get("index"),
                "probs": e.get("probs")} for e in events if e.get("type") == "emotion.update"]
    return {"transcript": transcript, "emotion": emotion}
