"""Text normalisation shared by the intent rules and the retriever.

Text is folded (case, accents, curly quotes), tokenised, shorthand and common typos mapped to
their word, and misspellings of the few words the rules hinge on corrected by edit distance 1,
so "drfat a folow up emial" reads as "draft a followup email". The word lists it reads are in
`lexicon.py`.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

from app.intent.lexicon import (
    BIGRAMS,
    CONTRACTIONS,
    FORMS,
    FUZZY_TARGETS,
    KNOWN,
    SHORT_HINGES,
    SHORT_REAL_WORDS,
    SHORTHAND,
)

_FOLD_QUOTES = str.maketrans({"’": "'", "‘": "'", "`": "'", "´": "'"})
_TOKEN = re.compile(r"[a-z0-9$]+(?:['/-][a-z0-9]+)*")
_CLAUSE_BREAK = re.compile(r"[?!;,\n]+|\.(?:\s|$)+")


def _fold(text: str) -> str:
    text = unicodedata.normalize("NFKD", text.translate(_FOLD_QUOTES).lower())
    return "".join(ch for ch in text if not unicodedata.combining(ch))


def _deletes(word: str) -> set[str]:
    return {word[:i] + word[i + 1:] for i in range(len(word))}


def _osa_distance(a: str, b: str) -> int:
    """Optimal-string-alignment distance: insertions, deletions, substitutions, adjacent swaps."""
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        prev2, prev = prev, cur
    return prev[-1]


def _build_delete_index(words: frozenset[str]) -> dict[str, frozenset[str]]:
    index: dict[str, set[str]] = {}
    for word in words:
        for key in {word, *_deletes(word)}:
            index.setdefault(key, set()).add(word)
    return {k: frozenset(v) for k, v in index.items()}


_DELETE_INDEX = _build_delete_index(FUZZY_TARGETS)


def _short_slips() -> dict[str, str]:
    """Four-letter slips of the short hinge words: swapped letters of a four-letter one ("sned"),
    a letter missing from a five-letter one ("drft"); real words and known words are left alone."""
    slips: dict[str, str] = {}
    for word in SHORT_HINGES:
        if len(word) == 4:
            found = {word[:i] + word[i + 1] + word[i] + word[i + 2:] for i in range(3)}
        else:
            found = {s for s in _deletes(word) if len(s) == 4}
        slips.update({s: word for s in found if s != word and s not in SHORT_REAL_WORDS and s not in KNOWN})
    return slips


_SHORT_SLIPS = _short_slips()


@lru_cache(maxsize=8192)
def _canonical(word: str) -> str:
    word = SHORTHAND.get(word, word)
    if "'" in word:
        word = CONTRACTIONS.get(word) or (word[:-2] if word.endswith("'s") else word.replace("'", ""))
    if "-" in word or "/" in word:
        joined = word.replace("-", "").replace("/", "")
        word = SHORTHAND.get(joined, joined) if "-" in word else word
    word = FORMS.get(word, word)
    if len(word) == 4:
        return _SHORT_SLIPS.get(word, word)
    if len(word) >= 5 and word.isalpha() and word not in KNOWN:
        # SymSpell-style lookup (shared one-character deletes), confirmed by the real distance.
        candidates: set[str] = set(_DELETE_INDEX.get(word, ()))
        for key in _deletes(word):
            candidates |= _DELETE_INDEX.get(key, frozenset())
        close = sorted(c for c in candidates if abs(len(c) - len(word)) <= 1 and _osa_distance(word, c) == 1)
        if len(close) == 1:
            word = FORMS.get(close[0], close[0])
    return word


def _tokens(folded: str) -> list[str]:
    out: list[str] = []
    for raw in _TOKEN.findall(folded):
        word = _canonical(raw)
        if out and (out[-1], word) in BIGRAMS:
            out[-1] = BIGRAMS[(out[-1], word)]
        else:
            out.append(word)
    return out


def normalise(text: str) -> list[str]:
    """Lower-cased, accent-folded tokens with shorthand, typos and key phrases mapped to one word."""
    return _tokens(_fold(text))


def split_clauses(text: str) -> list[list[str]]:
    folded = _fold(text)
    return [t for part in _CLAUSE_BREAK.split(folded) if (t := _tokens(part))]


@dataclass(frozen=True, slots=True)
class Normalised:
    """A question normalised once, for every stage that reads it (the classifier's clauses; the
    retriever's and the cache key's tokens, which are the clauses' tokens in order)."""

    clauses: tuple[tuple[str, ...], ...]
    tokens: tuple[str, ...]


def read(text: str) -> Normalised:
    clauses = tuple(tuple(c) for c in split_clauses(text))
    return Normalised(clauses, tuple(t for clause in clauses for t in clause))

