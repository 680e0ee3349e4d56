"""Whisper decoding of short utterances, batched, on a shortened encoder window.

Whisper is trained on 30 s windows, and faster-whisper pads every decode to one, so
the encoder costs the same for a 2 s utterance as for a 30 s one.  CTranslate2's
encoder accepts fewer frames: here each utterance is padded only to the smallest
*window bucket* (10, 20 or 30 s by default) that leaves ``min_tail_s`` of silence
after the speech, which cuts the encoder cost of a typical utterance ~3-4x.
Requests that share a bucket are stacked and run through the encoder and the
decoder together.

Decoding never falls back to sampling at higher temperatures (that costs ~10x on
garbled audio); instead the output is bounded in length, repetition loops are cut,
and hypotheses that look like no speech are dropped.  Mandarin is converted to
simplified characters with OpenCC.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from calltone.events import Word
from calltone.speech.audio import SAMPLE_RATE
from calltone.speech.guards import (compression_ratio, cut_repeated_phrase, cut_repetition, only_hotwords, repeats_prompt,
                                    whole_characters)

FRAMES_PER_SECOND = 100  # log-mel frames
MAX_TOKENS = 448
EMBED_WINDOW_S = 10.0
MAX_CONTEXT = 64  # tokens of previous text (and, apart, of hot-words) a decode is conditioned on


@dataclass(frozen=True)
class DecodeOptions:
    beam_size: int = 1
    word_timestamps: bool = True
    window_buckets_s: tuple[float, ...] = (10.0, 20.0, 30.0)
    min_tail_s: float = 5.0
    tokens_per_second: float = 12.0  # output budget per second of audio (bounds loops)
    no_speech_threshold: float = 0.6
    logprob_threshold: float = -1.0
    compression_ratio_threshold: float = 2.4
    without_timestamps: bool = True  # False: decode with timestamp tokens, as faster-whisper's transcribe does
    hotwords: tuple[str, ...] = ()  # vocabulary every decode is conditioned on (before any other context)
    prompts: tuple[tuple[str, str], ...] = ()  # (language, text): the context of an utterance with no previous final
    languages: tuple[str, ...] = ()  # what language detection chooses among (the most likely of these); () = any

    def prompt_for(self, language: str | None) -> str:
        return dict(self.prompts).get(language, "") if language else ""


@dataclass(frozen=True)
class DecodeRequest:
    audio: np.ndarray  # 16 kHz mono float32, the utterance only
    language: str | None  # 'zh', 'en', ... or None to detect
    word_timestamps: bool = True
    beam_size: int = 1
    previous_text: str = ""  # the channel's last final, to condition on (context across utterances)
    embed: bool = False  # also return the pooled encoder output (the emotion classifier's voice embedding)
    embed_frames: bool = False  # and the encoder rows themselves (for embeddings of parts of the utterance)
    packed_parts: int = 1  # utterances joined into this request (speech/packing.py)
    language_group: str | None = None  # requests of one group (a call) in one batch share one language detection
    packable: bool = False  # may share one decode with the channel's neighbouring utterances (needs no embedding; speech/packing.py)
    lead_s: float = 0.0  # audio before the utterance at the start of ``audio``: decoded (a late VAD onset), but
    # words and the embedding start after it


@dataclass
class DecodeResult:
    text: str
    language: str
    avg_logprob: float
    no_speech_prob: float
    compression_ratio: float
    words: list[Word] = field(default_factory=list)
    dropped: str | None = None  # why the text was discarded (no speech, garbled), else None
    window_s: float = 0.0
    embedding: np.ndarray | None = None  # mean-pooled encoder output over the speech frames
    embedding_frames: np.ndarray | None = None  # the encoder rows pooled into ``embedding`` (20 ms each)
    embedding_offset_s: float = 0.0  # where those rows start in the utterance

    def embedding_between(self, start_s: float, end_s: float) -> np.ndarray | None:
        """The embedding of the utterance's first ``end_s`` seconds (as a partial decode at that
        point would pool it: its last 10 s), cut from this decode's encoder rows; None when the
        rows do not cover that span.  Batch scoring uses it instead of decoding partials."""
        if self.embedding_frames is None:
            return None
        lo = max(start_s, end_s - EMBED_WINDOW_S) - self.embedding_offset_s
        hi = end_s - self.embedding_offset_s
        if lo < -0.05 or hi <= lo:
            return None
        a, b = max(0, int(lo / 0.02)), min(len(self.embedding_frames), int(np.ceil(hi / 0.02)))
        return pool_frames(self.embedding_frames[a:b]) if b > a else None


def pool_frames(frames: np.ndarray) -> np.ndarray:
    """The voice embedding: mean and standard deviation of encoder rows."""
    return np.concatenate([frames.mean(0), frames.std(0)]).astype(np.float32)


@dataclass
class _Hypothesis:
    tokens: list[int]  # text tokens, cut (see _generate)
    text: str
    avg_logprob: float
    no_speech_prob: float


class WhisperEngine:
    """One Whisper model, loaded once; decodes batches of utterances (thread-confined)."""

    def __init__(self, model_dir: Path, multilingual: bool, compute_type: str = "int8", cpu_threads: int = 2,
                 device: str = "cpu") -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from faster_whisper import WhisperModel
        from faster_whisper.tokenizer import Tokenizer

        self.model_dir = Path(model_dir)
        self.multilingual = multilingual
        if compute_type == "auto":
            compute_type = "float16" if device == "cuda" else "int8"
        self.device = device
        self._fw = WhisperModel(str(model_dir), device=device, compute_type=compute_type, cpu_threads=cpu_threads,
                                local_files_only=True)
        self._ct2 = self._fw.model
        self._tokenizer_cls = Tokenizer
        self._tokenizers: dict[str, object] = {}
        self._features = self._fw.feature_extractor
        self._opencc = None

    # -- helpers -----------------------------------------------------------------------
    def tokenizer(self, language: str):
        if language not in self._tokenizers:
            self._tokenizers[language] = self._tokenizer_cls(
                self._fw.hf_tokenizer, self.multilingual, task="transcribe", language=language if self.multilingual else "en"
            )
        return self._tokenizers[language]

    def to_simplified(self, text: str) -> str:
        if self._opencc is None:
            import opencc

            self._opencc = opencc.OpenCC("t2s")
        return self._opencc.convert(text)

    def window_for(self, duration_s: float, options: DecodeOptions) -> float:
        for w in options.window_buckets_s:
            if duration_s + options.min_tail_s <= w:
                return w
        return options.window_buckets_s[-1]

    def features(self, audio: np.ndarray, window_s: float) -> np.ndarray:
        n = int(window_s * SAMPLE_RATE)
        audio = audio[:n]
        padded = np.zeros(n, dtype=np.float32)
        padded[: len(audio)] = audio
        feats = self._features(padded)
        return feats[:, : int(window_s * FRAMES_PER_SECOND)]

    def embedding(self, audio: np.ndarray, enc_row: np.ndarray | None = None, window_s: float = EMBED_WINDOW_S) -> np.ndarray:
        """Utterance embedding: mean and std of the encoder output over the frames that
        cover the speech, with the utterance padded to a 10 s window (as in training:
        ``models/training/embedding.py``)."""
        return pool_frames(self.embedding_rows(audio, enc_row, window_s))

    def embedding_rows(self, audio: np.ndarray, enc_row: np.ndarray | None = None, window_s: float = EMBED_WINDOW_S) -> np.ndarray:
        """The encoder rows (20 ms each) that :meth:`embedding` pools.  Reuses the decode's
        encoder output when the decode ran in a 10 s window; otherwise spends one 10 s
        encoder pass on the last 10 s of the utterance."""
        if enc_row is None or window_s != EMBED_WINDOW_S:
            audio = audio[-int(EMBED_WINDOW_S * SAMPLE_RATE) :]
            enc_row = np.asarray(self.encode(self.features(audio, EMBED_WINDOW_S)[None]))[0]
        n = max(1, min(enc_row.shape[0], int(np.ceil(min(len(audio) / SAMPLE_RATE, EMBED_WINDOW_S) / 0.02))))
        return enc_row[:n]

    def encode(self, feats: np.ndarray):
        """The encoder output of a batch of windows.  On the CPU one window at a time: the same output bit for bit,
        and a stack of 8 10 s windows cost ~1.5x the CPU per window of one (its attention matrices outgrow the
        cache; docs/benchmarks.md, "Batch scoring").  A GPU gets the whole batch."""
        import ctranslate2

        feats = np.ascontiguousarray(feats, dtype=np.float32)
        if self.device != "cpu" or len(feats) == 1:
            return self._ct2.encode(ctranslate2.StorageView.from_array(feats))
        rows = [np.asarray(self._ct2.encode(ctranslate2.StorageView.from_array(feats[i : i + 1]))) for i in range(len(feats))]
        return ctranslate2.StorageView.from_array(np.concatenate(rows))

    # -- public API --------------------------------------------------------------------
    def decode(self, requests: list[DecodeRequest], options: DecodeOptions = DecodeOptions()) -> list[DecodeResult]:
        """Decode utterances; requests sharing a window bucket run as one batch."""
        results: list[DecodeResult | None] = [None] * len(requests)
        groups: dict[tuple[float, int], list[int]] = {}
        for i, req in enumerate(requests):
            w = self.window_for(len(req.audio) / SAMPLE_RATE, options)
            has_context = bool(req.previous_text.strip() or options.prompt_for(req.language))
            groups.setdefault((w, req.beam_size, has_context), []).append(i)
        for (window, beam, _), idx in groups.items():
            batch = [requests[i] for i in idx]
            for i, res in zip(idx, self._decode_group(batch, window, beam, options)):
                results[i] = res
        return [r for r in results if r is not None]

    def _decode_group(self, batch: list[DecodeRequest], window: float, beam: int, options: DecodeOptions) -> list[DecodeResult]:
        import ctranslate2

        feats = np.stack([self.features(r.audio, window) for r in batch])
        enc = self.encode(feats)
        enc_np = np.asarray(enc)  # a view of the encoder output (language ids, alignment, embeddings)
        languages = self._languages(batch, enc_np, options.languages)
        hyps = self._generate(enc, batch, languages, beam, options, context=True)
        again = [k for k, (r, lang, h) in enumerate(zip(batch, languages, hyps)) if self._copies_prompt(r, lang, h, options)]
        if again:  # conditioned on the previous final, the decoder copied it (unclear audio): decode those without it
            sub = ctranslate2.StorageView.from_array(np.ascontiguousarray(enc_np[again]))
            redo = self._generate(sub, [batch[k] for k in again], [languages[k] for k in again], beam, options, context=False)
            for k, h in zip(again, redo):
                hyps[k] = h
        out = [self._result(lang, h, window, options) for lang, h in zip(languages, hyps)]
        align_jobs = [(k, h.tokens) for k, (r, h, res) in enumerate(zip(batch, hyps, out))
                      if not res.dropped and r.word_timestamps and options.word_timestamps]
        if align_jobs:
            self._align(enc_np, batch, languages, out, align_jobs)
        for r, res in zip(batch, out):
            if r.lead_s:
                res.words = [w.model_copy(update={"start": round(max(0.0, w.start - r.lead_s), 3),
                                                  "end": round(max(0.0, w.end - r.lead_s), 3)}) for w in res.words]
        if any(r.embed for r in batch):
            for k, r in enumerate(batch):
                if r.embed:
                    audio = r.audio[int(r.lead_s * SAMPLE_RATE) :]
                    rows = self.embedding_rows(audio, enc_np[k][int(r.lead_s / 0.02) :], window)
                    out[k].embedding = pool_frames(rows)
                    if r.embed_frames:
                        out[k].embedding_frames = np.array(rows, dtype=np.float32)
                        out[k].embedding_offset_s = max(0.0, len(audio) / SAMPLE_RATE - EMBED_WINDOW_S)
        for res in out:
            if res.language == "zh" and res.text:
                res.text = self.to_simplified(res.text)
                for w in res.words:
                    w.word = self.to_simplified(w.word)
        return out

    def _languages(self, batch: list[DecodeRequest], enc_np: np.ndarray, allowed: tuple[str, ...]) -> list[str]:
        """Each request's language: given, or detected from the encoder output (one detection pass; the most
        likely of ``allowed``, if any; requests of one language_group share the longest one's answer)."""
        import ctranslate2

        languages = [r.language if self.multilingual else "en" for r in batch]
        unknown = [k for k, lang in enumerate(languages) if lang is None]
        if unknown:
            leader: dict[object, int] = {}
            for k in unknown:
                key = batch[k].language_group or ("request", k)
                if key not in leader or len(batch[k].audio) > len(batch[leader[key]].audio):
                    leader[key] = k
            ks = list(leader.values())
            ranked = self._ct2.detect_language(ctranslate2.StorageView.from_array(np.ascontiguousarray(enc_np[ks])))
            found = {key: _most_likely(r, allowed) for key, r in zip(leader, ranked)}
            for k in unknown:
                languages[k] = found[batch[k].language_group or ("request", k)]
        return languages

    def _generate(self, enc, batch: list[DecodeRequest], languages: list[str], beam: int, options: DecodeOptions,
                  context: bool) -> list[_Hypothesis]:
        """Greedy/beam decoding of encoder output ``enc`` (one row per request), conditioned on each
        request's previous text when ``context``; loops and repeated phrases cut, whole characters kept."""
        # hot-words, then the previous final (or the language's prompt), that part cut to one length:
        # CTranslate2 needs <|startoftranscript|> at the same position in every prompt of a batch
        hot = self.tokenizer(languages[0]).encode(" " + " ".join(options.hotwords))[:MAX_CONTEXT] if context and options.hotwords else []
        contexts = [self.tokenizer(lang).encode(" " + text) if (text := self._context_text(r, options)) and context else []
                    for r, lang in zip(batch, languages)]
        keep = min(MAX_CONTEXT, min(len(c) for c in contexts))
        prompts, max_len = [], 0
        for r, lang, ctx in zip(batch, languages, contexts):
            tok = self.tokenizer(lang)
            ctx = hot + (ctx[len(ctx) - keep :] if keep else [])
            timestamps = [tok.no_timestamps] if options.without_timestamps else []
            prompts.append(([tok.sot_prev] + ctx if ctx else []) + list(tok.sot_sequence) + timestamps)
            budget = 8 + int(math.ceil(len(r.audio) / SAMPLE_RATE * options.tokens_per_second))
            max_len = max(max_len, len(prompts[-1]) + budget)
        gen = self._ct2.generate(enc, prompts, beam_size=beam, max_length=min(MAX_TOKENS, max_len), return_scores=True,
                                 return_no_speech_prob=True, suppress_blank=True, suppress_tokens=[-1])
        hyps = []
        for r, lang, g in zip(batch, languages, gen):
            tok = self.tokenizer(lang)
            tokens = cut_repetition([t for t in g.sequences_ids[0] if t < tok.eot])
            if r.packed_parts <= 1:  # in a packed decode a phrase may rightly come back in the next utterance
                tokens = cut_repeated_phrase(tokens)
            tokens = whole_characters(tok, tokens)  # the budget or a cut may have stopped inside a character
            seq_len = len(g.sequences_ids[0])
            avg_logprob = float(g.scores[0]) * seq_len / (seq_len + 1) if seq_len else -10.0
            hyps.append(_Hypothesis(tokens, tok.decode(tokens).strip(), avg_logprob, float(g.no_speech_prob)))
        return hyps

    @staticmethod
    def _context_text(request: DecodeRequest, options: DecodeOptions) -> str:
        """What a decode is conditioned on after the hot-words: the channel's previous final, else the prompt."""
        return request.previous_text.strip() or options.prompt_for(request.language)

    def _copies_prompt(self, request: DecodeRequest, language: str, hyp: _Hypothesis, options: DecodeOptions) -> bool:
        context = " ".join([*options.hotwords, self._context_text(request, options)]).strip()
        if not context:
            return False
        text = self.to_simplified(hyp.text) if language == "zh" else hyp.text  # finals (the prompts) are simplified
        return repeats_prompt(text, context) or only_hotwords(text, options.hotwords)

    @staticmethod
    def _result(language: str, hyp: _Hypothesis, window: float, options: DecodeOptions) -> DecodeResult:
        """The result of one hypothesis; its text dropped when it looks like no speech or a loop."""
        cr = compression_ratio(hyp.text) if hyp.text else 0.0
        res = DecodeResult(text=hyp.text, language=language, avg_logprob=hyp.avg_logprob, no_speech_prob=hyp.no_speech_prob,
                           compression_ratio=cr, window_s=window)
        if not hyp.text:
            res.dropped = "empty"
        elif res.no_speech_prob > options.no_speech_threshold and hyp.avg_logprob < options.logprob_threshold:
            res.dropped = "no speech"
        elif cr > options.compression_ratio_threshold:
            res.dropped = "garbled (repetitive)"
        if res.dropped:
            res.text = ""
        return res

    def _align(self, enc_np: np.ndarray, batch, languages, out, jobs) -> None:
        import ctranslate2

        by_lang: dict[str, list[tuple[int, list[int]]]] = {}
        for k, tokens in jobs:
            by_lang.setdefault(languages[k], []).append((k, tokens))
        for lang, items in by_lang.items():
            tok = self.tokenizer(lang)
            sub = ctranslate2.StorageView.from_array(np.ascontiguousarray(enc_np[[k for k, _ in items]]))
            num_frames = [min(enc_np.shape[1] * 2, int(len(batch[k].audio) / SAMPLE_RATE * FRAMES_PER_SECOND)) for k, _ in items]
            results = self._ct2.align(sub, tok.sot_sequence, [t for _, t in items], num_frames, median_filter_width=7)
            for (k, tokens), result in zip(items, results):
                out[k].words = _words_from_alignment(tok, tokens, result)


def _most_likely(ranked: list[tuple[str, float]], allowed: tuple[str, ...]) -> str:
    """The most likely language of a detection (``<|zh|>`` tokens, most likely first) among ``allowed``."""
    codes = [token[2:-2] for token, _ in ranked]
    return next((c for c in codes if c in allowed), codes[0]) if allowed else codes[0]


def _words_from_alignment(tok, tokens: list[int], result) -> list[Word]:
    """Word timings from a CTranslate2 alignment (as in faster-whisper's find_alignment)."""
    words, word_tokens = tok.split_to_word_tokens(tokens + [tok.eot])
    if len(word_tokens) <= 1:
        return []
    text_indices = np.array([p[0] for p in result.alignments])
    time_indices = np.array([p[1] for p in result.alignments])
    if len(text_indices) == 0:
        return []
    boundaries = np.pad(np.cumsum([len(t) for t in word_tokens[:-1]]), (1, 0))
    jumps = np.pad(np.diff(text_indices), (1, 0), constant_values=1).astype(bool)
    jump_times = time_indices[jumps] / 50.0  # encoder frames per second
    probs = result.text_token_probs
    out: list[Word] = []
    for w, i, j in zip(words[:-1] if words and words[-1] == "" else words, boundaries[:-1], boundaries[1:]):
        if j >= len(jump_times) or i >= len(jump_times):
            break
        if not w.strip():
            continue
        out.append(Word(word=w, start=round(float(jump_times[i]), 3), end=round(float(jump_times[j]), 3),
                        probability=round(float(np.mean(probs[i:j])), 3) if j > i else None))
    return out

