"""Fusion of voice probabilities with text cues (log-linear, capped).

For one speaker at call time ``t``::

    l_g   = ln(max(p_voice[g], prob_floor))                  g in {calm, anxious, angry}
    E_g   = min(max_boost, sum_i w_i * 2 ** (-(t - t_i) / text_half_life_s))
            over the non-negated phrase matches i for grade g heard in the last text_memory_s
    p[g]  = softmax_g(l_g + E_g)                             (E_calm = 0)

Text can multiply the odds of anxious/angry against calm by at most
``exp(max_boost)`` (4.5x at the default 1.5), so it pushes a borderline voice over
but never turns a confidently calm voice angry.  With no text the result is the
voice probabilities unchanged; with no voice (``voice=None``) ``voice_prior``
stands in for it.  docs/emotion.md has the derivation and the config keys.
"""

from __future__ import annotations

import math
import tomllib
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field

from calltone.events import GRADES, Cue, Grade, Probs

from .lexicon import PhraseMatch

DEFAULT_TRACKING_PATH = Path(__file__).parent / "data" / "tracking.toml"


def _deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class TomlConfig(BaseModel):
    """A config model read from one section of a packaged TOML file, optionally
    overridden key by key by a user file (same layout)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @classmethod
    def _read(cls, default_path: Path, path: str | Path | None, section: str | None) -> dict:
        data: dict = {}
        for p in [default_path] + ([Path(path)] if path is not None else []):
            if not p.is_file():
                raise FileNotFoundError(f"config file {p} not found")
            with p.open("rb") as f:
                raw = tomllib.load(f)
            data = _deep_merge(data, raw.get(section, {}) if section else raw)
        return data


class FusionConfig(TomlConfig):
    max_boost: float = Field(1.5, ge=0.0, description="cap (nats) on text evidence added to one grade's log-probability")
    text_half_life_s: float = Field(10.0, gt=0.0, description="a phrase's weight halves every this many seconds")
    text_memory_s: float = Field(30.0, ge=0.0, description="phrases older than this stop counting")
    prob_floor: float = Field(1e-3, gt=0.0, lt=0.1, description="voice probabilities are floored before the log")
    voice_prior: tuple[float, float, float] = Field(
        (0.8, 0.15, 0.05), description="calm, anxious, angry used when no voice probabilities are available"
    )

    @classmethod
    def load(cls, path: str | Path | None = None) -> FusionConfig:
        """``[fusion]`` of emotion/data/tracking.toml, overridden by ``path``."""
        return cls(**cls._read(DEFAULT_TRACKING_PATH, path, "fusion"))


def probs_vector(p: Probs) -> tuple[float, float, float]:
    return (p.calm, p.anxious, p.angry)


def normalised_probs(values: Sequence[float]) -> Probs:
    v = [max(0.0, float(x)) if math.isfinite(x) else 0.0 for x in values]
    s = sum(v)
    if s <= 0:
        v, s = [1.0, 0.0, 0.0], 1.0
    return Probs(calm=v[0] / s, anxious=v[1] / s, angry=v[2] / s)


def fuse_probs(voice: Probs | None, evidence: Mapping[Grade, float], config: FusionConfig = FusionConfig()) -> Probs:
    """The formula above for one instant: ``evidence`` is uncapped summed weight per grade."""
    base = probs_vector(voice) if voice is not None else config.voice_prior
    base_p = probs_vector(normalised_probs(base))
    logits = []
    for g, p in zip(GRADES, base_p):
        e = 0.0 if g == "calm" else min(config.max_boost, max(0.0, float(evidence.get(g, 0.0))))
        logits.append(math.log(max(p, config.prob_floor)) + e)
    m = max(logits)
    ex = [math.exp(x - m) for x in logits]
    return normalised_probs(ex)


@dataclass(frozen=True)
class FusedUpdate:
    """What fusion hands the tracker for one instant."""

    t: float
    probs: Probs
    voice: Probs | None
    evidence: dict[str, float]  # capped evidence per grade actually added (nats)
    cues: tuple[Cue, ...]  # voice cues, then the phrase cues still counting
    phrases: tuple[PhraseMatch, ...]  # phrase matches still counting


@dataclass
class Fuser:
    """Per-speaker fusion state: remembers recent phrase matches.

    Drive it with ``add_text(t, matches)`` whenever a final transcript is matched
    (``t`` = end of the utterance) and ``fuse(t, voice_probs, voice_cues)`` once
    per voice update; pass the result's ``t, probs, cues`` to the tracker.
    """

    config: FusionConfig = field(default_factory=FusionConfig)
    _phrases: deque[PhraseMatch] = field(default_factory=deque, init=False, repr=False)

    def add_text(self, t: float, matches: Iterable[PhraseMatch]) -> None:
        for m in matches:
            if not m.negated:
                self._phrases.append(m if m.t is not None else m.at(t))

    def active(self, t: float) -> list[PhraseMatch]:
        """Phrase matches that still count at ``t`` (also prunes old ones)."""
        mem = self.config.text_memory_s
        while self._phrases and t - (self._phrases[0].t or 0.0) > mem:
            self._phrases.popleft()
        return [m for m in self._phrases if 0.0 <= t - (m.t or 0.0) <= mem]

    def evidence(self, t: float) -> dict[str, float]:
        """Uncapped decayed weight per grade at ``t``."""
        ev = {g: 0.0 for g in GRADES}
        for m in self.active(t):
            ev[m.grade] += m.weight * 2.0 ** (-(t - (m.t or 0.0)) / self.config.text_half_life_s)
        return ev

    def fuse(self, t: float, voice: Probs | None, voice_cues: Sequence[Cue] = ()) -> FusedUpdate:
        ev = self.evidence(t)
        probs = fuse_probs(voice, ev, self.config)
        active = tuple(self.active(t))
        capped = {g: (0.0 if g == "calm" else min(self.config.max_boost, ev[g])) for g in GRADES}
        cues = tuple(voice_cues) + tuple(m.to_cue() for m in active)
        return FusedUpdate(t=t, probs=probs, voice=voice, evidence=capped, cues=cues, phrases=active)

    def reset(self) -> None:
        self._phrases.clear()
