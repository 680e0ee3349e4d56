"""Text cues: escalation and distress phrases in Mandarin and English.

``Lexicon.match(text)`` finds lexicon phrases in one utterance (Chinese on
characters, English on word boundaries, case-insensitive, with negation);
``RepeatDetector.add(t, text)`` flags a customer asking the same question again.
Both return :class:`PhraseMatch` objects, which fusion turns into evidence and
``PhraseMatch.to_cue()`` turns into a :class:`calltone.events.Cue`.

The phrases live in ``emotion/data/lexicon.toml``; users add their own with an
extra file of the same format (``Lexicon.load(extra=[path, ...])``).
"""

from __future__ import annotations

import difflib
import re
import tomllib
import unicodedata
from collections import deque
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Literal, Sequence

from calltone.events import GRADES, Cue, Grade

DEFAULT_LEXICON_PATH = Path(__file__).parent / "data" / "lexicon.toml"

PhraseLanguage = Literal["zh", "en"]

# Clause boundaries (after NFKC, so full-width punctuation is already ASCII).
_CLAUSE_CHARS = ",.!?;:。、…\n\r\t"
_CLAUSE_RE = f"[{re.escape(_CLAUSE_CHARS)}]"
_ZH_GAP = f"[^{re.escape(_CLAUSE_CHARS)}\\s]{{0,4}}?"
_EN_GAP = r"(?:\s+[\w']+){0,3}?\s+"


def _is_cjk(ch: str) -> bool:
    o = ord(ch)
    return (
        0x4E00 <= o <= 0x9FFF
        or 0x3400 <= o <= 0x4DBF
        or 0x20000 <= o <= 0x2A6DF
        or 0xF900 <= o <= 0xFAFF
        or 0x3000 <= o <= 0x303F and ch not in "。、"  # CJK symbols but not clause marks
    )


def _has_cjk(text: str) -> bool:
    return any(0x3400 <= ord(c) <= 0x9FFF or 0x20000 <= ord(c) <= 0x2A6DF for c in text)


@lru_cache(maxsize=1)
def _t2s():
    """Traditional -> simplified converter (OpenCC), or None where it is unavailable."""
    try:
        import opencc  # noqa: PLC0415

        return opencc.OpenCC("t2s")
    except Exception:  # pragma: no cover - opencc is a project dependency
        return None


def normalise(text: str) -> tuple[str, list[int]]:
    """Normalise ``text`` for matching and map every output character back.

    NFKC (full-width -> half-width), lower case, curly apostrophes -> ``'``,
    traditional -> simplified Chinese, whitespace between two CJK characters
    dropped.  Returns ``(normalised, index)`` where ``index[i]`` is the offset in
    ``text`` of normalised character ``i`` (``index`` has one extra entry,
    ``len(text)``, so spans map with ``index[start]``, ``index[end]``).
    """
    chars: list[str] = []
    index: list[int] = []
    for i, ch in enumerate(text):
        n = unicodedata.normalize("NFKC", ch).lower().replace("\u2019", "'").replace("\u2018", "'")
        for c in n:
            chars.append(c)
            index.append(i)
    norm = "".join(chars)
    conv = _t2s()
    if conv is not None and _has_cjk(norm):
        converted = conv.convert(norm)
        if len(converted) == len(norm):  # t2s is almost always 1:1; keep the map exact
            norm = converted
    # drop whitespace between two CJK characters ("找 你们 领导" -> "找你们领导")
    out: list[str] = []
    out_index: list[int] = []
    for k, c in enumerate(norm):
        if c.isspace() and out and _is_cjk(out[-1]):
            j = k + 1
            while j < len(norm) and norm[j].isspace():
                j += 1
            if j < len(norm) and _is_cjk(norm[j]):
                continue
        out.append(c)
        out_index.append(index[k])
    out_index.append(len(text))
    return "".join(out), out_index


def compact(text: str) -> str:
    """Normalised text with punctuation, symbols and spaces removed (for similarity)."""
    norm, _ = normalise(text)
    return "".join(c for c in norm if c.isalnum())


@dataclass(frozen=True)
class Category:
    name: str
    grade: Grade
    label: str


@dataclass(frozen=True)
class LexiconEntry:
    """One pattern of the lexicon."""

    pattern: str
    category: str
    weight: float
    language: PhraseLanguage
    label: str


@dataclass(frozen=True)
class PhraseMatch:
    """A lexicon phrase (or a repeated question) found in an utterance.

    ``span`` is ``(start, end)`` character offsets into the text that was matched;
    ``text`` is that slice.  ``negated`` matches are only returned on request and
    never count as evidence.
    """

    phrase: str
    category: str
    grade: Grade
    weight: float
    span: tuple[int, int]
    text: str
    language: PhraseLanguage
    label: str
    negated: bool = False
    t: float | None = None

    def to_cue(self) -> Cue:
        return Cue(name=f"phrase.{self.category}", label=self.label, value=self.weight, text=self.text)

    def at(self, t: float) -> PhraseMatch:
        """The same match stamped with call time ``t`` (end of the utterance)."""
        return replace(self, t=t)


@dataclass(frozen=True)
class NegationRules:
    window: int
    near_window: int
    negators: tuple[str, ...]
    near: tuple[str, ...]
    pseudo: tuple[str, ...]


@dataclass(frozen=True)
class RepeatConfig:
    enabled: bool = True
    category: str = "repeat_question"
    weight: float = 0.5
    max_weight: float = 1.0
    threshold: float = 0.75
    window_s: float = 180.0
    max_items: int = 20
    min_chars: int = 5
    questions_only: bool = True


@dataclass
class _Compiled:
    entry: LexiconEntry
    regex: re.Pattern[str]


def _compile(pattern: str, language: PhraseLanguage) -> re.Pattern[str]:
    norm, _ = normalise(pattern.strip())
    parts = [p.strip() for p in norm.split("*")]
    if language == "zh":
        body = _ZH_GAP.join("".join(re.escape(c) for c in p if not c.isspace()) for p in parts)
        return re.compile(body)

    def words(p: str) -> str:
        return r"\s+".join(re.escape(w).replace("'", "'?") for w in p.split())

    body = _EN_GAP.join(words(p) for p in parts if p)
    return re.compile(rf"(?<![\w']){body}(?![\w'])")


def _deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        if k == "entry":
            out["entry"] = list(out.get("entry", [])) + list(v)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


class Lexicon:
    """Phrase matcher.  Build with :meth:`load`; call :meth:`match` per utterance."""

    def __init__(
        self,
        categories: dict[str, Category],
        entries: Sequence[LexiconEntry],
        negation: dict[str, NegationRules],
        repeat: RepeatConfig = RepeatConfig(),
    ) -> None:
        for e in entries:
            if e.category not in categories:
                raise ValueError(f"lexicon entry {e.pattern!r}: unknown category {e.category!r}")
        self.categories = dict(categories)
        self.entries = list(entries)
        self.negation = dict(negation)
        self.repeat = repeat
        self._compiled = [_Compiled(e, _compile(e.pattern, e.language)) for e in self.entries]

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, extra: str | Path | Iterable[str | Path] | None = None, base: str | Path | None = DEFAULT_LEXICON_PATH) -> Lexicon:
        """Load the packaged lexicon (``base``; ``None`` for none) plus ``extra`` files.

        Extra files add categories and entries and may override ``[negation.*]``
        and ``[repeat]`` keys.
        """
        data: dict = {}
        paths: list[Path] = [Path(base)] if base is not None else []
        if extra is not None:
            paths += [Path(extra)] if isinstance(extra, (str, Path)) else [Path(p) for p in extra]
        for p in paths:
            if not p.is_file():
                raise FileNotFoundError(f"lexicon file {p} not found")
            with p.open("rb") as f:
                data = _deep_merge(data, tomllib.load(f))
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: dict) -> Lexicon:
        categories: dict[str, Category] = {}
        for name, c in data.get("categories", {}).items():
            grade = c.get("grade", "angry")
            if grade not in GRADES or grade == "calm":
                raise ValueError(f"lexicon category {name!r}: grade must be 'anxious' or 'angry', not {grade!r}")
            categories[name] = Category(name=name, grade=grade, label=c.get("label", name))
        entries: list[LexiconEntry] = []
        for e in data.get("entry", []):
            cat = e["category"]
            weight = float(e.get("weight", 0.5))
            if not 0.0 < weight <= 2.0:
                raise ValueError(f"lexicon entry in {cat!r}: weight {weight} outside (0, 2]")
            label = e.get("label") or (categories[cat].label if cat in categories else cat)
            for lang in ("zh", "en"):
                for pat in e.get(lang, []):
                    entries.append(LexiconEntry(pattern=pat, category=cat, weight=weight, language=lang, label=label))
        negation: dict[str, NegationRules] = {}
        for lang in ("zh", "en"):
            n = data.get("negation", {}).get(lang, {})
            negation[lang] = NegationRules(
                window=int(n.get("window", 5 if lang == "zh" else 3)),
                near_window=int(n.get("near_window", 2)),
                negators=tuple(normalise(x)[0] for x in n.get("negators", [])),
                near=tuple(normalise(x)[0] for x in n.get("near", [])),
                pseudo=tuple(normalise(x)[0] for x in n.get("pseudo", [])),
            )
        repeat = RepeatConfig(**data.get("repeat", {}))
        if repeat.enabled and repeat.category not in categories:
            categories[repeat.category] = Category(repeat.category, "anxious", "asked the same question again")
        return cls(categories, entries, negation, repeat)

    # ----------------------------------------------------------------- matching
    def match(self, text: str, include_negated: bool = False) -> list[PhraseMatch]:
        """Phrases in ``text``, left to right, non-overlapping.

        Where patterns overlap, the heavier (then longer) match wins.  Negated
        matches are dropped unless ``include_negated``.
        """
        if not text or not text.strip():
            return []
        norm, index = normalise(text)
        found: list[tuple[float, int, int, int, LexiconEntry]] = []
        for c in self._compiled:
            for m in c.regex.finditer(norm):
                if m.end() > m.start():
                    found.append((c.entry.weight, m.end() - m.start(), m.start(), m.end(), c.entry))
        found.sort(key=lambda x: (-x[0], -x[1], x[2]))
        taken: list[tuple[int, int]] = []
        out: list[PhraseMatch] = []
        for _, _, s, e, entry in found:
            if any(s < te and ts < e for ts, te in taken):
                continue
            taken.append((s, e))
            negated = self._negated(norm, s, entry.language)
            if negated and not include_negated:
                continue
            span = (index[s], index[e - 1] + 1)
            out.append(
                PhraseMatch(
                    phrase=entry.pattern,
                    category=entry.category,
                    grade=self.categories[entry.category].grade,
                    weight=entry.weight,
                    span=span,
                    text=text[span[0] : span[1]],
                    language=entry.language,
                    label=entry.label,
                    negated=negated,
                )
            )
        out.sort(key=lambda m: m.span)
        return out

    def _negated(self, norm: str, start: int, language: PhraseLanguage) -> bool:
        rules = self.negation.get(language)
        if rules is None:
            return False
        clause_start = 0
        for m in re.finditer(_CLAUSE_RE, norm[:start]):
            clause_start = m.end()
        prefix = norm[clause_start:start]
        # blank out negator look-alikes (不知道怎么办 is not a negation)
        for p in rules.pseudo:
            prefix = prefix.replace(p, "\x00" * len(p))
        if language == "zh":
            for negs, window in ((rules.negators, rules.window), (rules.near, rules.near_window)):
                tail = prefix[-window:] if window > 0 else ""
                if any(n and n in tail for n in negs):
                    return True
            return False
        tokens = re.findall(r"[\w'\x00]+", prefix)
        for negs, window in ((rules.negators, rules.window), (rules.near, rules.near_window)):
            tail = " ".join(tokens[-window:]) if window > 0 else ""
            tail_tokens = tail.split()
            for n in negs:
                n_tokens = n.split()
                k = len(n_tokens)
                if any(tail_tokens[i : i + k] == n_tokens for i in range(len(tail_tokens) - k + 1)):
                    return True
        return False


# --------------------------------------------------------- repeated questions
_ZH_QUESTION = ("吗", "呢", "什么", "怎么", "为什么", "为啥", "多久", "多少", "几", "哪", "是不是", "有没有", "能不能", "可不可以", "会不会", "要不要", "啥")
_EN_QUESTION_START = {
    "what", "when", "why", "how", "where", "who", "which", "whose", "can", "could", "will", "would",
    "is", "are", "do", "does", "did", "have", "has", "should", "shall", "may", "am",
}


def looks_like_question(text: str) -> bool:
    norm, _ = normalise(text)
    s = norm.strip()
    if not s:
        return False
    if s.endswith("?") or "?" in s:
        return True
    if _has_cjk(s):
        return any(q in s for q in _ZH_QUESTION)
    first = re.findall(r"[a-z']+", s)
    return bool(first) and first[0] in _EN_QUESTION_START


def _tokens(compacted: str) -> set[str]:
    """Word tokens for Latin text, character bigrams for Chinese (order-free comparison)."""
    out: set[str] = set()
    for run in re.findall(r"[\u3400-\u9fff]+|[^\u3400-\u9fff\s]+", compacted):
        if _has_cjk(run):
            out.update(run[i : i + 2] for i in range(max(1, len(run) - 1)))
        else:
            out.add(run)
    return out


def similarity(a: str, b: str) -> float:
    """Similarity in [0, 1] of two utterances (raw text).

    The larger of (1) difflib's ratio on the compacted text (punctuation and
    spaces removed) and (2) the overlap coefficient |A∩B| / min(|A|, |B|) of their
    token sets (English words, Chinese character bigrams), the latter counted
    only when the shorter set is at least half the longer, so "那我的退款什么时候能到"
    matches "什么时候能退款" but a two-word question is not "contained" in a speech.
    """
    ca, cb = compact(a), compact(b)
    if not ca or not cb:
        return 0.0
    ratio = difflib.SequenceMatcher(None, ca, cb, autojunk=False).ratio()
    na, _ = normalise(a)
    nb, _ = normalise(b)
    ta = _tokens(" ".join(re.findall(r"\w+", na)))
    tb = _tokens(" ".join(re.findall(r"\w+", nb)))
    if ta and tb:
        short, long_ = sorted((len(ta), len(tb)))
        if short * 2 >= long_:
            ratio = max(ratio, len(ta & tb) / short)
    return ratio


@dataclass
class _Asked:
    t: float
    text: str
    group: int  # askings of the same question share a group (chains count: A ~ B, B ~ C)


@dataclass
class RepeatDetector:
    """Per-speaker memory of recent customer finals; flags the same question asked again.

    Feed every customer final: ``match = detector.add(t, text)``.  Returns a
    :class:`PhraseMatch` (category ``config.category``, ``phrase`` = the earlier
    asking, weight growing with the number of askings up to ``max_weight``) or
    ``None``.
    """

    config: RepeatConfig = field(default_factory=RepeatConfig)
    grade: Grade = "anxious"
    label: str = "asked the same question again"
    _history: deque[_Asked] = field(default_factory=deque, init=False, repr=False)
    _next_group: int = field(default=0, init=False, repr=False)

    @classmethod
    def for_lexicon(cls, lexicon: Lexicon) -> RepeatDetector:
        cat = lexicon.categories.get(lexicon.repeat.category)
        return cls(
            config=lexicon.repeat,
            grade=cat.grade if cat else "anxious",
            label=cat.label if cat else "asked the same question again",
        )

    def add(self, t: float, text: str) -> PhraseMatch | None:
        cfg = self.config
        if not cfg.enabled:
            return None
        while self._history and t - self._history[0].t > cfg.window_s:
            self._history.popleft()
        c = compact(text)
        if len(c) < cfg.min_chars or (cfg.questions_only and not looks_like_question(text)):
            return None
        similar = [h for h in self._history if similarity(text, h.text) >= cfg.threshold]
        if similar:
            group = similar[-1].group
            times = 1 + sum(1 for h in self._history if h.group == group or h in similar)
        else:
            self._next_group += 1
            group, times = self._next_group, 1
        self._history.append(_Asked(t, text, group))
        while len(self._history) > cfg.max_items:
            self._history.popleft()
        if not similar:
            return None
        weight = min(cfg.max_weight, cfg.weight * (times - 1))
        nth = {2: "2nd", 3: "3rd"}.get(times, f"{times}th")
        return PhraseMatch(
            phrase=similar[-1].text,
            category=cfg.category,
            grade=self.grade,
            weight=weight,
            span=(0, len(text)),
            text=text,
            language="zh" if _has_cjk(text) else "en",
            label=f"{self.label} ({nth} time)",
            t=t,
        )

    def reset(self) -> None:
        self._history.clear()


@lru_cache(maxsize=1)
def default_lexicon() -> Lexicon:
    """The packaged lexicon (cached)."""
    return Lexicon.load()
