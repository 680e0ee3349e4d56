"""Supervisor-escalation (barge-in) policy for one channel.

``EscalationPolicy.update(state, phrases, text)`` is called after every tracker
update with the tracker's :class:`TrackerState`, the phrase matches of any new
final transcript and that transcript's text; it returns the
:class:`EscalationRaised` / :class:`EscalationCleared` events to send (usually
none).  ``tick(t)`` re-checks the time-based clearing rule when no update
arrives; ``close(t)`` clears an active alert when the call ends.

Rules (all numbers in emotion/data/escalation.toml, see docs/emotion.md):

* ``angry_confirmed`` -- grade angry with p(angry) >= ``min_p_angry``, or ``count`` angry
                         updates within ``window_s``;
* ``phrase``          -- an escalation-category phrase while anxious/angry;
* ``angry_sustained`` -- (off by default) grade angry for ``min_s`` seconds;
* ``index_rise``      -- (off by default) index up ``points`` within ``window_s``, now >=
                         ``min_index`` and held there for ``hold_s``;

one active alert per channel, ``cooldown_s`` between raises, cleared after
``clear.calm_s`` seconds calm.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from pydantic import BaseModel, ConfigDict, Field

from calltone.events import ClearCode, Cue, EscalationCleared, EscalationRaised, Grade, RaiseCode

from .fusion import TomlConfig
from .lexicon import PhraseMatch
from .tracker import TrackerState, cue_strength

DEFAULT_ESCALATION_PATH = Path(__file__).parent / "data" / "escalation.toml"
_EPS = 1e-9


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AngryConfirmedRule(_Section):
    """The caller sounds angry and it is confirmed: one utterance read angry with smoothed p(angry) >= min_p_angry,
    or ``count`` updates read angry within ``window_s`` (the voice may read anxious in between)."""

    enabled: bool = True
    min_p_angry: float = Field(0.8, ge=0.0, le=1.0)
    count: int = Field(3, ge=1)
    window_s: float = Field(30.0, gt=0.0)


class AngrySustainedRule(_Section):
    enabled: bool = False  # off by default: see emotion/data/escalation.toml
    min_s: float = Field(3.0, ge=0.0)


class IndexRiseRule(_Section):
    enabled: bool = False  # off by default: see emotion/data/escalation.toml
    points: float = Field(20.0, gt=0.0)
    window_s: float = Field(20.0, gt=0.0)
    min_index: float = Field(65.0, ge=0.0, le=100.0)
    hold_s: float = Field(0.0, ge=0.0, description="the index must have stayed >= min_index this long (raise it to ignore short outbursts)")


class PhraseRule(_Section):
    enabled: bool = True
    categories: tuple[str, ...] = ("escalation", "churn")
    while_grades: tuple[Grade, ...] = ("anxious", "angry")
    memory_s: float = Field(10.0, ge=0.0)


class ClearRule(_Section):
    calm_s: float = Field(20.0, ge=0.0)
    grades: tuple[Grade, ...] = ("calm",)


class EvidenceConfig(_Section):
    history_s: float = Field(30.0, gt=0.0)
    max_points: int = Field(16, ge=2)
    top_cues: int = Field(5, ge=0)
    words_s: float = Field(30.0, ge=0.0)


class EscalationConfig(TomlConfig):
    score_agent: bool = Field(False, description="track and escalate the agent channel too (opt-in)")
    cooldown_s: float = Field(60.0, ge=0.0)
    angry_confirmed: AngryConfirmedRule = AngryConfirmedRule()
    angry_sustained: AngrySustainedRule = AngrySustainedRule()
    index_rise: IndexRiseRule = IndexRiseRule()
    phrase: PhraseRule = PhraseRule()
    clear: ClearRule = ClearRule()
    evidence: EvidenceConfig = EvidenceConfig()

    @classmethod
    def load(cls, path: str | Path | None = None) -> EscalationConfig:
        """emotion/data/escalation.toml, overridden key by key by ``path``."""
        return cls(**cls._read(DEFAULT_ESCALATION_PATH, path, None))

    def scores(self, channel: str) -> bool:
        """Whether ``channel`` is tracked/escalated: everything but ``agent``, which is opt-in."""
        return channel != "agent" or self.score_agent


@dataclass(frozen=True)
class _Firing:
    rule: RaiseCode
    figures: dict  # what the reason states (the event's reason_figures)
    detail: dict  # more evidence of the rule (times)

    @property
    def reason(self) -> str:
        return reason_text(self.rule, self.figures)


def whole(x: float) -> int:
    """A figure as people read it: the nearest whole number, halves up (as the pages round: JavaScript Math.round)."""
    return math.floor(x + 0.5)


def reason_text(code: RaiseCode | ClearCode, f: dict) -> str:
    """The legacy English sentence of a reason code and its figures (pages say it in the viewer's language)."""
    if code == "phrase":
        return f"caller said \u201c{f['phrase']}\u201d ({f['label']}) while {f['grade']}"
    if code == "angry_confirmed":
        return (f"caller angry {f['angry_updates']} times in {whole(f['window_s'])} s" if "angry_updates" in f
                else f"caller angry (p {whole(100 * f['p_angry'])} %)")
    if code == "angry_sustained":
        return f"caller angry for {whole(f['angry_s'])} s"
    if code == "index_rise":
        return f"emotion index rose {whole(f['rise'])} points in {whole(f['window_s'])} s to {whole(f['index'])}"
    if code == "calm":
        return f"caller {f['grade']} for {whole(f['calm_s'])} s"
    return "call ended"


@dataclass
class EscalationPolicy:
    """Escalation state for one channel of one call; see the module docstring."""

    channel: str = "customer"
    call_id: str = ""
    config: EscalationConfig = field(default_factory=EscalationConfig)

    _index: deque[tuple[float, float]] = field(default_factory=deque, init=False, repr=False)
    _grades: deque[tuple[float, Grade]] = field(default_factory=deque, init=False, repr=False)
    _cues: deque[tuple[float, Cue]] = field(default_factory=deque, init=False, repr=False)
    _phrases: deque[PhraseMatch] = field(default_factory=deque, init=False, repr=False)
    _words: deque[tuple[float, str]] = field(default_factory=deque, init=False, repr=False)
    _angry: deque[float] = field(default_factory=deque, init=False, repr=False)  # times of updates graded angry
    _last: TrackerState | None = field(default=None, init=False, repr=False)
    _active: str | None = field(default=None, init=False, repr=False)
    _active_since: float | None = field(default=None, init=False, repr=False)
    _last_raise_t: float | None = field(default=None, init=False, repr=False)
    _count: int = field(default=0, init=False, repr=False)

    @property
    def enabled(self) -> bool:
        return self.config.scores(self.channel)

    @property
    def active_alert(self) -> str | None:
        """Id of the alert raised and not yet cleared, if any."""
        return self._active

    # ------------------------------------------------------------------ driving
    def update(
        self,
        state: TrackerState,
        phrases: Sequence[PhraseMatch] = (),
        text: str | None = None,
    ) -> list[EscalationRaised | EscalationCleared]:
        """Observe one tracker state (+ new phrase matches / final text); return events to send."""
        if not self.enabled:
            return []
        t = state.t
        self._observe(state, phrases, text)
        out: list[EscalationRaised | EscalationCleared] = []
        cleared = self._check_clear(t)
        if cleared is not None:
            out.append(cleared)
        if self._active is None and not self._cooling(t):
            firings = self._fire(state)
            if firings:
                out.append(self._raise(state, firings))
        return out

    def tick(self, t: float) -> list[EscalationCleared]:
        """Re-check clearing at call time ``t`` without a new update (e.g. once a second)."""
        if not self.enabled:
            return []
        c = self._check_clear(t)
        return [c] if c is not None else []

    def close(self, t: float) -> list[EscalationCleared]:
        """Clear any active alert: the call is over."""
        if self._active is None:
            return []
        ev = EscalationCleared(call_id=self.call_id, t=t, channel=self.channel, alert_id=self._active,
                               reason=reason_text("call_ended", {}), reason_code="call_ended")
        self._active = self._active_since = None
        return [ev]

    # --------------------------------------------------------------- internals
    def _observe(self, state: TrackerState, phrases: Sequence[PhraseMatch], text: str | None) -> None:
        t = state.t
        ev = self.config.evidence
        keep = max(ev.history_s, self.config.index_rise.window_s, self.config.phrase.memory_s, ev.words_s)
        self._index.append((t, state.index))
        if not self._grades or self._grades[-1][1] != state.grade:
            self._grades.append((state.grade_since if state.grade_changed else t, state.grade))
        for c in state.cues:
            self._cues.append((t, c))
        for p in phrases:
            if not p.negated:
                self._phrases.append(p if p.t is not None else p.at(t))
        if text:
            self._words.append((t, text))
        if state.grade == "angry" and (not self._angry or t > self._angry[-1] + _EPS):
            self._angry.append(t)  # one per tracker update: a state re-observed for a short utterance's words is not new
        while self._angry and t - self._angry[0] > self.config.angry_confirmed.window_s + _EPS:
            self._angry.popleft()
        for dq in (self._index, self._cues, self._words):
            while dq and t - dq[0][0] > keep:
                dq.popleft()
        while len(self._grades) > 1 and t - self._grades[1][0] > keep:
            self._grades.popleft()  # keep the run that was current at the window start
        while self._phrases and t - (self._phrases[0].t or 0.0) > keep:
            self._phrases.popleft()
        self._last = state

    def _cooling(self, t: float) -> bool:
        return self._last_raise_t is not None and t - self._last_raise_t < self.config.cooldown_s - _EPS

    def _fire(self, s: TrackerState) -> list[_Firing]:
        cfg = self.config
        out: list[_Firing] = []
        r = cfg.phrase
        if r.enabled and s.grade in r.while_grades:
            hits = [p for p in self._phrases if p.category in r.categories and 0.0 <= s.t - (p.t or 0.0) <= r.memory_s + _EPS]
            if hits:
                p = max(hits, key=lambda m: (m.weight, m.t or 0.0))
                out.append(
                    _Firing(
                        "phrase",
                        {"phrase": p.text, "category": p.category, "label": p.label, "grade": s.grade},
                        {"phrase_t": p.t},
                    )
                )
        r1 = cfg.angry_confirmed
        if r1.enabled and s.grade == "angry" and (s.probs.angry >= r1.min_p_angry - _EPS or len(self._angry) >= r1.count):
            # the figures state the condition that held: the confident update, else the count in the window
            counted = {} if s.probs.angry >= r1.min_p_angry - _EPS else {"angry_updates": len(self._angry),
                                                                          "window_s": round(s.t - self._angry[0], 1)}
            out.append(_Firing("angry_confirmed", {"p_angry": round(s.probs.angry, 2), **counted},
                               {"angry_since": s.grade_since}))
        r2 = cfg.angry_sustained
        if r2.enabled and s.grade == "angry":
            dur = s.t - s.grade_since
            if dur >= r2.min_s - _EPS:
                out.append(_Firing("angry_sustained", {"angry_s": round(dur, 1)}, {"angry_since": s.grade_since}))
        r3 = cfg.index_rise
        if r3.enabled and s.index >= r3.min_index - _EPS:
            window = [(t, i) for t, i in self._index if s.t - t <= r3.window_s + _EPS]
            t0, low = min(window, key=lambda x: (x[1], -x[0]))
            rise = s.index - low
            # held: every sample of the last hold_s seconds at/above min_index, back to a sample that old
            recent = [(t, i) for t, i in self._index if s.t - t <= r3.hold_s + _EPS]
            held = recent[0][0] <= s.t - r3.hold_s + _EPS and all(i >= r3.min_index - _EPS for _, i in recent)
            if rise >= r3.points - _EPS and held:
                out.append(
                    _Firing(
                        "index_rise",
                        {"rise": round(rise, 1), "window_s": round(s.t - t0, 1), "index": round(s.index, 1),
                         "from_index": round(low, 1)},
                        {"from_t": t0},
                    )
                )
        return out

    def _raise(self, s: TrackerState, firings: list[_Firing]) -> EscalationRaised:
        self._count += 1
        alert_id = f"{self.call_id or 'call'}:{self.channel}:esc{self._count}"
        self._active, self._active_since, self._last_raise_t = alert_id, s.t, s.t
        main = firings[0]
        return EscalationRaised(
            call_id=self.call_id,
            t=s.t,
            channel=self.channel,
            alert_id=alert_id,
            reason=main.reason,
            reason_code=main.rule,
            reason_figures=main.figures,
            evidence=self._evidence(s, firings),
        )

    def _evidence(self, s: TrackerState, firings: list[_Firing]) -> dict:
        ev = self.config.evidence
        since = s.t - ev.history_s
        points = [(t, i) for t, i in self._index if t >= since - _EPS]
        if len(points) > ev.max_points:  # thin evenly, always keeping the newest
            step = (len(points) - 1) / (ev.max_points - 1)
            points = [points[round(k * step)] for k in range(ev.max_points)]
        best: dict[str, tuple[float, Cue]] = {}
        for t, c in self._cues:
            if t >= since - _EPS and (c.name not in best or cue_strength(c) > best[c.name][0]):
                best[c.name] = (cue_strength(c), c)
        cues = [c.model_dump(exclude_none=True) for _, c in sorted(best.values(), key=lambda x: -x[0])[: ev.top_cues]]
        return {
            "rule": firings[0].rule,
            "rules": [{"rule": f.rule, "reason": f.reason, **f.figures, **f.detail} for f in firings],
            "grade": s.grade,
            "grade_since": s.grade_since,
            "probs": s.probs.model_dump(),
            "index": round(s.index, 1),
            "trend": round(s.trend, 1),
            "grades": [{"t": t, "grade": g} for t, g in self._grades],
            "index_history": [[round(t, 2), round(i, 1)] for t, i in points],
            "cues": cues,
            "phrases": [
                {"t": p.t, "text": p.text, "category": p.category, "label": p.label, "weight": p.weight}
                for p in self._phrases
                if (p.t or 0.0) >= since - _EPS
            ],
            "words": [{"t": t, "text": w} for t, w in self._words if t >= s.t - ev.words_s - _EPS],
        }

    def _check_clear(self, t: float) -> EscalationCleared | None:
        s = self._last
        if self._active is None or s is None:
            return None
        r = self.config.clear
        if s.grade in r.grades and t - max(s.grade_since, self._active_since or s.grade_since) >= r.calm_s - _EPS:
            figures = {"grade": s.grade, "calm_s": round(t - s.grade_since, 1)}
            ev = EscalationCleared(
                call_id=self.call_id,
                t=t,
                channel=self.channel,
                alert_id=self._active,
                reason=reason_text("calm", figures),
                reason_code="calm",
                reason_figures=figures,
            )
            self._active = self._active_since = None
            return ev
        return None
