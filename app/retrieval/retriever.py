"""Retrieval for rag answers: the request's CRM context and the shipped knowledge base.

Ranking is BM25 (rank-bm25) on both sides. The knowledge base is indexed once at startup
(the runbook's "cache warmup"; `/ai/router/health` reports `warm`); the request's context is
small, so it is indexed when first seen (the last FACT_INDEXES_KEPT contexts' indexes are kept).

Which side leads depends on what the question is about, read with the router's own lexicon
(`app/intent/lexicon.py`, which holds every word list used here too): a product question ("does
our product support SSO") is answered from the knowledge base first, with any matching lead facts
after it; a question about the lead ("what's their budget") is answered from the lead's data, and
the knowledge base only joins with a strong match, so "budget" does not drag in the playbook's
BANT section.
"""

from __future__ import annotations

import hashlib
import heapq
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from rank_bm25 import BM25Okapi

from app.crm import Flatten
from app.crm.record import MAX_VALUE_CHARS
from app.intent.lexicon import COLLECTION_WORDS, EXPAND, ITEM_WORDS, LEAD_GENERIC, RECENT, STOP, product_terms
from app.intent.normalise import MAX_CONTEXT_CHARS, normalise
from app.providers.base import Passage

# The lead's record answering "tell me about this lead", field by field.
_CORE_LEAD_FIELDS = ("name", "company", "title", "stage", "email", "budget", "lastContact", "leadScore", "aiInsights")

# Thresholds on a section's BM25 score, in units of the corpus's rarest term's IDF: BM25 scores
# scale with log(number of sections), and IVY_KNOWLEDGE_DIR may hold 3 sections or 300.
# A section must match about half a rare term to be cited at all ...
KB_MIN_MATCH = 0.45
# ... and more than two rare terms to join lead facts that already answer a question about the lead.
KB_MIN_MATCH_BESIDE_LEAD = 2.3
# Sections far below the best one are noise for the prompt, whatever their absolute score.
KB_RELATIVE_CUTOFF = 0.4
# The knowledge base does not change while the process runs, so each term's BM25 scores over its
# sections are computed once: rank_bm25 builds a dense array per query term per search (~80 us a
# search). Bounded: a stream of made-up words can pin at most this many (~0.5 KB each).
KB_TERMS_KEPT = 4096

# The context is written by outsiders and may be anything up to the 64 KiB body limit; these (and
# MAX_CONTEXT_VALUES values walked, MAX_CONTEXT_CHARS characters indexed) bound one request's work
# far above what a CRM record holds (the eval's largest: 19 passages, 966 characters, 18 query
# terms). The first of each are kept, in the context's order.
MAX_LIST_ITEMS = 50  # items of one list (a lead's list field, activities, emails, notes)
MAX_PASSAGES = 200  # passages per request
MAX_PASSAGE_CHARS = MAX_VALUE_CHARS  # one passage's text (app/crm/record.py)
MAX_QUERY_TERMS = 64  # query terms scored (BM25 scans every document once per term)


def _stem(word: str) -> str:
    """Harman's S-stemmer: fold plurals only ("refunds" -> "refund", "policies" -> "policy")."""
    if len(word) <= 3 or not word.isalpha():
        return word
    if word.endswith("ies") and not word.endswith(("eies", "aies")):
        return word[:-3] + "y"
    if word.endswith("es") and not word.endswith(("aes", "ees", "oes")):
        return word[:-1]
    if word.endswith("s") and not word.endswith(("us", "ss")):
        return word[:-1]
    return word


def _terms(text: str) -> list[str]:
    return [_stem(w) for w in normalise(text) if w not in STOP]


def _query_terms(tokens: list[str]) -> list[str]:
    terms = [_stem(w) for w in tokens if w not in STOP][:MAX_QUERY_TERMS]
    if "how" in tokens and "much" in tokens:
        terms += ["price", "cost"]
    return terms + [x for t in terms for x in EXPAND.get(t, ())]


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _key_words(key: str) -> str:
    """`lastContact` -> "last Contact", so the field's name is searchable like its value."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", key).replace("_", " ")


@dataclass(frozen=True, slots=True)
class Section:
    source: str
    title: str
    text: str
    heading: str = ""


def load_sections(folder: Path) -> list[Section]:
    sections: list[Section] = []
    for path in sorted(folder.glob("*.md")):
        doc_title = path.stem.replace("-", " ").title()
        current, lines = "", list[str]()
        for line in [*path.read_text(encoding="utf-8").splitlines(), "## "]:
            if line.startswith("# ") and not line.startswith("## "):
                doc_title = line[2:].strip()
            elif line.startswith("## "):
                body = " ".join(x.strip() for x in lines if x.strip())
                if current and body:
                    sections.append(Section(f"kb/{path.name}#{_slug(current)}", f"{doc_title} › {current}", body,
                                            current))
                current, lines = line[3:].strip(), []
            else:
                lines.append(line)
    return sections


def _section_terms(section: Section) -> list[str]:
    # The heading says what the section is about in a few words: count it twice (a poor man's
    # BM25F field weight), so "refund policy" lands on the refund sections, not on every page
    # that mentions a refund in passing.
    heading = _terms(section.heading) if section.heading else []
    return heading * 2 + _terms(section.title) + _terms(section.text)


class KnowledgeBase:
    def __init__(self, sections: list[Section]) -> None:
        self.sections = sections
        self._bm25 = BM25Okapi([_section_terms(s) for s in sections]) if sections else None
        idf = self._bm25.idf.values() if self._bm25 is not None else ()
        self._rare_idf = max(idf, default=0.0)
        self._term_scores = lru_cache(maxsize=KB_TERMS_KEPT)(self._scores_of)
        # The content's version: part of every answer-cache key, so an edited doc is a miss.
        digest = hashlib.sha256()
        for section in sections:
            digest.update(f"{section.source}\0{section.title}\0{section.text}\0".encode())
        self.version = digest.hexdigest()[:16]

    @classmethod
    def from_folder(cls, folder: Path) -> KnowledgeBase:
        return cls(load_sections(folder) if folder.is_dir() else [])

    @property
    def warm(self) -> bool:
        return self._bm25 is not None

    def search(self, query: str, k: int = 3, min_score: float | None = None) -> list[Passage]:
        """The best `k` sections for `query`; `min_score` is an absolute BM25 floor (default: KB_MIN_MATCH)."""
        floor = self._rare_idf * KB_MIN_MATCH if min_score is None else min_score
        return self._search(_query_terms(normalise(query)), k, floor)

    def search_terms(self, terms: list[str], k: int = 3, min_match: float = KB_MIN_MATCH) -> list[Passage]:
        """Like `search` over already-normalised terms; `min_match` in units of the rarest term's IDF."""
        return self._search(terms, k, self._rare_idf * min_match)

    def _search(self, terms: list[str], k: int, min_score: float) -> list[Passage]:
        if self._bm25 is None or not terms:
            return []
        scores = self._term_scores(terms[0])
        for term in terms[1:]:  # BM25 sums over the query's terms: what get_scores(terms) adds up
            scores = scores + self._term_scores(term)
        # As Python floats: a sort key indexing the array makes a numpy scalar per comparison.
        # nlargest is sorted(..., reverse=True)[:k], ties in section order as there.
        values: list[float] = scores.tolist()
        ranked = heapq.nlargest(k, range(len(values)), key=values.__getitem__)
        floor = max(min_score, KB_RELATIVE_CUTOFF * values[ranked[0]], 1e-9)
        return [
            Passage(self.sections[i].source, f"{self.sections[i].title}: {self.sections[i].text}", values[i])
            for i in ranked if values[i] >= floor
        ]


    def _scores_of(self, term: str) -> Any:
        assert self._bm25 is not None
        return self._bm25.get_scores([term])


def context_passages(context: dict[str, Any]) -> list[Passage]:
    """Every fact the request carries, one passage each, named by where it sits in the context
    (at most MAX_LIST_ITEMS of a list and MAX_PASSAGES in all)."""
    return [Passage(source, text) for source, text in _context_facts(context)]


Fact = tuple[str, str]  # (source, text): a passage before it is chosen (only those chosen are made Passages)
_EMPTY: tuple[Any, ...] = (None, "", [], {})  # what a fact is not made of (made once: never changed)


def _context_facts(context: dict[str, Any]) -> list[Fact]:
    facts: list[Fact] = []
    flatten = Flatten()
    lead = context.get("lead")
    if isinstance(lead, dict):
        for key, value in lead.items():
            if len(facts) >= MAX_PASSAGES or flatten.left <= 0:
                break
            if value in _EMPTY:
                continue
            if isinstance(value, list):
                facts.extend((f"lead.{key}[{i}]", f"{key}: {flatten(v)}") for i, v in enumerate(value[:MAX_LIST_ITEMS]))
            else:
                facts.append((f"lead.{key}", f"{key}: {flatten(value)}"))
    for section in ("activities", "emails", "notes"):
        items = context.get(section)
        if isinstance(items, list) and len(facts) < MAX_PASSAGES and flatten.left > 0:
            facts.extend((f"{section}[{i}]", flatten(v)) for i, v in enumerate(items[:MAX_LIST_ITEMS]))
    return facts[:MAX_PASSAGES]


def _fact_terms(source: str, text: str) -> list[str]:
    name = source.split("[")[0]
    label = ITEM_WORDS.get(name) or _key_words(name.removeprefix("lead."))
    return _terms(label + " " + text)


# Lead contexts indexed lately: a conversation sends the same lead's context with every question,
# so its facts are tokenised and indexed once, and only the query is scored per request.
FACT_INDEXES_KEPT = 64  # bounds the memory a stream of hostile, maximal contexts can pin


class FactIndex:
    """rank-bm25's BM25Okapi over a request's facts (its idf, k1 and b), scored from postings:
    each term adds its precomputed part to the few facts that hold it. `get_scores` computes each
    score with the same float operations in the same order as BM25Okapi.get_scores (a fact
    without the term gains its 0.0 there), so the scores are equal; numpy built a dense array per
    term, ~8 us a term over a dozen facts."""

    __slots__ = ("_postings", "size")

    def __init__(self, documents: list[list[str]]) -> None:
        bm25 = BM25Okapi(documents)
        k1, b, avgdl = bm25.k1, bm25.b, bm25.avgdl
        self.size = bm25.corpus_size
        postings: dict[str, list[tuple[int, float]]] = {}
        for i, (freqs, length) in enumerate(zip(bm25.doc_freqs, bm25.doc_len, strict=True)):
            norm = k1 * (1 - b + b * length / avgdl)
            for word, freq in freqs.items():
                idf = bm25.idf[word]
                if idf:  # `(idf or 0) * ...`: nothing added
                    postings.setdefault(word, []).append((i, idf * (freq * (k1 + 1) / (freq + norm))))
        self._postings = {word: tuple(parts) for word, parts in postings.items()}

    def get_scores(self, terms: Sequence[str]) -> list[float]:
        scores = [0.0] * self.size
        for term in terms:
            for i, part in self._postings.get(term, ()):
                scores[i] += part
        return scores


@lru_cache(maxsize=FACT_INDEXES_KEPT)
def fact_index(facts: tuple[tuple[str, str], ...]) -> FactIndex:
    """The BM25 index of (source, indexed text) facts, each indexed by its label and its text."""
    return FactIndex([_fact_terms(source, text) for source, text in facts])


def _rank_facts(facts: list[Fact], terms: list[str], k: int) -> list[Passage]:
    if not facts or not terms:
        return []
    indexed, left = [], MAX_CONTEXT_CHARS
    for source, text in facts:  # each passage indexed by what is left of the request's budget
        indexed.append((source, text[:left]))
        left = max(0, left - len(text))
    scores = fact_index(tuple(indexed)).get_scores(terms)
    ranked = sorted(range(len(facts)), key=scores.__getitem__, reverse=True)
    return [Passage(*facts[i], scores[i]) for i in ranked[:k] if scores[i] > 0]




def _most_recent(context: dict[str, Any], tokens: list[str]) -> list[Passage]:
    """ "their last email", "the last call": the newest item of that list, which BM25 cannot know.

    Items are compared by their `date` (ISO dates sort as text); without dates the list's first
    item is taken, as CRMs list activity newest first.
    """
    words = set(tokens)
    if not words & RECENT:
        return []
    chosen: list[Passage] = []
    for name, nouns in COLLECTION_WORDS.items():
        items = context.get(name)
        if not (words & nouns) or not isinstance(items, list) or not items:
            continue
        items = items[:MAX_LIST_ITEMS]  # the items context_passages indexes
        dated = [(str(item.get("date")), i) for i, item in enumerate(items)
                 if isinstance(item, dict) and item.get("date")]
        index = max(dated)[1] if len(dated) == len(items) else 0
        chosen.append(Passage(f"{name}[{index}]", Flatten()(items[index])))
    return chosen


_CORE_SOURCES = frozenset(f"lead.{name}" for name in _CORE_LEAD_FIELDS)


def _core_record(facts: list[Fact], k: int) -> list[Passage]:
    chosen = [fact for fact in facts if fact[0].split("[")[0] in _CORE_SOURCES][:k] or facts[:k]
    return [Passage(source, text) for source, text in chosen]


def retrieve(query: str, context: dict[str, Any], kb: KnowledgeBase, k: int = 4,
             tokens: Sequence[str] | None = None) -> list[Passage]:
    """The passages a rag answer is grounded in, best first: lead facts and knowledge-base sections.

    At most `k` matching facts (twice that for the lead's core record, which answers "tell me
    about this lead" field by field) and at most 3 knowledge-base sections.
    """
    tokens = list(tokens) if tokens is not None else normalise(query)  # normalised once, by the pipeline
    terms = _query_terms(tokens)
    facts = _context_facts(context)
    matched = _rank_facts(facts, [t for t in terms if t not in LEAD_GENERIC], k)
    recent = _most_recent(context, tokens)
    if recent:
        scores = {p.source: p.score for p in matched}
        named = {p.source for p in recent}
        recent = [Passage(p.source, p.text, scores.get(p.source, 0.0)) for p in recent]
        matched = (recent + [p for p in matched if p.source not in named])[:k]
    if product_terms(tokens):
        # About our product or playbook: the docs answer it; the lead's matching facts add context.
        return kb.search_terms(terms, 3) + matched[: max(1, k // 2)]
    if facts and not matched:
        # "Tell me about this lead": no single field matches, so the lead's core record answers.
        matched = _core_record(facts, 2 * k)
    return matched + kb.search_terms(terms, 3, KB_MIN_MATCH_BESIDE_LEAD if matched else KB_MIN_MATCH)
