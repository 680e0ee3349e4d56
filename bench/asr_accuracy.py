"""Transcript accuracy side by side: faster-whisper's own ``transcribe`` and calltone's paths,
on the same clips, in one run (``python bench/asr.py cer``; docs/asr.md).

Clips: a seeded sample of CASIA Mandarin clips (both speakers, all emotions; the manifest's
text is the reference) and English clips with transcripts (RAVDESS lines, jfk.flac and both
channels of stereo_diarization.wav), each clean at 16 kHz and after an 8 kHz G.711 µ-law
round trip (soxr down, µ-law, soxr up: what a telephony stream reaches the ASR as).

Systems (every clip is decoded once per system, language given unless the system says so):

* ``fw greedy`` / ``fw greedy t=0`` / ``fw beam 5``: ``WhisperModel.transcribe`` with its own
  defaults (30 s window, timestamps, temperature fallback 0.0-1.0 unless t=0).
* ``calltone transcribe``: the real ``calltone transcribe`` path (``run_recording`` with
  ``LIVE.without_partials()``, the runtime's options, the whole clip pushed at once).
* ``live final``: what a live call does with the same clip: the VAD's utterances in order, each
  decoded as ``speech/streaming.py`` builds a final (word times, conditioned on the channel's
  previous final, which in real time is back before the next utterance ends) with the
  runtime's ``DecodeOptions``; the ablation rows change one thing of this.
* ``recording, packed`` / ``recording, graded``: the batch path (``run_recording`` with ``RECORDING``):
  without emotion the utterances of a clip are packed as the agent's are in ``calltone score``;
  with it the channel is the graded customer's (not packed; its CPU includes the grading).

CER (zh): OpenCC t2s on reference and hypothesis, punctuation and spaces removed; WER (en):
lowercase, punctuation removed.  Both corpus-level (jiwer).  CPU: process CPU seconds per clip.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import random
import resource
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import jiwer
import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SPEECH = SHARED / "data" / "speech"
CORPUS = SHARED / "data" / "emotion-speech"
STEREO_REF = {"customer": "He began a confused complaint against the wizard, who had vanished behind the curtain on the left.",
              "agent": "The horizon seems extremely distant."}
JFK_REF = "And so, my fellow Americans, ask not what your country can do for you, ask what you can do for your country."
PROMPT_ZH = "您好，欢迎致电客服中心，请问有什么可以帮您？"  # simplified Chinese, as a call opens
CALL_CENTRE_WORDS = ("退款", "账单", "套餐", "宽带", "投诉", "话费", "流量", "客服")  # vocabulary not in the clips
CASIA_NAMES = ("孙英", "苏梅", "国华", "大岳", "小宝", "十头峡")  # names in the CASIA sentences (a targeted list)


@dataclass(frozen=True)
class Clip:
    name: str
    language: str
    audio: np.ndarray  # 16 kHz mono float32
    reference: str


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# -- clips -----------------------------------------------------------------------------------
def mandarin_clips(n: int, seed: int) -> list[Clip]:
    import soundfile as sf

    rows = [r for r in csv.DictReader(open(CORPUS / "manifest.csv", encoding="utf-8")) if r["corpus"] == "casia"]
    chosen = random.Random(seed).sample(rows, n)
    return [Clip(r["path"], "zh", sf.read(CORPUS / r["path"], dtype="float32")[0], r["text"]) for r in chosen]


def english_clips(n: int, seed: int) -> list[Clip]:
    import soundfile as sf

    from calltone.speech.audio import load_recording

    rows = [r for r in csv.DictReader(open(CORPUS / "manifest.csv", encoding="utf-8")) if r["corpus"] == "ravdess"]
    chosen = random.Random(seed).sample(rows, n)
    clips = [Clip(r["path"], "en", sf.read(CORPUS / r["path"], dtype="float32")[0], r["text"]) for r in chosen]
    clips.append(Clip("jfk.flac", "en", load_recording(SPEECH / "jfk.flac", mono=True).channels["customer"], JFK_REF))
    stereo = load_recording(SPEECH / "stereo_diarization.wav").channels
    clips += [Clip(f"stereo_diarization.wav:{role}", "en", stereo[role], ref) for role, ref in STEREO_REF.items()]
    return clips


def telephony(audio: np.ndarray) -> np.ndarray:
    """16 kHz -> 8 kHz G.711 µ-law -> 16 kHz, as a telephony stream reaches the ASR."""
    import soxr

    from calltone.speech.g711 import G711_FLOAT, ulaw_encode

    narrow = soxr.resample(audio, 16000, 8000, quality="HQ")
    decoded = G711_FLOAT["mulaw"][np.frombuffer(ulaw_encode(narrow), dtype=np.uint8)]
    return soxr.resample(decoded, 8000, 16000, quality="HQ").astype(np.float32)


def in_condition(clips: list[Clip], condition: str) -> list[Clip]:
    return clips if condition == "clean" else [replace(c, audio=telephony(c.audio)) for c in clips]


# -- scoring ---------------------------------------------------------------------------------
_EN = jiwer.Compose([jiwer.ToLowerCase(), jiwer.RemovePunctuation(), jiwer.RemoveMultipleSpaces(), jiwer.Strip()])
_T2S = None


def normalise(text: str, language: str) -> str:
    global _T2S
    if language == "en":
        return _EN(text)
    if _T2S is None:
        import opencc

        _T2S = opencc.OpenCC("t2s")
    return "".join(c for c in _T2S.convert(text) if not c.isspace() and not unicodedata.category(c).startswith("P"))


def error_rate(clips: list[Clip], hyps: list[str]) -> float:
    refs = [normalise(c.reference, c.language) for c in clips]
    out = [normalise(h, c.language) for c, h in zip(clips, hyps)]
    if clips[0].language == "en":
        return jiwer.wer(refs, out)
    return jiwer.cer(refs, out)


# -- systems ---------------------------------------------------------------------------------
Transcriber = Callable[[Clip], str]


def faster_whisper(fw, beam_size: int, fallback: bool, **kw) -> Transcriber:
    def run(clip: Clip) -> str:
        temperature = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0) if fallback else 0.0
        segments, _ = fw.transcribe(clip.audio, language=clip.language, beam_size=beam_size, temperature=temperature, **kw)
        return _join([s.text for s in segments], clip.language)
    return run


def _join(texts: list[str], language: str) -> str:
    return ("" if language == "zh" else " ").join(t.strip() for t in texts)


class LiveFinals:
    """A live channel's finals for one clip: the VAD's utterances, each decoded as a final is in
    ``speech/streaming.py`` (from ``lead_s`` before the VAD onset, never before the previous utterance)."""

    def __init__(self, engine, vad_model, vad_settings, options, lead_s: float, beam_size: int = 1,
                 language_given: bool = True, context: bool = True, segment: bool = True, prime_s: float = 0.0) -> None:
        self.engine, self.vad_model, self.vad_settings = engine, vad_model, vad_settings
        self.options, self.lead_s, self.beam_size = options, lead_s, beam_size
        self.language_given, self.context, self.segment = language_given, context, segment
        self.prime_s = prime_s  # the VAD's state primed with this much silence before the clip

    def utterances(self, audio: np.ndarray) -> list[tuple[np.ndarray, float]]:
        """(audio to decode, lead) per utterance."""
        from calltone.speech.vad import CHUNK, StreamingVad

        if not self.segment:
            return [(audio, 0.0)]
        primer = int(self.prime_s * 16000) // CHUNK * CHUNK
        vad = StreamingVad(self.vad_settings, self.vad_model, t0=-primer / 16000)
        vad.feed(np.zeros(primer, np.float32))
        segments = vad.feed(audio) + vad.flush()
        ends = [0.0] + [s.end for s in segments]
        leads = [max(0.0, min(self.lead_s, s.start - before)) for before, s in zip(ends, segments)]
        return [(audio[int((s.start - lead) * 16000) : int(s.end * 16000)], lead) for s, lead in zip(segments, leads)]

    def __call__(self, clip: Clip) -> str:
        from calltone.speech.asr import DecodeRequest

        previous, texts = "", []
        for audio, lead in self.utterances(clip.audio):
            request = DecodeRequest(audio, clip.language if self.language_given else None, word_timestamps=True,
                                    beam_size=self.beam_size, previous_text=previous if self.context else "", lead_s=lead)
            result = self.engine.decode([request], self.options)[0]
            if result.text:
                texts.append(result.text)
                previous = result.text
        return _join(texts, clip.language)


def pipeline(runtime, policy, emotion: bool = False) -> Transcriber:
    """The clip as a one-channel recording through CallPipeline (the customer's role; with ``emotion``
    its voice is graded too, so its finals are not packed, and the CPU includes the grading)."""
    from calltone.events import TranscriptFinal
    from calltone.pipeline import PipelineOptions, run_recording

    def run(clip: Clip) -> str:
        options = PipelineOptions(language=clip.language, decode=policy, emotion=emotion,
                                  beam_size=runtime.settings.asr.offline_beam_size)
        events = asyncio.run(run_recording("cer", {"customer": clip.audio}, runtime, options, block_s=30.0))
        finals = sorted((e for e in events if isinstance(e, TranscriptFinal)), key=lambda e: e.start)
        return _join([e.text for e in finals], clip.language)
    return run


@contextlib.contextmanager
def no_loop_cuts() -> Iterator[None]:
    """Decoding without the repetition cuts (an ablation: the engine calls them by module name)."""
    from calltone.speech import asr

    saved = asr.cut_repetition, asr.cut_repeated_phrase
    asr.cut_repetition = asr.cut_repeated_phrase = lambda tokens, **_: tokens
    try:
        yield
    finally:
        asr.cut_repetition, asr.cut_repeated_phrase = saved


def noise_clips(language: str, seconds: float = 10.0) -> list[Clip]:
    """Silence, white line noise and mains hum (as tests/test_transcription.py makes them): no text allowed."""
    rng = np.random.default_rng(1)
    n = int(seconds * 16000)
    t = np.arange(n) / 16000
    audio = {"silence": np.zeros(n, np.float32), "line noise": rng.normal(0, 0.01, n).astype(np.float32),
             "hum": (0.05 * np.sin(2 * np.pi * 50 * t) + rng.normal(0, 0.003, n)).astype(np.float32)}
    return [Clip(name, language, a, "") for name, a in audio.items()]


def measure(name: str, run: Transcriber, clips: list[Clip], noises: list[Clip], patch=contextlib.nullcontext) -> dict:
    """Error rate, empty hypotheses and CPU per clip on ``clips``; noise clips that gave any text."""
    with patch():
        run(clips[0])  # warm up (first-call allocations, tokenizer, OpenCC)
        c0 = cpu_seconds()
        hyps = [run(c) for c in clips]
        cpu = cpu_seconds() - c0
        noise_texts = [t for t in map(run, noises) if normalise(t, clips[0].language)]
    empty = sum(1 for h in hyps if not normalise(h, clips[0].language))
    return dict(system=name, error=round(error_rate(clips, hyps), 4), empty=empty, cpu_ms=round(1000 * cpu / len(clips), 1),
                noise_texts=len(noise_texts), hyps=hyps + noise_texts)


# -- the run ---------------------------------------------------------------------------------
def systems(runtime, engine, vad_model) -> dict[str, tuple[Transcriber, object]]:
    """Every system by name: (transcriber, patch).  ``live final`` uses the runtime's options."""
    from calltone.speech.decoding import LIVE, RECORDING

    opts = runtime.asr.options
    vad = runtime.settings.vad
    lead = runtime.settings.asr.decode_lead_s

    def live(options=opts, vad=vad, lead_s=lead, **kw) -> LiveFinals:
        return LiveFinals(engine, vad_model, vad, options, lead_s, **kw)

    fw = engine._fw
    nul = contextlib.nullcontext
    return {
        "fw greedy": (faster_whisper(fw, 1, True), nul),
        "fw greedy t=0": (faster_whisper(fw, 1, False), nul),
        "fw beam 5": (faster_whisper(fw, 5, True), nul),
        "calltone transcribe": (pipeline(runtime, LIVE.without_partials()), nul),
        "recording, packed": (pipeline(runtime, RECORDING), nul),
        "recording, graded": (pipeline(runtime, RECORDING, emotion=True), nul),
        "live final": (live(), nul),
        "- no decode lead (before)": (live(lead_s=0.0), nul),
        "- 30 s window": (live(replace(opts, window_buckets_s=(30.0,))), nul),
        "- no token budget": (live(replace(opts, tokens_per_second=1000.0)), nul),
        "- no filters": (live(replace(opts, no_speech_threshold=2.0, compression_ratio_threshold=1e9)), nul),
        "- no loop cuts": (live(), no_loop_cuts),
        "- no context": (live(context=False), nul),
        "- language detected": (live(language_given=False), nul),
        "- timestamps": (live(replace(opts, without_timestamps=False)), nul),
        "- whole clip (no VAD)": (live(segment=False), nul),
        "+ VAD primed 0.5 s": (live(prime_s=0.5), nul),
        "+ VAD pad 300 ms": (live(vad=vad.model_copy(update={"speech_pad_ms": 300})), nul),
        "+ beam 5": (live(beam_size=5), nul),
        "+ primed, beam 5": (live(prime_s=0.5, beam_size=5), nul),
        "+ zh prompt": (live(replace(opts, prompts=(("zh", PROMPT_ZH),))), nul),
        "+ call-centre hot-words": (live(replace(opts, hotwords=CALL_CENTRE_WORDS)), nul),
        "+ names as hot-words": (live(replace(opts, hotwords=CASIA_NAMES)), nul),
    }


def run_cer(languages: list[str], conditions: list[str], n_zh: int, n_en: int, seed: int, only: list[str] | None,
            out: Callable[[dict], None]) -> None:
    from calltone.runtime import Runtime
    from calltone.settings import Settings

    settings = Settings()
    settings.asr.workers = 1  # the model in this process (its CPU is this process's), one thread as on a default node
    runtime = Runtime.create(settings)
    engine = runtime.asr.decoders[0]
    table = systems(runtime, engine, runtime.vad_model)
    try:
        for language in languages:
            base = mandarin_clips(n_zh, seed) if language == "zh" else english_clips(n_en, seed)
            for condition in conditions:
                clips = in_condition(base, condition)
                noises = in_condition(noise_clips(language), condition)
                for name, (run, patch) in table.items():
                    if only and name not in only:
                        continue
                    row = measure(name, run, clips, noises, patch)
                    out(dict(language=language, condition=condition, clips=len(clips), **row))
    finally:
        runtime.close()
