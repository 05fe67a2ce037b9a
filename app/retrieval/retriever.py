"""Retrieval for rag answers: the request's CRM context and the shipped knowledge base.

The knowledge base is indexed once at startup (BM25 over `##` sections: the runbook's
"cache warmup"); the request's context is small, so it is ranked per request.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rank_bm25 import BM25Okapi

from app.intent.classifier import normalise
from app.providers.base import Passage

_STOP = frozenset(
    ["a", "an", "the", "is", "are", "was", "were", "be", "been", "do", "does", "did", "of", "to", "in", "on", "for", "and", "or", "but", "with", "at", "by", "from", "it", "this", "that", "these", "those", "what", "whats", "what's", "how", "when", "why", "who", "which", "can", "could", "would", "should", "will", "i", "me", "my", "we", "our", "you", "your", "they", "them", "their", "he", "she", "his", "her", "us", "about", "tell", "give", "show", "any", "there", "have", "has", "had"]
)
_CORE_LEAD_FIELDS = ("name", "company", "title", "stage", "email", "budget", "lastContact", "leadScore")


def _terms(text: str) -> list[str]:
    return [w for w in normalise(text) if w not in _STOP]


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


@dataclass(frozen=True, slots=True)
class Section:
    source: str
    title: str
    text: str


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
                    sections.append(Section(f"kb/{path.name}#{_slug(current)}", f"{doc_title} › {current}", body))
                current, lines = line[3:].strip(), []
            else:
                lines.append(line)
    return sections


class KnowledgeBase:
    def __init__(self, sections: list[Section]) -> None:
        self.sections = sections
        self._bm25 = BM25Okapi([_terms(s.title + " " + s.text) for s in sections]) if sections else None

    @classmethod
    def from_folder(cls, folder: Path) -> KnowledgeBase:
        return cls(load_sections(folder) if folder.is_dir() else [])

    @property
    def warm(self) -> bool:
        return self._bm25 is not None

    def search(self, query: str, k: int = 3, min_score: float = 1.0) -> list[Passage]:
        terms = _terms(query)
        if self._bm25 is None or not terms:
            return []
        scores = self._bm25.get_scores(terms)
        ranked = sorted(range(len(scores)), key=lambda i: scores[i], reverse=True)[:k]
        return [
            Passage(self.sections[i].source, f"{self.sections[i].title}: {self.sections[i].text}", float(scores[i]))
            for i in ranked if scores[i] >= min_score
        ]


def _flatten(value: Any) -> str:
    if isinstance(value, dict):
        return "; ".join(f"{k}: {_flatten(v)}" for k, v in value.items() if v not in (None, "", [], {}))
    if isinstance(value, list):
        return "; ".join(_flatten(v) for v in value)
    return str(value)


def context_passages(context: dict[str, Any]) -> list[Passage]:
    """Every fact the request carries, one passage each, named by where it sits in the context."""
    passages: list[Passage] = []
    lead = context.get("lead")
    if isinstance(lead, dict):
        for key, value in lead.items():
            if value in (None, "", [], {}):
                continue
            if isinstance(value, list):
                passages.extend(Passage(f"lead.{key}[{i}]", f"{key}: {_flatten(v)}") for i, v in enumerate(value))
            else:
                passages.append(Passage(f"lead.{key}", f"{key}: {_flatten(value)}"))
    for section in ("activities", "emails", "notes"):
        items = context.get(section)
        if isinstance(items, list):
            passages.extend(Passage(f"{section}[{i}]", _flatten(v)) for i, v in enumerate(items))
    return passages


def retrieve(query: str, context: dict[str, Any], kb: KnowledgeBase, k: int = 4) -> list[Passage]:
    """Context facts ranked against the query, then knowledge-base sections."""
    facts = context_passages(context)
    terms = _terms(query)
    chosen: list[Passage] = []
    if facts and terms:
        bm25 = BM25Okapi([_terms(p.source.replace(".", " ") + " " + p.text) for p in facts])
        scores = bm25.get_scores(terms)
        ranked = sorted(range(len(facts)), key=lambda i: scores[i], reverse=True)
        chosen = [Passage(facts[i].source, facts[i].text, float(scores[i])) for i in ranked[:k] if scores[i] > 0]
    if facts and not chosen:
        # "Tell me about this lead": no single field matches, so the lead's core record answers.
        core = {f"lead.{name}" for name in _CORE_LEAD_FIELDS}
        chosen = [p for p in facts if p.source in core][:k] or facts[:k]
    return chosen + kb.search(query, k=3)
