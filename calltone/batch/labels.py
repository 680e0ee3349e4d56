"""Labelled calls: a recording plus a JSON file saying how the customer sounded, and when.

This is the format ``calltone eval --calls DIR`` scores calltone against and ``calltone train``
adapts the model with (docs/batch.md, "Labelled calls").  ``CALL.wav`` (or .flac/.mp3/.ogg)
sits next to ``CALL.json``::

    {"language": "en",                                   # zh, en, de ... (optional)
     "channels": {"customer": 0, "agent": 1},            # which channel of a stereo file is whom
     "segments": [{"channel": "customer", "start": 3.1, "end": 5.9, "grade": "calm"}, ...],
     "escalation_onset_s": 41.2,                         # when the caller turned angry (optional)
     "kind": "escalate"}                                 # free text, e.g. steady/escalate/recover/flare

Only customer segments are scored; their grades are calm, anxious or angry.  Calls written by
``../shared/tools/make_calls.py`` are in this format (its extra fields are ignored).
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from calltone.batch.scorer import AUDIO_SUFFIXES
from calltone.events import Grade


class LabelledSegment(BaseModel):
    model_config = ConfigDict(extra="ignore")

    channel: str = Field("customer", description="customer or agent")
    start: float = Field(ge=0, description="seconds from the start of the recording")
    end: float = Field(gt=0, description="seconds from the start of the recording")
    grade: Grade
    emotion: str | None = Field(None, description="a finer label, when known (e.g. happiness, surprise: graded calm)")
    text: str | None = None

    @model_validator(mode="after")
    def _ordered(self) -> "LabelledSegment":
        if self.end <= self.start:
            raise ValueError(f"segment ends ({self.end} s) before it starts ({self.start} s)")
        return self


class LabelledCall(BaseModel):
    model_config = ConfigDict(extra="ignore")

    language: str | None = None
    channels: dict[str, int] = Field(default_factory=lambda: {"customer": 0, "agent": 1})
    segments: list[LabelledSegment]
    escalation_onset_s: float | None = Field(None, ge=0, description="when the caller turned angry; "
                                             "an alert is expected from then on")
    kind: str | None = None
    customer_speaker: str | None = Field(None, description="who the customer is, when known (groups a caller's "
                                         "calls in training)")

    @property
    def customer_channel(self) -> int:
        return int(self.channels.get("customer", 0))

    @property
    def customer_segments(self) -> list[LabelledSegment]:
        return [s for s in self.segments if s.channel == "customer"]

    @property
    def steady(self) -> bool:
        """A call on which no alert may be raised: the caller never sounds angry."""
        return self.escalation_onset_s is None and all(s.grade == "calm" for s in self.customer_segments)


class LabelledRecording(BaseModel):
    audio: Path
    labels: LabelledCall

    @property
    def name(self) -> str:
        return self.audio.stem


def find_labelled_calls(folder: Path) -> tuple[list[LabelledRecording], list[tuple[str, str]]]:
    """Every recording in ``folder`` (recursively) with its label file, and (path, problem) for the rest:
    a recording without labels, labels without a recording, a label file that does not parse."""
    folder = Path(folder)
    if not folder.is_dir():
        return [], [(str(folder), "no such folder")]
    found: list[LabelledRecording] = []
    problems: list[tuple[str, str]] = []
    audio = {p.with_suffix(""): p for p in sorted(folder.rglob("*"))
             if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES and not p.stem.endswith(".mono")}
    for label in sorted(folder.rglob("*.json")):
        rec = audio.pop(label.with_suffix(""), None)
        if rec is None:
            problems.append((str(label), "no recording of the same name beside it"))
            continue
        try:
            found.append(LabelledRecording(audio=rec, labels=LabelledCall.model_validate(json.loads(label.read_text("utf-8")))))
        except json.JSONDecodeError as exc:
            problems.append((str(label), f"not JSON: {exc}"))
        except ValidationError as exc:
            err = exc.errors()[0]
            problems.append((str(label), f"not a labelled call: {'.'.join(map(str, err['loc'])) or 'file'}: {err['msg']}"))
    problems.extend((str(p), "no label file (CALL.json) beside it") for p in audio.values())
    return found, problems
