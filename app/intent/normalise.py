"""Text normalisation shared by the intent rules and the retriever.

Text is folded (case, accents, curly quotes), tokenised, shorthand and common typos mapped to
their word, and misspellings of the few words the rules hinge on corrected by edit distance 1,
so "drfat a folow up emial" reads as "draft a followup email". The word lists it reads are in
`lexicon.py`.

Its input is written by outsiders (a rep's query, a prospect's email), so its work is bounded
whatever the text: the caps below cut only text far beyond anything a rep or a CRM record holds.
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
_LETTERS = "abcdefghijklmnopqrstuvwxyz"  # tokens are ASCII: a typo is a slip within these

# Characters of one text read at all: above the query limit (8000), so a query is never cut; a
# longer note or email is indexed by its first 8 KiB.
MAX_TEXT_CHARS = 8192
# Folded characters kept: folding leaves ordinary text about as long, but NFKD expands a few
# characters up to eighteenfold (U+FDFA); the matchers scan no more than this.
MAX_FOLDED_CHARS = 2 * MAX_TEXT_CHARS
# Tokens of one text (a query or a passage): about a full 8 KiB of ordinary prose.
MAX_TOKENS = 2048
# No word longer than this is within one edit of a FUZZY_TARGETS word, so none is a typo of one.
MAX_FUZZY_WORD = max(map(len, FUZZY_TARGETS)) + 1
# Longer tokens are canonicalised uncached: the word cache must not hold 64 KiB keys.
MAX_CACHED_WORD = 32
# What one request reads of its CRM context (a JSON object up to the 64 KiB body limit), for the
# classifier's names and the retriever's index: values walked, and characters of text read.
# The eval's largest context has under 100 values and 1,000 characters.
MAX_CONTEXT_VALUES = 1000
MAX_CONTEXT_CHARS = 16_384


def _fold_table() -> dict[int, str | None]:
    """Each character's fold (NFKD, combining marks dropped, curly quotes straightened), for the
    characters it changes. Folding a text character by character is folding it whole: NFKD
    decomposes each character on its own and only reorders combining marks, which are all dropped.
    One `str.translate` then folds a text in C; a Python pass over the decomposed text cost 110 ms
    for 8,000 characters that NFKD expands eighteenfold. Nothing at or above U+30000 decomposes
    or combines (a test checks every code point); the build takes about 100 ms, at import."""
    table: dict[int, str | None] = {}
    for code in range(0x80, 0x30000):
        char = chr(code)
        if unicodedata.combining(char):
            table[code] = None
        elif not unicodedata.is_normalized("NFKD", char):
            table[code] = "".join(c for c in unicodedata.normalize("NFKD", char) if not unicodedata.combining(c))
    table.update(_FOLD_QUOTES)
    return table


_FOLD = _fold_table()


def fold(text: str) -> str:
    """The text as the matchers read it: its first MAX_TEXT_CHARS characters lower-cased, NFKD with
    combining marks dropped (accents off), curly quotes straight; at most MAX_FOLDED_CHARS long."""
    return text[:MAX_TEXT_CHARS].lower().translate(_FOLD)[:MAX_FOLDED_CHARS]


def _deletes(word: str) -> set[str]:
    return {word[:i] + word[i + 1:] for i in range(len(word))}


def _one_edit(word: str) -> set[str]:
    """Every a-z string one insertion, deletion, substitution or swap of neighbours away from `word`."""
    splits = [(word[:i], word[i:]) for i in range(len(word) + 1)]
    return ({a + b[1:] for a, b in splits if b}
            | {a + b[1] + b[0] + b[2:] for a, b in splits if len(b) > 1}
            | {a + c + b[1:] for a, b in splits if b for c in _LETTERS}
            | {a + c + b for a, b in splits for c in _LETTERS}) - {word}


def _typo_table() -> dict[str, str]:
    """Each one-edit slip of a FUZZY_TARGETS word -> that word ("" when it is a slip of two).

    Reading a typo is then one lookup, whatever the word: the SymSpell lookup it replaces built
    every deletion of the word: one 30,000-letter word took 1.0 s and peak RSS from 103 to 935 MB.
    About 24,000 entries, 40 ms at import."""
    table: dict[str, str] = {}
    for target in sorted(FUZZY_TARGETS):
        for slip in _one_edit(target):
            table[slip] = target if table.get(slip, target) == target else ""
    return table


_TYPOS = _typo_table()


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
    if 5 <= len(word) <= MAX_FUZZY_WORD and word.isalpha() and word not in KNOWN and (close := _TYPOS.get(word)):
        word = FORMS.get(close, close)  # one edit from exactly one hinge word: read as that word
    return word


def _tokens(folded: str, limit: int = MAX_TOKENS) -> list[str]:
    out: list[str] = []
    for raw in _TOKEN.findall(folded)[:limit]:  # findall is bounded: folded is at most MAX_FOLDED_CHARS
        word = _canonical(raw) if len(raw) <= MAX_CACHED_WORD else _canonical.__wrapped__(raw)
        if out and (out[-1], word) in BIGRAMS:
            out[-1] = BIGRAMS[(out[-1], word)]
        else:
            out.append(word)
    return out


def normalise(text: str, limit: int = MAX_TOKENS) -> list[str]:
    """Lower-cased, accent-folded tokens with shorthand, typos and key phrases mapped to one word:
    those of the text's first MAX_TEXT_CHARS characters, at most `limit` (<= MAX_TOKENS)."""
    return _tokens(fold(text), min(limit, MAX_TOKENS))


def split_clauses(text: str) -> list[list[str]]:
    """`normalise` clause by clause (split at ?!;, line breaks and full stops); MAX_TOKENS in all."""
    clauses: list[list[str]] = []
    left = MAX_TOKENS
    for part in _CLAUSE_BREAK.split(fold(text)):
        if left <= 0:
            break
        if tokens := _tokens(part, left):
            clauses.append(tokens)
            left -= len(tokens)
    return clauses


@dataclass(frozen=True, slots=True)
class Normalised:
    """A question normalised once, for every stage that reads it (the classifier's clauses; the
    retriever's and the cache key's tokens, which are the clauses' tokens in order)."""

    clauses: tuple[tuple[str, ...], ...]
    tokens: tuple[str, ...]


def read(text: str) -> Normalised:
    clauses = tuple(tuple(c) for c in split_clauses(text))
    return Normalised(clauses, tuple(t for clause in clauses for t in clause))

