"""The system prompt never leaves: a per-process canary in it, and any run of NGRAM consecutive
words copied from the system text, are a leak.

Words are whitespace tokens, lowercased, with punctuation trimmed at both ends, so a model that
re-punctuates or re-cases the prompt is still caught; answers are compared by their word 8-grams
against the set of the system texts' 8-grams (a set lookup per word; a stream holds a word back
only while the words from it on could still become such a run).
"""

from __future__ import annotations

import secrets
import string
from collections.abc import Iterable

NGRAM = 8
# Trimmed from both ends of a word: ASCII punctuation and the quotes, dashes and brackets models use.
WORD_EDGES = string.punctuation + string.whitespace + "\u2018\u2019\u201c\u201d\u2013\u2014\u2026\u00ab\u00bb\u02c6"
REFUSAL = "I can't share my instructions. Ask me about this lead, our product, or to draft an email."


def new_canary() -> str:
    return "ivy-canary-" + secrets.token_hex(8)


def norm_word(token: str) -> str:
    return token.lower().strip(WORD_EDGES)


def words(text: str) -> list[str]:
    return [w for w in (norm_word(t) for t in text.split()) if w]


class LeakCheck:
    def __init__(self, system_texts: Iterable[str], canary: str) -> None:
        self.canary = canary
        grams: set[tuple[str, ...]] = set()
        for text in system_texts:
            ws = words(text)
            grams.update(tuple(ws[i:i + NGRAM]) for i in range(len(ws) - NGRAM + 1))
        self.grams = frozenset(grams)
        # Every proper prefix of a gram: a stream holds words back only while they could still
        # become a leaked run, so ordinary text is shown as it arrives.
        self.prefixes = frozenset(gram[:n] for gram in grams for n in range(1, NGRAM))

    def token_leaks(self, token: str) -> bool:
        return self.canary in token

    def leaks(self, text: str) -> bool:
        """Whole-text form (a draft field): the canary anywhere, or any 8-gram of the system text."""
        if self.canary in text:
            return True
        ws = words(text)
        return any(tuple(ws[i:i + NGRAM]) in self.grams for i in range(len(ws) - NGRAM + 1))
