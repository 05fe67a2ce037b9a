"""Normalisation reads outsiders' text (queries, prospects' emails): its work is bounded whatever the
text, and the bounds change nothing an ordinary text reads as (issue 19, item 7)."""

from __future__ import annotations

import random
import string
import sys
import tracemalloc
import unicodedata

from app.intent.lexicon import FORMS, FUZZY_TARGETS, KNOWN, SHORTHAND
from app.intent.normalise import (
    MAX_FOLDED_CHARS,
    MAX_FUZZY_WORD,
    MAX_TEXT_CHARS,
    MAX_TOKENS,
    fold,
    normalise,
    split_clauses,
)

_QUOTES = str.maketrans({"’": "'", "‘": "'", "`": "'", "´": "'"})


def reference_fold(text: str) -> str:
    """Folding as it is defined: curly quotes straight, lower case, NFKD, combining marks dropped."""
    text = unicodedata.normalize("NFKD", text.translate(_QUOTES).lower())
    return "".join(ch for ch in text if not unicodedata.combining(ch))


def osa_distance(a: str, b: str) -> int:
    """Optimal-string-alignment distance (insertions, deletions, substitutions, adjacent swaps)."""
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        prev2, prev = prev, cur
    return prev[-1]


def slips(word: str) -> set[str]:
    letters = string.ascii_lowercase
    cuts = [(word[:i], word[i:]) for i in range(len(word) + 1)]
    return ({a + b[1:] for a, b in cuts if b} | {a + b[1] + b[0] + b[2:] for a, b in cuts if len(b) > 1}
            | {a + c + b[1:] for a, b in cuts if b for c in letters} | {a + c + b for a, b in cuts for c in letters})


def test_folding_every_character_is_nfkd_without_combining_marks() -> None:
    different = [c for c in range(sys.maxunicode + 1) if fold(chr(c)) != reference_fold(chr(c))]
    assert different == []


def test_folding_a_text_is_folding_it_whole() -> None:
    rng = random.Random(19)
    pools = [(0x20, 0x7e), (0x300, 0x36f), (0xc0, 0x24f), (0x80, 0x2ffff), (0xac00, 0xd7a3), (0x1e00, 0x1eff)]
    for _ in range(5000):
        text = "".join(chr(rng.randint(*rng.choice(pools))) for _ in range(rng.randint(0, 40)))
        assert fold(text) == reference_fold(text), ascii(text)


def test_accents_ligatures_wide_letters_and_curly_quotes_read_as_plain_words() -> None:
    assert normalise("Café résumé naïve ﬁnal ＥＭＡＩＬ Dana’s e\u0301mail") == [
        "cafe", "resume", "naive", "final", "email", "dana", "email"]
    assert normalise("email給dana") == ["email", "dana"]


def test_a_text_nfkd_expands_eighteenfold_folds_to_at_most_max_folded_chars() -> None:
    assert len(reference_fold("\ufdfa" * MAX_TEXT_CHARS)) > MAX_FOLDED_CHARS
    assert len(fold("\ufdfa" * 60_000)) == MAX_FOLDED_CHARS


def test_a_query_of_words_at_the_length_limit_is_read_to_its_last_word() -> None:
    query = "pricing " * 999 + "budget"
    assert len(query) <= 8000 <= MAX_TEXT_CHARS
    assert normalise(query)[-1] == "budget"


def test_a_slip_of_exactly_one_hinge_word_reads_as_that_word_and_nothing_else_changes() -> None:
    rng = random.Random(7)
    near = sorted({s for t in FUZZY_TARGETS for s in slips(t)})
    words = set(rng.sample(near, 1500))
    words.update(w for s in rng.sample(near, 150) for w in rng.sample(sorted(slips(s)), 5))
    words.update("".join(rng.choices(string.ascii_lowercase, k=rng.randint(5, 15))) for _ in range(800))
    words.update(KNOWN)
    plain = sorted(w for w in words if len(w) >= 5 and w not in KNOWN and w not in SHORTHAND and w not in FORMS)
    corrected = 0
    for word in plain:
        close = [t for t in FUZZY_TARGETS if abs(len(t) - len(word)) <= 1 and osa_distance(word, t) == 1]
        expected = FORMS.get(close[0], close[0]) if len(close) == 1 else word
        corrected += expected != word
        assert normalise(word) == [expected], (word, close)
    assert corrected > 1000
    assert all(normalise(w) == normalise(w.upper()) for w in KNOWN)


def test_one_30000_letter_word_costs_memory_of_its_own_size_not_its_square() -> None:
    word = "".join(random.Random(1).choices(string.ascii_lowercase, k=30_000))
    tracemalloc.start()
    try:
        tokens = normalise(f"note: {word} end")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert tokens == ["note", word[:MAX_TEXT_CHARS - 6]]
    assert len(word) > MAX_FUZZY_WORD
    assert peak < 1_000_000  # the deletions of a 30,000-letter word alone were 900 MB


def test_long_words_are_not_kept_in_the_word_cache() -> None:
    rng = random.Random(3)
    texts = ["".join(rng.choices(string.ascii_lowercase, k=8000)) for _ in range(100)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for text in texts:
            normalise(text)
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept < 100_000  # 100 cached 8,000-letter words would keep 800 KB


def test_a_64_kib_text_normalises_to_at_most_max_tokens() -> None:
    text = "a b " * 16_384
    assert len(normalise(text)) == MAX_TOKENS
    assert len(normalise(text, limit=10)) == 10
    clauses = split_clauses("a, " * 20_000)
    assert sum(len(c) for c in clauses) == MAX_TOKENS
