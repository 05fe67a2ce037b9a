"""The system prompt never leaves: a per-process canary in it, and any run of NGRAM consecutive
words copied from the system text, are a leak.

Words are the runs of letters and digits of the text's folded form (app/safety/text.py: NFKC,
invisible characters removed, look-alike letters folded, lower case), so a model that
re-punctuates, re-cases or re-spaces the prompt (hyphens, underscores, the datamark, no-break
spaces between words) is still caught. Answers are compared by their word 8-grams against the
set of the system texts' 8-grams; a stream holds a word back only while the words from it on
could still become such a run. The canary is caught the same way: its words run together (so
"IVY-CANARY-0A1B...", "i v y c a n a r y ..." and a zero-width character inside it all count).
"""

from __future__ import annotations

import itertools
import re
import secrets
from collections.abc import Iterable, Sequence

from app.safety.text import folded

NGRAM = 8
REFUSAL = "I can't share my instructions. Ask me about this lead, our product, or to draft an email."
_WORD = re.compile(r"[^\W_]+")
# The canary's random part alone counts too when it is long enough never to occur by chance.
_HEX_ALONE = 12


def new_canary() -> str:
    return "ivy-canary-" + secrets.token_hex(8)


# ASCII text: every character that is not a letter or a digit becomes a space, then one split
# (3x faster than the pattern, same words).
_ASCII_SEPARATORS = str.maketrans({c: " " for c in map(chr, range(128)) if not c.isalnum()})


def words(text: str) -> list[str]:
    if text.isascii():
        return text.lower().translate(_ASCII_SEPARATORS).split()
    return _WORD.findall(folded(text))


def ascii_words(lowered: str) -> list[str]:
    """`words` of ASCII text already in lower case."""
    return lowered.translate(_ASCII_SEPARATORS).split()


class LeakCheck:
    def __init__(self, system_texts: Iterable[str], canary: str) -> None:
        self.canary = canary
        parts = words(canary)
        joined = "".join(parts)
        alone = parts[-1] if len(parts) > 1 and len(parts[-1]) >= _HEX_ALONE else ""
        self.marks = tuple(m for m in (joined, alone) if m)
        # How much of the words seen before a piece to keep: a canary split across pieces still matches.
        self.overlap = max((len(m) for m in self.marks), default=1) - 1
        grams: set[tuple[str, ...]] = set()
        for text in system_texts:
            ws = words(text)
            grams.update(tuple(ws[i:i + NGRAM]) for i in range(len(ws) - NGRAM + 1))
        self.grams = frozenset(grams)
        # Every pair of adjacent words in a gram: text without one holds no gram (the cheap test first).
        self._pairs = frozenset(pair for gram in grams for pair in itertools.pairwise(gram))
        # Every proper prefix of a gram: a stream holds words back only while they could still
        # become a leaked run, so ordinary text is shown as it arrives.
        self.prefixes = frozenset(gram[:n] for gram in grams for n in range(1, NGRAM))

    def marked(self, joined: str) -> bool:
        """Does ``joined`` (words run together) hold the canary?"""
        return any(mark in joined for mark in self.marks)

    def repeats(self, ws: Sequence[str]) -> bool:
        """Are any NGRAM consecutive words of ``ws`` a run of the system text? (One C-level pass.)"""
        if len(ws) < NGRAM or self._pairs.isdisjoint(itertools.pairwise(ws)):
            return False
        return not self.grams.isdisjoint(zip(*(ws[i:] for i in range(NGRAM)), strict=False))

    def held(self, ws: Sequence[str]) -> int:
        """How many words at the end of ``ws`` could still begin a run: the longest such suffix."""
        prefixes = self.prefixes
        for n in range(min(NGRAM - 1, len(ws)), 0, -1):
            if tuple(ws[-n:]) in prefixes:
                return n
        return 0

    def leaks(self, text: str) -> bool:
        """Whole-text form (a draft field): the canary anywhere, or any 8-gram of the system text."""
        ws = words(text)
        return self.marked("".join(ws)) or self.repeats(ws)
