"""Grading one speaker of a call: voice scores and text cues -> tracker -> events.

``EmotionModels`` is loaded once per process (ONNX classifiers, lexicon, configs,
guidance cards).  ``EmotionChannel`` is per scored speaker: it receives

* the utterance so far, about once a second (``hear_so_far``: a
  :class:`~calltone.speech.utterance.SpeechSoFar`), and
* each finished utterance (``hear``: a :class:`~calltone.speech.utterance.Utterance`,
  with its final transcript when there is one),

each with the Whisper encoder embedding of its audio when one was computed.  An
utterance's text cues (the phrase lexicon, repeated questions) are taken at once; its
voice score follows, and the escalation policy gets what the utterance said together
with that score, stamped with the utterance's end.  It emits ``emotion.update``,
``guidance``, ``escalation.raised`` and ``escalation.cleared`` events.  Feature
extraction and ONNX inference run in the CPU pool; the tracker, fusion and escalation
logic are cheap and run on the loop.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Callable

import numpy as np

from calltone.emotion.classifier import DEFAULT_MODEL, PROSODY_MODEL, EmotionClassifier
from calltone.emotion.escalation import EscalationConfig, EscalationPolicy
from calltone.emotion.features import extract_features
from calltone.emotion.fusion import Fuser, FusionConfig
from calltone.emotion.guidance import GuidanceBook, GuidanceEmitter
from calltone.emotion.lexicon import Lexicon, RepeatDetector
from calltone.emotion.tracker import EmotionTracker, TrackerConfig
from calltone.events import GRADES, Cue, Event, Probs
from calltone.settings import EmotionSettings
from calltone.speech.audio import SAMPLE_RATE

if TYPE_CHECKING:
    from calltone.emotion.lexicon import PhraseMatch
    from calltone.speech.utterance import SpeechSoFar, Utterance

VOICE_WINDOW_S = 6.0  # prosody looks at the last 6 s of the utterance
MIN_VOICE_S = 1.0  # pitch and rate statistics over less speech are noise


@dataclass
class EmotionModels:
    main: EmotionClassifier  # prosody + Whisper embedding
    prosody: EmotionClassifier  # the voice alone, when no embedding is available
    lexicon: Lexicon
    fusion: FusionConfig
    tracker: TrackerConfig
    escalation: EscalationConfig
    guidance: GuidanceBook

    @classmethod
    def load(cls, settings: EmotionSettings) -> EmotionModels:
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


@dataclass(frozen=True)
class Said:
    """What one utterance said, stamped with its end: its phrase matches and its text."""

    t: float
    phrases: tuple[PhraseMatch, ...]
    text: str


@dataclass(frozen=True)
class _Heard:
    """One voice score to make: speech heard up to ``t``; for a whole utterance, what it said."""

    t: float
    embedding: np.ndarray | None
    whole: bool
    said: Said | None = None


def voice_features(audio: np.ndarray) -> np.ndarray | None:
    """Prosody features of the last VOICE_WINDOW_S of ``audio``; None when too short or silent to grade."""
    window = audio[-int(VOICE_WINDOW_S * SAMPLE_RATE) :]
    if len(window) < int(MIN_VOICE_S * SAMPLE_RATE):
        return None
    features = extract_features(window, SAMPLE_RATE)
    return features if np.any(features) else None


class EmotionChannel:
    def __init__(self, call_id: str, channel: str, models: EmotionModels, cpu: Executor,
                 emit: Callable[[Event], None], language: Callable[[], str | None]) -> None:
        self.call_id, self.channel = call_id, channel
        self.models, self.cpu, self.emit, self.language = models, cpu, emit, language
        self.baseline_main = models.main.new_baseline()
        self.baseline_prosody = models.prosody.new_baseline()
        self.repeat = RepeatDetector.for_lexicon(models.lexicon)
        self.fuser = Fuser(models.fusion)
        self.tracker = EmotionTracker(channel=channel, call_id=call_id, config=models.tracker)
        self.policy = EscalationPolicy(channel=channel, call_id=call_id, config=models.escalation)
        self.guide = GuidanceEmitter(models.guidance, channel=channel, call_id=call_id, language=language() or "auto")
        self._last_t = -1.0
        self._chain: asyncio.Future | None = None

    # -- inputs ------------------------------------------------------------------------------
    def hear_so_far(self, speech: SpeechSoFar) -> None:
        """The utterance so far (about once a second): its voice score, applied in order."""
        self._score_voice(speech.audio, _Heard(speech.end, speech.embedding, whole=False))

    def hear(self, utterance: Utterance) -> None:
        """A finished utterance: its text cues at once (fusion counts them from the utterance's end), then its
        voice score; what it said goes to the escalation policy with that score, at the utterance's time."""
        said = self._text_cues(utterance.end, utterance.text) if utterance.text else None
        self._score_voice(utterance.audio, _Heard(utterance.end, utterance.embedding, whole=True, said=said))

    async def drain(self) -> None:
        if self._chain is not None:
            await self._chain

    def tick(self, t: float) -> None:
        for ev in self.policy.tick(t):
            self._send(ev)

    def close(self, t: float) -> None:
        for ev in self.policy.close(t):
            self._send(ev)

    # -- text cues (on the loop: a lexicon lookup) ----------------------------------------------
    def _text_cues(self, t: float, text: str) -> Said:
        matches = self.models.lexicon.match(text)
        rep = self.repeat.add(t, text)
        if rep is not None:
            matches.append(rep)
        matches = [m.at(t) for m in matches]
        self.fuser.add_text(t, matches)
        return Said(t, tuple(matches), text)

    # -- voice scores (CPU pool) ------------------------------------------------------------------
    def _score_voice(self, audio: np.ndarray, heard: _Heard) -> None:
        """Features in the CPU pool at once (several may run in parallel); the score itself reads and updates
        the speaker baseline, so scores are made, and applied, in the order the speech was heard."""
        features = asyncio.get_running_loop().run_in_executor(self.cpu, voice_features, audio)
        previous = self._chain
        self._chain = asyncio.ensure_future(self._apply(features, previous, heard))

    def _classify(self, features: np.ndarray, heard: _Heard) -> VoiceScore:
        embedding = heard.embedding
        if embedding is not None and embedding.shape[-1] != self.models.main.embedding_dim:
            embedding = None  # another Whisper size than the model was trained with (e.g. tiny.en): the voice alone
        if embedding is not None:
            clf, baseline, kind = self.models.main, self.baseline_main, "voice+embedding"
            probs = clf.predict_proba(features[None], baseline, embeddings=embedding[None])[0]
        else:
            clf, baseline, kind = self.models.prosody, self.baseline_prosody, "voice"
            probs = clf.predict_proba(features[None], baseline)[0]
        grade = GRADES[int(np.argmax(probs))]
        explained = (clf.explain(features, baseline, toward=grade)  # the cues that point to this score's grade
                     or clf.explain(features, baseline, min_z=0.5, toward=grade)
                     or clf.explain(features, baseline, min_z=0.0))  # always say why
        cues = [Cue(**{k: c[k] for k in ("name", "label", "value", "unit", "z") if k in c}) for c in explained]
        if heard.whole:  # the speaker baseline learns from whole utterances (as in training), after scoring them
            self.baseline_main.update(features, embedding=embedding)
            self.baseline_prosody.update(features)
        return VoiceScore(heard.t, Probs(**{g: float(p) for g, p in zip(GRADES, probs)}), cues, kind)

    async def _apply(self, features_future: asyncio.Future, previous: asyncio.Future | None, heard: _Heard) -> None:
        features: np.ndarray | None = await features_future
        if previous is not None:
            await previous
        score = None
        if features is not None:
            score = await asyncio.get_running_loop().run_in_executor(self.cpu, self._classify, features, heard)
        if score is None or score.t < self._last_t:
            self._observe_said(heard.said)
            return
        self._last_t = score.t
        fused = self.fuser.fuse(score.t, score.probs, score.cues)
        state = self.tracker.update(score.t, fused.probs, fused.cues)
        if state.event is not None:
            self._send(state.event)
        guidance = self.guide.update(state, language=self.language())
        if guidance is not None:
            self._send(guidance)
        said = heard.said
        for ev in self.policy.update(state, said.phrases if said else (), said.text if said else None):
            self._send(ev)

    def _observe_said(self, said: Said | None) -> None:
        """An utterance whose own voice score does not count (too short or quiet to grade, or older than the
        update already applied): what it said still reaches the escalation policy now, with the tracker's
        latest state (no new voice evidence: no cues, nothing to emit)."""
        state = self.tracker.state
        if said is None or state is None:
            return
        state = replace(state, previous_grade=state.grade, cues=(), event=None)
        for ev in self.policy.update(state, said.phrases, said.text):
            self._send(ev)

    def _send(self, event: Event) -> None:
        self.emit(event)
