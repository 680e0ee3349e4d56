"""Call time of one producer connection.

The pipeline counts time in audio pushed since the producer connected ("pipeline
time").  Call time adds the resume offset (where the call stood when this connection
resumed it) and the audio the producer said it discarded upstream (:meth:`CallClock.skip`,
e.g. AudioHook ``discarded``): a skip moves every later call time on, with no audio
and no silence invented for it.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from typing import Any


class CallClock:
    """Pipeline time -> call time: ``t + offset + seconds skipped before t``."""

    def __init__(self, offset: float = 0.0) -> None:
        self.offset = offset
        self._at: list[float] = []  # pipeline time of each skip, ascending
        self._total: list[float] = []  # seconds skipped up to and including each skip

    @property
    def skipped(self) -> float:
        return self._total[-1] if self._total else 0.0

    def skip(self, at: float, seconds: float) -> None:
        """``seconds`` of call audio were discarded at pipeline time ``at`` (before the audio pushed after it)."""
        at = round(at, 3)  # event times are milliseconds: a skip and an utterance at the same instant compare equal
        if self._at and at < self._at[-1]:
            raise ValueError(f"skip at {at} s is before the previous one at {self._at[-1]} s")
        self._at.append(at)
        self._total.append(self.skipped + seconds)

    def call_time(self, t: float, *, start: bool = False) -> float:
        """Call time of pipeline time ``t``.  A start counts the skips at ``t`` (its audio came after them);
        an end or an instant does not (the audio it describes came before them)."""
        i = (bisect_right if start else bisect_left)(self._at, t)
        return t + self.offset + (self._total[i - 1] if i else 0.0)

    def spans(self, start: float, end: float) -> list[tuple[float, float]]:
        """Pipeline time ``start``..``end`` (audio heard, e.g. a VAD speech segment) as call-time spans: split at
        the skips inside it, so the skipped seconds between the pieces are not counted as heard."""
        cuts = sorted({a for a in self._at[bisect_right(self._at, start):bisect_left(self._at, end)] if start < a < end})
        bounds = [start, *cuts, end]
        return [(self.call_time(a, start=True), self.call_time(b)) for a, b in zip(bounds, bounds[1:])]

    def shift(self, ev: Any) -> None:
        """Turn an event's pipeline times (``t``, ``start``/``end``, word times) into call times."""
        if not self.offset and not self._at:
            return
        ev.t = round(self.call_time(ev.t), 3)
        if hasattr(ev, "start") and hasattr(ev, "end"):
            ev.start = round(self.call_time(ev.start, start=True), 3)
            ev.end = round(self.call_time(ev.end), 3)
        for w in getattr(ev, "words", None) or []:
            w.start = round(self.call_time(w.start, start=True), 3)
            w.end = round(self.call_time(w.end), 3)
