"""Grading one speaker of a call: voice scores and text cues -> tracker -> events.

``EmotionModels`` is loaded once per process (ONNX classifiers, lexicon, configs,
guidance cards).  ``EmotionChannel`` is per scored speaker: it receives

* the speaker's speech as the transcriber decodes it (``score_voice``: the audio of
  the utterance so far, about once a second, and of each whole utterance), with the
  Whisper encoder embedding of that audio when one was computed, and
* each final transcript (``on_final``) for the phrase lexicon,

and emits ``emotion.update``, ``guidance``, ``escalation.raised`` and
``escalation.cleared`` events.  Feature extraction and ONNX inference run in the
CPU pool; the tracker, fusion and escalation logic are cheap and run on the loop.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from calltone.events import Cue, Event, Probs, TranscriptFinal
from calltone.settings import EmotionSettings

SAMPLE_RATE = 16000
VOICE_WINDOW_S = 6.0  # prosody looks at the last 6 s of the utterance
MIN_VOICE_S = 1.0  # pitch and rate statistics over less speech are noise


@dataclass
class EmotionModels:
    main: "EmotionClassifier"  # prosody + Whisper embedding
    prosody: "EmotionClassifier"  # the voice alone, when no embedding is available
    lexicon: "Lexicon"
    fusion: "FusionConfig"
    tracker: "TrackerConfig"
    escalation: "EscalationConfig"
    guidance: "GuidanceBook"

    @classmethod
    def load(cls, settings: EmotionSettings) -> "EmotionModels":
        from calltone.emotion.classifier import DEFAULT_MODEL, PROSODY_MODEL, EmotionClassifier
        from calltone.emotion.escalation import EscalationConfig
        from calltone.emotion.fusion import FusionConfig
        from calltone.emotion.guidance import GuidanceBook
        from calltone.emotion.lexicon import Lexicon
        from calltone.emotion.tracker import TrackerConfig

        escalation = EscalationConfig.load(settings.escalation_config)
        if settings.score_agent:  # the setting opts in; the escalation file may too
            escalation = escalation.model_copy(update={"score_agent": True})
        return cls(
            main=EmotionClassifier(settings.model_dir / DEFAULT_MODEL.name if settings.model_dir else DEFAULT_MODEL),
            prosody=EmotionClassifier(settings.model_dir / PROSODY_MODEL.name if settings.model_dir else PROSODY_MODEL),
            lexicon=Lexicon.load(settings.lexicon_extra or None),
            fusion=FusionConfig.load(),
            tracker=TrackerConfig.load(settings.tracking_config),
            escalation=escalation,
            guidance=GuidanceBook.load(settings.guidance_extra),
        )

    def scores(self, role: str) -> bool:
        return self.escalation.scores(role)


@dataclass
class VoiceScore:
    t: float
    probs: Probs
    cues: list[Cue]
    model: str


@dataclass
class GradeTime:
    """Seconds of speech spent in each grade, and the peaks (for call summaries)."""

    seconds: Counter = field(default_factory=Counter)
    peak_index: float = 0.0
    peak_grade: str = "calm"
    escalations: int = 0


_ORDER = {"calm": 0, "anxious": 1, "angry": 2}


class EmotionChannel:
    def __init__(self, call_id: str, channel: str, models: EmotionModels, cpu: Executor,
                 emit: Callable[[Event], None], language: Callable[[], str | None]) -> None:
        from calltone.emotion.escalation import EscalationPolicy
        from calltone.emotion.fusion import Fuser
        from calltone.emotion.guidance import GuidanceEmitter
        from calltone.emotion.lexicon import RepeatDetector
        from calltone.emotion.tracker import EmotionTracker

        self.call_id, self.channel = call_id, channel
        self.models, self.cpu, self.emit, self.language = models, cpu, emit, language
        self.baseline_main = models.main.new_baseline()
        self.baseline_prosody = models.prosody.new_baseline()
        self.repeat = RepeatDetector.for_lexicon(models.lexicon)
        self.fuser = Fuser(models.fusion)
        self.tracker = EmotionTracker(channel=channel, call_id=call_id, config=models.tracker)
        self.policy = EscalationPolicy(channel=channel, call_id=call_id, config=models.escalation)
        self.guide = GuidanceEmitter(models.guidance, channel=channel, call_id=call_id, language=language() or "auto")
        self._phrases: list = []
        self._text: str | None = None
        self._last_t = -1.0
        self._last_state_t: float | None = None
        self._last_grade = "calm"
        self._chain: asyncio.Future | None = None
        self.grades = GradeTime()

    # -- inputs ------------------------------------------------------------------------------
    def on_final(self, final: TranscriptFinal) -> None:
        """Text cues from a final transcript of this speaker."""
        matches = self.models.lexicon.match(final.text)
        rep = self.repeat.add(final.end, final.text)
        if rep is not None:
            matches.append(rep)
        matches = [m.at(final.end) for m in matches]
        self.fuser.add_text(final.end, matches)
        self._phrases.extend(matches)
        self._text = final.text

    def score_voice(self, audio: np.ndarray, start: float, end: float, embedding: np.ndarray | None, whole: bool) -> None:
        """Schedule scoring of speech heard from ``start`` to ``end`` (call time); results apply in order.
        (A :class:`calltone.speech.streaming.SpeechListener`.)"""
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self.cpu, self._score, audio, end, embedding, whole)
        previous = self._chain
        self._chain = asyncio.ensure_future(self._apply(future, previous))

    async def drain(self) -> None:
        if self._chain is not None:
            await self._chain

    def tick(self, t: float) -> None:
        for ev in self.policy.tick(t):
            self._send(ev)

    def close(self, t: float) -> None:
        for ev in self.policy.close(t, "call ended"):
            self._send(ev)

    # -- scoring (CPU pool) -----------------------------------------------------------------
    def _score(self, audio: np.ndarray, t_end: float, embedding: np.ndarray | None, whole: bool) -> VoiceScore | None:
        from calltone.emotion.features import extract_features

        window = audio[-int(VOICE_WINDOW_S * SAMPLE_RATE) :]
        if len(window) < int(MIN_VOICE_S * SAMPLE_RATE):
            return None
        features = extract_features(window, SAMPLE_RATE)
        if not np.any(features):
            return None
        if embedding is not None and embedding.shape[-1] != self.models.main.embedding_dim:
            embedding = None  # another Whisper size than the model was trained with (e.g. tiny.en): the voice alone
        if embedding is not None:
            clf, baseline, kind = self.models.main, self.baseline_main, "voice+embedding"
            probs = clf.predict_proba(features[None], baseline, embeddings=embedding[None])[0]
        else:
            clf, baseline, kind = self.models.prosody, self.baseline_prosody, "voice"
            probs = clf.predict_proba(features[None], baseline)[0]
        grade = ("calm", "anxious", "angry")[int(np.argmax(probs))]
        explained = (clf.explain(features, baseline, toward=grade)  # the cues that point to this score's grade
                     or clf.explain(features, baseline, min_z=0.5, toward=grade)
                     or clf.explain(features, baseline, min_z=0.0))  # always say why
        cues = [Cue(**{k: c[k] for k in ("name", "label", "value", "unit", "z") if k in c}) for c in explained]
        if whole:  # the speaker baseline learns from whole utterances (as in training), after scoring them
            self.baseline_main.update(features, embedding=embedding)
            self.baseline_prosody.update(features)
        return VoiceScore(t_end, Probs(calm=float(probs[0]), anxious=float(probs[1]), angry=float(probs[2])), cues, kind)

    async def _apply(self, future, previous) -> None:
        score: VoiceScore | None = await future
        if previous is not None:
            await previous
        if score is None or score.t < self._last_t:
            return
        self._last_t = score.t
        fused = self.fuser.fuse(score.t, score.probs, score.cues)
        state = self.tracker.update(score.t, fused.probs, fused.cues)
        self._account(state)
        if state.event is not None:
            self._send(state.event)
        guidance = self.guide.update(state, language=self.language())
        if guidance is not None:
            self._send(guidance)
        for ev in self.policy.update(state, self._phrases, self._text):
            self._send(ev)
        self._phrases, self._text = [], None

    def _account(self, state) -> None:
        if self._last_state_t is not None:
            self.grades.seconds[self._last_grade] += min(2.0, max(0.0, state.t - self._last_state_t))
        self._last_state_t, self._last_grade = state.t, state.grade
        if state.index > self.grades.peak_index:
            self.grades.peak_index = round(state.index, 1)
        if _ORDER[state.grade] > _ORDER[self.grades.peak_grade]:
            self.grades.peak_grade = state.grade

    def _send(self, event: Event) -> None:
        if event.type == "escalation.raised":
            self.grades.escalations += 1
        self.emit(event)

    def summary(self) -> dict:
        total = sum(self.grades.seconds.values())
        return {
            "grade_share": {g: round(self.grades.seconds[g] / total, 3) if total else 0.0 for g in ("calm", "anxious", "angry")},
            "peak_grade": self.grades.peak_grade,
            "peak_index": self.grades.peak_index,
            "escalations": self.grades.escalations,
        }
