"""PII masking for transcripts, applied before anything is stored or published.

Detected: payment card numbers (13-19 digits, Luhn-valid; last 4 kept), Chinese
mobile numbers (1[3-9] + 9 digits, optional +86), international numbers written
with a leading ``+`` (8-15 digits) and North-American style ``(555) 123-4567``,
Chinese resident ID numbers (18 characters with a valid check digit) and e-mail
addresses.  Chinese numerals (零〇一二三四五六七八九, 幺 for 1) count as digits, since
Whisper writes them in Mandarin transcripts.

Masking is character for character (digits and letters become ``*``), so the
masked text has the same length and word timings stay valid: :func:`mask_words`
masks a number even when the recogniser split it over several words.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_CN_DIGITS = {"零": "0", "〇": "0", "一": "1", "幺": "1", "二": "2", "两": "2", "三": "3", "四": "4", "五": "5",
              "六": "6", "七": "7", "八": "8", "九": "9"}
_FULLWIDTH = {chr(0xFF10 + i): str(i) for i in range(10)}
_TRANS = str.maketrans({**_CN_DIGITS, **_FULLWIDTH})

_SEP = r"[ \-.]?"
_CARD_RE = re.compile(r"(?<!\d)\d(?:" + _SEP + r"\d){12,18}(?!\d)")
_CN_ID_RE = re.compile(r"(?<![\dXx])\d{6}" + r"(?:" + _SEP + r"?\d){11}" + _SEP + r"[\dXx](?![\dXx])")
_CN_MOBILE_RE = re.compile(r"(?<!\d)(?:(?:\+|00)?86[ \-]?)?1[3-9]\d(?:[ \-]?\d){8}(?!\d)")
_INTL_RE = re.compile(r"(?<![\w+])\+\d[\d \-().]{6,20}\d(?!\d)")
_NANP_RE = re.compile(r"(?<!\d)(?:\(\d{3}\)\s?|\d{3}[ \-.])\d{3}[ \-.]\d{4}(?!\d)")
_EMAIL_RE = re.compile(r"[A-Za-z0-9._%+\-]+\s?@\s?[A-Za-z0-9\-]+(?:\s?\.\s?[A-Za-z0-9\-]+)*\s?\.\s?[A-Za-z]{2,}")

_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def cn_id_ok(chars: str) -> bool:
    if len(chars) != 18 or not chars[:17].isdigit():
        return False
    s = sum(int(c) * w for c, w in zip(chars[:17], _ID_WEIGHTS))
    return _ID_CHECK[s % 11] == chars[17].upper()


@dataclass(frozen=True)
class Span:
    start: int
    end: int
    kind: str
    keep_last: int = 0  # trailing digits left visible


def _digits(s: str) -> str:
    return "".join(c for c in s if c.isdigit())


def find_pii(text: str) -> list[Span]:
    """Non-overlapping PII spans in ``text`` (by character offsets)."""
    norm = text.translate(_TRANS)
    spans: list[Span] = []
    for m in _EMAIL_RE.finditer(norm):
        spans.append(Span(m.start(), m.end(), "email"))
    for m in _CN_ID_RE.finditer(norm):
        chars = "".join(c for c in m.group() if c.isdigit() or c in "Xx")
        if cn_id_ok(chars):
            spans.append(Span(m.start(), m.end(), "cn_id"))
    for m in _CARD_RE.finditer(norm):
        d = _digits(m.group())
        if 13 <= len(d) <= 19 and luhn_ok(d):
            spans.append(Span(m.start(), m.end(), "card", keep_last=4))
    for m in _CN_MOBILE_RE.finditer(norm):
        spans.append(Span(m.start(), m.end(), "phone"))
    for m in _INTL_RE.finditer(norm):
        if 8 <= len(_digits(m.group())) <= 15:
            spans.append(Span(m.start(), m.end(), "phone"))
    for m in _NANP_RE.finditer(norm):
        spans.append(Span(m.start(), m.end(), "phone"))
    # keep the first (priority order above), drop later overlapping ones
    spans_sorted: list[Span] = []
    for sp in spans:
        if all(sp.end <= o.start or sp.start >= o.end for o in spans_sorted):
            spans_sorted.append(sp)
    return sorted(spans_sorted, key=lambda s: s.start)


def _mask_chars(chars: list[str], span: Span, norm: str) -> None:
    keep_from = span.end
    if span.keep_last:
        seen = 0
        for i in range(span.end - 1, span.start - 1, -1):
            if norm[i].isdigit():
                seen += 1
                if seen == span.keep_last:
                    keep_from = i
                    break
    for i in range(span.start, min(span.end, keep_from)):
        c = chars[i]
        if c.isalnum() or c in _CN_DIGITS:
            chars[i] = "*"


def mask_text(text: str) -> tuple[str, list[str]]:
    """``(masked text, kinds found)``; the text is unchanged when nothing is found."""
    if not text:
        return text, []
    spans = find_pii(text)
    if not spans:
        return text, []
    norm = text.translate(_TRANS)
    chars = list(text)
    for sp in spans:
        _mask_chars(chars, sp, norm)
    return "".join(chars), [s.kind for s in spans]


def mask_words(words: list[str]) -> list[str]:
    """Mask PII across a word list (joined without separators, as Whisper's words carry their spaces)."""
    joined = "".join(words)
    masked, kinds = mask_text(joined)
    if not kinds:
        return list(words)
    out, pos = [], 0
    for w in words:
        out.append(masked[pos : pos + len(w)])
        pos += len(w)
    return out


def mask_transcript(event) -> list[str]:
    """Mask a transcript event's text and words in place; returns the kinds of PII found in the text."""
    masked, kinds = mask_text(event.text)
    if kinds:
        event.text = masked
    if event.words:
        for w, text in zip(event.words, mask_words([w.word for w in event.words])):
            w.word = text
    return kinds
