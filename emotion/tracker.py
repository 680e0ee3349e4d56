"""Per-speaker emotion tracker: smoothing, grade hysteresis, index, trend, emission.

One :class:`EmotionTracker` per speaker (channel).  Feed it
``update(t, probs, cues)`` at least once per second while the speaker talks (the
fused probabilities from :mod:`calltone.emotion.fusion`); each call returns a
:class:`TrackerState` whose ``event`` is an :class:`EmotionUpdate` when one should
be sent (grade change, index moved by ``emit_index_step``, or the heartbeat),
else ``None``.  Definitions and config keys: docs/emotion.md.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Sequence

from pydantic import Field, model_validator
from scipy.special import stdtrit

from calltone.events import INDEX_BANDS, Cue, EmotionUpdate, Grade, Probs

from .fusion import DEFAULT_TRACKING_PATH, TomlConfig, normalised_probs, probs_vector

_EPS = 1e-9


class TrackerConfig(TomlConfig):
    # smoothing
    tau_s: float = Field(0.3, gt=0.0, description="time constant (s) of the exponential smoothing of probabilities")
    max_gap_s: float = Field(1.5, gt=0.0, description="a longer gap between updates (silence) counts as this long")
    # hysteresis (on smoothed probabilities)
    angry_enter: float = Field(0.40, description="smoothed p_angry at/above which angry may be entered")
    angry_exit: float = Field(0.35, description="smoothed p_angry below which angry may be left")
    upset_enter: float = Field(0.40, description="smoothed p_anxious + p_angry at/above which calm -> anxious")
    upset_exit: float = Field(0.35, description="smoothed p_anxious + p_angry below which anxious -> calm")
    angry_dwell_s: float = Field(0.0, ge=0.0, description="speech seconds the angry condition must hold to enter angry")
    anxious_dwell_s: float = Field(0.0, ge=0.0, description="speech seconds the upset condition must hold to enter anxious")
    exit_dwell_s: float = Field(0.0, ge=0.0, description="speech seconds below the exit threshold before a grade is lowered")
    # index and trend
    index_anxious_weight: float = Field(0.5, ge=0.0, le=1.0, description="index = 100*(w*p_anxious + p_angry)")
    trend_window_s: float = Field(30.0, gt=0.0, description="least-squares window (call seconds) for the trend")
    trend_min_span_s: float = Field(10.0, ge=0.0, description="trend is 0 until the window spans this long")
    trend_min_points: int = Field(3, ge=2, description="trend is 0 until the window holds this many updates")
    trend_z: float = Field(2.0, ge=0.0, description="trend is 0 unless the slope is this many standard errors from 0 "
                         "(as rare as z normal deviates: Student t for the window's points)")
    # emission
    emit_index_step: float = Field(5.0, gt=0.0, description="emit when the index moved this much since the last emission")
    emit_min_interval_s: float = Field(1.0, ge=0.0, description="at most one index/heartbeat emission per this long")
    emit_max_interval_s: float = Field(5.0, gt=0.0, description="emit at least this often while updates arrive")
    max_cues: int = Field(6, ge=0, description="cues carried by one EmotionUpdate (strongest first)")

    @model_validator(mode="after")
    def _check(self) -> TrackerConfig:
        if not (0.0 <= self.angry_exit <= self.angry_enter <= 1.0):
            raise ValueError("need 0 <= angry_exit <= angry_enter <= 1")
        if not (0.0 <= self.upset_exit <= self.upset_enter <= 1.0):
            raise ValueError("need 0 <= upset_exit <= upset_enter <= 1")
        if self.emit_max_interval_s < self.emit_min_interval_s:
            raise ValueError("emit_max_interval_s must be >= emit_min_interval_s")
        return self

    @classmethod
    def load(cls, path: str | Path | None = None) -> TrackerConfig:
        """``[tracker]`` of emotion/data/tracking.toml, overridden by ``path``."""
        return cls(**cls._read(DEFAULT_TRACKING_PATH, path, "tracker"))


@dataclass(frozen=True)
class TrackerState:
    """The tracker's view after one update."""

    t: float
    channel: str
    grade: Grade
    previous_grade: Grade | None  # grade before this update (None on the first)
    grade_since: float  # call time the current grade was entered
    probs: Probs  # smoothed
    raw: Probs  # as given to update()
    index: float  # 0..100
    trend: float  # index points per minute
    cues: tuple[Cue, ...]  # as given to update()
    event: EmotionUpdate | None  # what to send now, if anything

    @property
    def grade_changed(self) -> bool:
        return self.previous_grade != self.grade


def emotion_index(p: Probs, grade: Grade, anxious_weight: float = 0.5) -> float:
    """100 * (w * p_anxious + p_angry) of the smoothed probabilities, held inside ``grade``'s band
    (``INDEX_BANDS``): the index, the grade and the pages' colours say the same thing."""
    lo, hi = INDEX_BANDS[grade]
    return max(lo, min(hi, 100.0 * (anxious_weight * p.anxious + p.angry)))


def trend_per_minute(points: Sequence[tuple[float, float]], min_span_s: float, min_points: int, z: float) -> float:
    """Least-squares slope of (t, index) in points per minute; 0 while the points span less than ``min_span_s``,
    are fewer than ``min_points``, or the slope is within ``z`` standard errors of 0 (noise, not a trend) -- ``z`` read
    as the two-sided level of a normal deviate (2: 95.45 %) and taken from Student's t with n - 2 degrees of freedom,
    so that noise reads as a trend that rarely (4.55 % for z = 2) whatever the number of points."""
    n = len(points)
    if n < min_points or points[-1][0] - points[0][0] < min_span_s - _EPS:
        return 0.0
    slope = lsq_slope(points)
    mx = sum(x for x, _ in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    my = sum(y for _, y in points) / n
    resid = sum((y - my - slope * (x - mx)) ** 2 for x, y in points)
    se = math.sqrt(resid / (n - 2) / sxx) if n > 2 and sxx > _EPS else 0.0
    return 60.0 * slope if abs(slope) > t_critical(n - 2, z) * se else 0.0


@lru_cache(maxsize=256)
def t_critical(dof: int, z: float) -> float:
    """Student's t value with ``dof`` degrees of freedom exceeded (either sign) as rarely as ``z`` by a normal deviate."""
    return float(stdtrit(max(dof, 1), 1.0 - 0.5 * math.erfc(z / math.sqrt(2.0))))


def lsq_slope(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope dy/dx of ``points`` (0 for fewer than two distinct x)."""
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx <= _EPS:
        return 0.0
    return sum((x - mx) * (y - my) for x, y in points) / sxx


def cue_strength(c: Cue) -> float:
    if c.z is not None:
        return abs(c.z)
    if c.name.startswith("phrase") and c.value is not None:
        return 2.0 * abs(c.value)  # a phrase of weight 1 ranks like a 2-sigma feature
    return 0.0


@dataclass
class EmotionTracker:
    """Tracks one speaker; see the module docstring."""

    channel: str = "customer"
    call_id: str = ""
    config: TrackerConfig = field(default_factory=TrackerConfig)

    _smoothed: tuple[float, float, float] | None = field(default=None, init=False, repr=False)
    _last_t: float | None = field(default=None, init=False, repr=False)
    _clock: float = field(default=0.0, init=False, repr=False)  # speech seconds (gaps capped)
    _grade: Grade = field(default="calm", init=False, repr=False)
    _grade_since: float = field(default=0.0, init=False, repr=False)
    _since: dict[str, float | None] = field(default_factory=dict, init=False, repr=False)
    _index_hist: deque[tuple[float, float]] = field(default_factory=deque, init=False, repr=False)
    _last_emit_t: float | None = field(default=None, init=False, repr=False)
    _last_emit_index: float = field(default=0.0, init=False, repr=False)
    _last_state: TrackerState | None = field(default=None, init=False, repr=False)

    @property
    def state(self) -> TrackerState | None:
        """The state after the latest update (None before the first)."""
        return self._last_state

    @property
    def grade(self) -> Grade:
        return self._grade

    # ------------------------------------------------------------------ update
    def update(self, t: float, probs: Probs | Sequence[float], cues: Sequence[Cue] = ()) -> TrackerState:
        cfg = self.config
        raw = probs if isinstance(probs, Probs) else normalised_probs(probs)
        raw = normalised_probs(probs_vector(raw))
        first = self._smoothed is None
        if first:
            self._smoothed = probs_vector(raw)
            self._grade_since = t
        else:
            last = self._last_t if self._last_t is not None else t
            dt = min(max(0.0, t - last), cfg.max_gap_s)
            self._clock += dt
            alpha = 1.0 - math.exp(-dt / cfg.tau_s)
            self._smoothed = tuple(s + alpha * (r - s) for s, r in zip(self._smoothed, probs_vector(raw)))  # type: ignore[assignment]
        self._last_t = t if self._last_t is None else max(t, self._last_t)
        sm = normalised_probs(self._smoothed)

        previous = None if first else self._grade
        new = self._next_grade(sm)
        if new != self._grade:
            self._grade = new
            self._grade_since = t

        index = emotion_index(sm, self._grade, cfg.index_anxious_weight)
        self._index_hist.append((t, index))
        while self._index_hist and t - self._index_hist[0][0] > cfg.trend_window_s:
            self._index_hist.popleft()
        trend = trend_per_minute(list(self._index_hist), cfg.trend_min_span_s, cfg.trend_min_points, cfg.trend_z)

        state = TrackerState(
            t=t,
            channel=self.channel,
            grade=self._grade,
            previous_grade=previous,
            grade_since=self._grade_since,
            probs=sm,
            raw=raw,
            index=index,
            trend=trend,
            cues=tuple(cues),
            event=None,
        )
        if self._should_emit(state):
            event = self.to_event(state)
            self._last_emit_t = t
            self._last_emit_index = index
            state = replace(state, event=event)
        self._last_state = state
        return state

    def to_event(self, state: TrackerState) -> EmotionUpdate:
        cues = sorted(state.cues, key=cue_strength, reverse=True)[: self.config.max_cues]
        return EmotionUpdate(
            call_id=self.call_id,
            t=state.t,
            channel=self.channel,
            grade=state.grade,
            probs=state.probs,
            index=round(state.index, 1),
            trend=round(state.trend, 1),
            cues=list(cues),
        )

    def reset(self) -> None:
        """Forget everything (e.g. a new call on the same object)."""
        fresh = EmotionTracker(channel=self.channel, call_id=self.call_id, config=self.config)
        self.__dict__.update(fresh.__dict__)

    # --------------------------------------------------------------- internals
    def _held(self, key: str, cond: bool) -> float:
        """Speech seconds ``cond`` has held continuously (-1 when false)."""
        if not cond:
            self._since[key] = None
            return -1.0
        if self._since.get(key) is None:
            self._since[key] = self._clock
        return self._clock - self._since[key]  # type: ignore[operator]

    def _next_grade(self, p: Probs) -> Grade:
        cfg = self.config
        cur = self._grade
        upset = p.anxious + p.angry
        ca = p.angry >= (cfg.angry_exit if cur == "angry" else cfg.angry_enter)
        cu = upset >= (cfg.upset_exit if cur != "calm" else cfg.upset_enter)
        held_angry = self._held("angry", ca)
        held_upset = self._held("upset", cu)
        held_not_angry = self._held("not_angry", not ca)
        held_not_upset = self._held("not_upset", not cu)
        if cur != "angry" and ca and held_angry >= cfg.angry_dwell_s - _EPS:
            return "angry"
        if cur == "calm" and cu and held_upset >= cfg.anxious_dwell_s - _EPS:
            return "anxious"
        if cur == "angry" and not ca and held_not_angry >= cfg.exit_dwell_s - _EPS:
            return "anxious" if cu else "calm"
        if cur == "anxious" and not cu and held_not_upset >= cfg.exit_dwell_s - _EPS:
            return "calm"
        return cur

    def _should_emit(self, s: TrackerState) -> bool:
        cfg = self.config
        if self._last_emit_t is None or s.grade_changed:
            return True  # first update and grade changes go out at once
        since = s.t - self._last_emit_t
        if since >= cfg.emit_max_interval_s - _EPS:
            return True
        return since >= cfg.emit_min_interval_s - _EPS and abs(s.index - self._last_emit_index) >= cfg.emit_index_step - _EPS
