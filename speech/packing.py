"""Packing short utterances of one channel into one decode (batch scoring).

Whisper's encoder cost is set by the window, not by the speech in it: a 2 s
utterance padded to a 10 s window costs as much as 5 s of speech would.  When a
recording is scored offline, the utterances of a channel that nobody needs an
embedding of (the agent's, by default) are concatenated with short silences into
one request of up to ``max_speech_s``, decoded once with word timings, and the words
are handed back to the utterance they fall in.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from calltone.events import Word
from calltone.speech.asr import SAMPLE_RATE, DecodeRequest, DecodeResult
from calltone.speech.guards import cut_repeated_phrase

GAP_S = 0.8  # silence between packed utterances


@dataclass(frozen=True)
class Pack:
    request: DecodeRequest  # the packed decode
    offsets: tuple[float, ...]  # where each utterance starts in it (seconds)
    durations: tuple[float, ...]


def fits(length_s: float, duration_s: float, max_speech_s: float) -> bool:
    """Whether an utterance of ``duration_s`` still joins a pack that holds ``length_s`` of audio."""
    return length_s + GAP_S + duration_s <= max_speech_s


def pack(requests: list[DecodeRequest], max_speech_s: float = 15.0) -> list[Pack]:
    """Consecutive requests (one channel's, in order) -> packs of at most ``max_speech_s`` of audio."""
    packs: list[Pack] = []
    group: list[DecodeRequest] = []
    length = 0.0
    for r in requests:
        d = len(r.audio) / SAMPLE_RATE
        if group and not fits(length, d, max_speech_s):
            packs.append(_join(group))
            group, length = [], 0.0
        length += (GAP_S if group else 0.0) + d
        group.append(r)
    if group:
        packs.append(_join(group))
    return packs


def _join(group: list[DecodeRequest]) -> Pack:
    gap = np.zeros(int(GAP_S * SAMPLE_RATE), np.float32)
    parts, offsets, durations, t = [], [], [], 0.0
    for i, r in enumerate(group):
        if i:
            parts.append(gap)
            t += GAP_S
        parts.append(r.audio.astype(np.float32, copy=False))
        offsets.append(t)
        durations.append(len(r.audio) / SAMPLE_RATE)
        t += durations[-1]
    first = group[0]
    request = replace(first, audio=np.concatenate(parts), word_timestamps=True, packable=False, packed_parts=len(group))
    return Pack(request, tuple(offsets), tuple(durations))


def unpack(p: Pack, result: DecodeResult, want_words: list[bool]) -> list[DecodeResult]:
    """Split a packed decode into one result per utterance: each word goes to the utterance
    its midpoint falls in (gaps split halfway)."""
    buckets: list[list[Word]] = [[] for _ in p.offsets]
    for w in result.words:
        mid = (w.start + w.end) / 2
        i = _utterance_at(p, mid)
        buckets[i].append(Word(word=w.word, start=round(max(0.0, w.start - p.offsets[i]), 3),
                               end=round(min(p.durations[i], max(0.0, w.end - p.offsets[i])), 3), probability=w.probability))
    out = []
    for words, want in zip(buckets, want_words):
        key = [w.word.strip(" .,!?;:。，！？、").lower() for w in words]
        words = words[: len(cut_repeated_phrase(key, min_period=4))]  # the hallucination guard, per utterance
        text = "".join(w.word for w in words).strip()
        out.append(DecodeResult(text=text, language=result.language, avg_logprob=result.avg_logprob,
                                no_speech_prob=result.no_speech_prob, compression_ratio=result.compression_ratio,
                                words=words if want else [], dropped=None if text else (result.dropped or "empty"),
                                window_s=result.window_s))
    return out


def looks_short(result: DecodeResult, duration_s: float) -> bool:
    """Whether an utterance's share of a packed decode looks like Whisper skipped it: nothing, or
    under one word (English) / two characters (Chinese) per two seconds of its audio."""
    if not result.text:
        return True
    han = sum("\u4e00" <= c <= "\u9fff" for c in result.text)
    units = han / 2 if han else len(result.text.split())
    return units < duration_s / 2 - 0.5


def _utterance_at(p: Pack, t: float) -> int:
    for i in range(len(p.offsets) - 1, -1, -1):
        if t >= p.offsets[i] - GAP_S / 2:
            return i
    return 0
