"""Guards on a Whisper hypothesis, on its tokens or its text: loops cut, repeated phrases cut,
characters kept whole, and hypotheses that only copy what the decode was conditioned on (the
previous final, a prompt, hot-words) recognised.  ``speech/asr.py`` applies them to every decode."""

from __future__ import annotations

import zlib


def compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / max(1, len(zlib.compress(data)))


def cut_repetition(tokens: list[int], min_period: int = 1, max_period: int = 12, max_repeats: int = 3) -> list[int]:
    """Cut a trailing loop: a block of 1..12 tokens repeated more than ``max_repeats`` times."""
    n = len(tokens)
    for period in range(min_period, min(max_period, n // (max_repeats + 1)) + 1):
        block = tokens[n - period :]
        reps = 1
        i = n - 2 * period
        while i >= 0 and tokens[i : i + period] == block:
            reps += 1
            i -= period
        if reps > max_repeats:
            return tokens[: i + 2 * period]  # keep one copy of the repeated block
    return tokens


def cut_repeated_phrase(tokens: list, min_period: int = 5, max_period: int = 40) -> list:
    """Cut a phrase of 5+ tokens that comes back right after itself at the end (``A B C D E A B C D E A B``):
    Whisper's usual hallucination into the silence after short speech.  Keeps the first copy.
    A tail shorter than half the phrase (``... door. Dogs``) is left alone.  Works on any sequence
    (tokens here; words of each utterance of a packed decode in speech/packing.py)."""
    n = len(tokens)
    best = n
    for period in range(min_period, min(max_period, n - 2) + 1):
        i = n - period - 1
        while i >= 0 and tokens[i] == tokens[i + period]:
            i -= 1
        start = i + 1  # the suffix tokens[start:] repeats with this period
        if n - start >= period + max(2, period // 2):
            best = min(best, start + period)
    return tokens[:best]


def whole_characters(tok, tokens: list[int]) -> list[int]:
    """``tokens`` without the trailing ones that hold only part of a character.  Whisper's byte-level
    BPE spreads a character over several tokens (many Chinese ones over 2 or 3 of their 3 UTF-8 bytes), so
    a token list cut anywhere (the length budget, a repetition cut) can end inside one, and decoding
    it would end in U+FFFD.  Every decode's text and words come from the tokens kept here."""
    end = len(tokens)
    while end and tok.decode(tokens[:end]).endswith("\ufffd"):
        end -= 1
    return tokens[:end]


def repeats_prompt(text: str, prompt: str) -> bool:
    """Whether ``text`` is nothing but (a part of) ``prompt``, ignoring case, spaces and punctuation:
    what Whisper decodes from an unclear utterance when conditioned on the previous one's text."""
    said = _letters(text)
    return bool(said) and said in _letters(prompt)


def only_hotwords(text: str, hotwords: tuple[str, ...]) -> bool:
    """Whether ``text`` is nothing but hot-words (repeated or not): what Whisper reads from unclear audio
    when conditioned on them (``账单 账单 套餐 宽带`` from silence)."""
    said = _letters(text)
    for word in sorted((_letters(w) for w in hotwords), key=len, reverse=True):
        if word:
            said = said.replace(word, "")
    return bool(hotwords) and bool(_letters(text)) and not said


def _letters(text: str) -> str:
    return "".join(c for c in text.casefold() if c.isalnum())
