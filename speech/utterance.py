"""What a channel's transcriber hands the pipeline: typed items, in the order the speech was heard.

* :class:`SpeechSoFar` -- the utterance in progress, about once a second while someone speaks: its
  audio so far, the voice embedding of that audio when a decode computed one, and the partial
  transcript to show (live only, when one was decoded).
* :class:`Utterance` -- a finished utterance (the VAD saw it end): its audio, the encoder embedding,
  and its final transcript (``final``, the ``transcript.final`` event to publish), which is ``None``
  when the channel is not transcribed, nothing was heard, or the decode failed.

The pipeline routes both (``calltone/pipeline.py``): an utterance's text cues and voice score go to
the speaker's :class:`~calltone.emotion.channel.EmotionChannel` with the utterance itself, then its
final is published.  Times are call seconds; audio is :data:`~calltone.speech.audio.SAMPLE_RATE`
float32 mono.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from calltone.events import TranscriptFinal, TranscriptPartial, Word


@dataclass(frozen=True, eq=False)
class SpeechSoFar:
    """The utterance in progress from ``start`` to ``end``."""

    channel: str
    start: float
    end: float
    audio: np.ndarray
    embedding: np.ndarray | None = None  # pooled Whisper encoder output of ``audio``, when computed
    partial: TranscriptPartial | None = None  # the hypothesis to show, when one was decoded


@dataclass(frozen=True, eq=False)
class Utterance:
    """One finished utterance from ``start`` to ``end``."""

    channel: str
    start: float
    end: float
    audio: np.ndarray
    embedding: np.ndarray | None = None  # pooled Whisper encoder output of the whole utterance, when computed
    final: TranscriptFinal | None = None  # None: not transcribed, nothing heard, or the decode failed

    @property
    def text(self) -> str | None:
        return self.final.text if self.final is not None else None

    @property
    def words(self) -> list[Word]:
        return self.final.words if self.final is not None else []

    @property
    def language(self) -> str | None:
        return self.final.language if self.final is not None else None


Heard = SpeechSoFar | Utterance
"""One item from a channel's transcriber."""
