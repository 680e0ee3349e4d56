"""Agent guidance cards per grade and language.

``GuidanceBook.load()`` reads emotion/data/guidance.toml (plus optional extra
files); ``book.card(grade, language)`` returns a :class:`GuidanceCard`.
``GuidanceEmitter`` (one per scored channel) turns tracker states into
:class:`Guidance` events: one when the grade changes (including the first
state) or the card language changes, never on ordinary updates.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from calltone.events import GRADES, Grade, Guidance, GuidanceCard

from .tracker import TrackerState

DEFAULT_GUIDANCE_PATH = Path(__file__).parent / "data" / "guidance.toml"


def language_key(language: str | None, default: str) -> str:
    """Map a call/transcript language to a card language: 'zh-CN', 'cmn', 'yue' -> 'zh'; 'en-US' -> 'en'."""
    if not language or language == "auto":
        return default
    lang = language.lower().replace("_", "-")
    if lang.startswith(("zh", "cmn", "yue", "wuu")):
        return "zh"
    return lang.split("-")[0]


class GuidanceBook:
    """All cards, keyed by (language, grade)."""

    def __init__(self, cards: dict[tuple[str, Grade], GuidanceCard], default_language: str = "zh") -> None:
        self.cards = dict(cards)
        self.default_language = default_language
        for lang in {k[0] for k in self.cards}:
            missing = [g for g in GRADES if (lang, g) not in self.cards]
            if missing:
                raise ValueError(f"guidance: language {lang!r} lacks cards for {missing}")
        if not any(k[0] == default_language for k in self.cards):
            raise ValueError(f"guidance: no cards for default language {default_language!r}")

    @classmethod
    def load(cls, extra: str | Path | Iterable[str | Path] | None = None, base: str | Path | None = DEFAULT_GUIDANCE_PATH) -> GuidanceBook:
        paths = [Path(base)] if base is not None else []
        if extra is not None:
            paths += [Path(extra)] if isinstance(extra, (str, Path)) else [Path(p) for p in extra]
        cards: dict[tuple[str, Grade], GuidanceCard] = {}
        default = "zh"
        for p in paths:
            if not p.is_file():
                raise FileNotFoundError(f"guidance file {p} not found")
            with p.open("rb") as f:
                data = tomllib.load(f)
            default = data.get("default_language", default)
            for lang, by_grade in data.get("cards", {}).items():
                for grade, c in by_grade.items():
                    if grade not in GRADES:
                        raise ValueError(f"guidance {p}: unknown grade {grade!r} for {lang!r}")
                    cards[(lang, grade)] = GuidanceCard(
                        grade=grade, language=lang, title=c["title"], steps=list(c["steps"]), phrases=list(c.get("phrases", []))
                    )
        return cls(cards, default)

    def languages(self) -> list[str]:
        return sorted({k[0] for k in self.cards})

    def card(self, grade: Grade, language: str | None = None) -> GuidanceCard:
        """The card for ``grade`` in ``language`` (the default language where there is none)."""
        lang = language_key(language, self.default_language)
        if (lang, grade) not in self.cards:
            lang = self.default_language
        return self.cards[(lang, grade)]


@dataclass
class GuidanceEmitter:
    """Per-channel: emits a Guidance event when the grade (or card language) changes.

    ``language`` is the call language ('zh', 'en' or 'auto'); pass a detected
    language to :meth:`update` (e.g. from the latest final transcript) to refine it.
    """

    book: GuidanceBook
    channel: str = "customer"
    call_id: str = ""
    language: str | None = "auto"
    _shown: tuple[Grade, str] | None = field(default=None, init=False, repr=False)

    def update(self, state: TrackerState, language: str | None = None) -> Guidance | None:
        if language and language != "auto":
            self.language = language
        card = self.book.card(state.grade, self.language)
        key = (card.grade, card.language)
        if key == self._shown:
            return None
        self._shown = key
        return Guidance(call_id=self.call_id, t=state.t, channel=self.channel, card=card)
