"""The one event schema: what the pipeline yields, what the websocket feeds carry,
what batch reports and web pages read.  ``docs/events.md`` documents it and
``calltone schema`` prints it as JSON Schema.

Every event has ``type``, ``call_id``, ``t`` (seconds since the call started) and,
once stored by the server, ``seq`` (per-call sequence number) and ``server_time``
(Unix seconds).  Channels are named by role: ``customer`` or ``agent``.
"""

from __future__ import annotations

import hashlib
import re
from typing import Annotated, Literal, Union

from pydantic import BaseModel, Field, TypeAdapter

Grade = Literal["calm", "anxious", "angry"]
GRADES: tuple[Grade, ...] = ("calm", "anxious", "angry")
INDEX_BANDS: dict[Grade, tuple[float, float]] = {"calm": (0.0, 39.0), "anxious": (40.0, 70.0), "angry": (71.0, 100.0)}
"""The emotion index's range for each grade (the pages' colour bands: calm < 40, anxious 40-70, angry > 70):
an update's index always lies in its grade's band, also after rounding to whole points."""

CALL_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")
"""Call ids (and agent ids): 1-128 characters, letters, digits and ``. _ : @ -``, starting with a letter or digit."""


def valid_call_id(call_id: str) -> bool:
    return bool(CALL_ID_RE.match(call_id))


def call_id_from_name(name: str) -> str:
    """A valid call id for a recording's name: the name itself when it is one, else its safe characters
    plus a short hash of the name (so that two names never share an id)."""
    if valid_call_id(name):
        return name
    digest = hashlib.sha1(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    safe = re.sub(r"[^A-Za-z0-9._:@-]+", "_", name).strip("_.:@-")[:100]
    return f"{safe}-{digest}" if safe else f"call-{digest}"


class Word(BaseModel):
    word: str
    start: float
    end: float
    probability: float | None = None


class Probs(BaseModel):
    calm: float
    anxious: float
    angry: float


class Cue(BaseModel):
    """One reason behind a grade, e.g. pitch 4.1 semitones above this caller's baseline."""

    name: str = Field(description="feature or phrase id, e.g. 'pitch_mean', 'loudness', 'phrase'")
    label: str = Field(description="plain words for people, e.g. 'voice pitch raised'")
    value: float | None = None
    unit: str | None = None
    z: float | None = Field(None, description="how unusual, in standard deviations")
    text: str | None = Field(None, description="for phrase cues: the words heard")


class EventBase(BaseModel):
    call_id: str = ""
    t: float = Field(0.0, description="call-relative seconds")
    seq: int | None = Field(None, description="per-call sequence number, set when stored")
    server_time: float | None = Field(None, description="Unix seconds, set when stored")


class CallStarted(EventBase):
    type: Literal["call.started"] = "call.started"
    channels: dict[str, int] = Field(default_factory=dict, description="role -> channel index")
    language: str = "auto"
    agent_id: str | None = None
    metadata: dict = Field(default_factory=dict)


class TranscriptEvent(EventBase):
    channel: str
    start: float
    end: float
    text: str
    final: bool
    language: str | None = None
    words: list[Word] = Field(default_factory=list)
    avg_logprob: float | None = None


class TranscriptPartial(TranscriptEvent):
    type: Literal["transcript.partial"] = "transcript.partial"
    final: bool = False


class TranscriptFinal(TranscriptEvent):
    type: Literal["transcript.final"] = "transcript.final"
    final: bool = True


class EmotionUpdate(EventBase):
    type: Literal["emotion.update"] = "emotion.update"
    channel: str
    grade: Grade
    probs: Probs
    index: float = Field(description="emotion index 0 (calm) .. 100 (angry), always inside the grade's band "
                                     "(INDEX_BANDS: calm 0-39, anxious 40-70, angry 71-100)")
    trend: float = Field(0.0, description="index points per minute over the last 30 s; 0 when not distinguishable "
                                          "from noise")
    cues: list[Cue] = Field(default_factory=list)


class GuidanceCard(BaseModel):
    grade: Grade
    language: str
    title: str
    steps: list[str]
    phrases: list[str] = Field(default_factory=list)


class Guidance(EventBase):
    type: Literal["guidance"] = "guidance"
    channel: str
    card: GuidanceCard


RaiseCode = Literal["angry_confirmed", "angry_sustained", "index_rise", "phrase"]
ClearCode = Literal["calm", "call_ended"]


class EscalationRaised(EventBase):
    type: Literal["escalation.raised"] = "escalation.raised"
    channel: str
    alert_id: str
    reason: str = Field(description="the reason in English words (pages say it from reason_code and reason_figures)")
    reason_code: RaiseCode | None = Field(None, description="the rule that fired (None: stored before reasons had codes)")
    reason_figures: dict = Field(default_factory=dict, description="the figures the reason states (docs/events.md)")
    evidence: dict = Field(default_factory=dict)


class EscalationCleared(EventBase):
    type: Literal["escalation.cleared"] = "escalation.cleared"
    channel: str
    alert_id: str
    reason: str = Field(description="why it cleared, in English words")
    reason_code: ClearCode | None = Field(None, description="calm (the caller calmed down) or call_ended")
    reason_figures: dict = Field(default_factory=dict, description="the figures the reason states (docs/events.md)")


class CallEnded(EventBase):
    type: Literal["call.ended"] = "call.ended"
    summary: dict = Field(default_factory=dict)


Event = Annotated[
    Union[
        CallStarted,
        TranscriptPartial,
        TranscriptFinal,
        EmotionUpdate,
        Guidance,
        EscalationRaised,
        EscalationCleared,
        CallEnded,
    ],
    Field(discriminator="type"),
]
EventAdapter: TypeAdapter[Event] = TypeAdapter(Event)


def parse_event(data: dict | str | bytes) -> Event:
    """Parse one event from JSON text or a dict."""
    if isinstance(data, (str, bytes)):
        return EventAdapter.validate_json(data)
    return EventAdapter.validate_python(data)


def event_json_schema() -> dict:
    return EventAdapter.json_schema()
