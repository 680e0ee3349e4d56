"""How a call's speech is decoded: one frozen policy, chosen once per pipeline.

:data:`LIVE` is a call heard as it happens: partial hypotheses while someone speaks, finals with
word times, conditioned on the channel's previous final, at foreground priority.  :data:`RECORDING`
is a file scored offline (``calltone score``, server jobs): no partial decodes; the once-a-second
views of an utterance still reach the emotion channel at the same call times as live, but only once
the utterance's final decode is back (their embeddings cut from its encoder output); finals at
background priority, not conditioned on the previous text (with every utterance queued at once it
would depend on timing), so a recording scores the same every time.  A live producer that wants no
partials (the native protocol's ``partials: false``, ``calltone transcribe``) uses
``LIVE.without_partials()``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class DecodePolicy:
    name: str
    show_partials: bool  # decode the utterance so far about once a second and publish it (transcript.partial)
    word_timestamps: bool  # finals with word times (also needs the asr.word_timestamps setting)
    condition_on_previous_text: bool  # a final's decode is prompted with the channel's previous final
    background: bool  # finals queue at background priority (live calls in the same process go first)
    defer_views_to_final: bool  # the voice views of an utterance wait for its final decode (embeddings cut from it)
    packable: bool  # an unscored channel's short utterances may share one decode (speech/packing.py)

    def without_partials(self) -> DecodePolicy:
        """The same policy, publishing no partial transcripts."""
        if not self.show_partials:
            return self
        return replace(self, name=f"{self.name}-no-partials", show_partials=False)


LIVE = DecodePolicy(name="live", show_partials=True, word_timestamps=True, condition_on_previous_text=True,
                    background=False, defer_views_to_final=False, packable=False)
RECORDING = DecodePolicy(name="recording", show_partials=False, word_timestamps=False, condition_on_previous_text=False,
                         background=True, defer_views_to_final=True, packable=True)
