"""The answer cache's key: one sha256 over everything an answer depends on.

Two requests share an entry only when every input below is equal: the org, the intent (and modal
type), the question as the classifier normalises it (case, accents, shorthand, typos), the lead's
fields and the passages that went into the prompt (ids and a digest of their text), the knowledge
base's content version, the prompt version, the first provider and its model, and the answer-shaping
settings (output cap, modal heuristics). The org is hashed on its own too (the namespace purges go
by), so no identifier or question appears in clear in a Redis key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from app.intent.normalise import normalise
from app.providers.base import GenerationRequest
from app.providers.prompts import PROMPT_VERSION

NO_ORG = "-"  # callers without an org share one namespace; the lead still keys every entry


def org_namespace(org: str | None) -> str:
    """A short, stable hash of the org: the entries' namespace in Redis (purge by org)."""
    return hashlib.sha256(("org\0" + (org or NO_ORG)).encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class CacheKey:
    org: str  # org_namespace(...)
    digest: str  # sha256 of the whole material

    def __str__(self) -> str:
        return f"{self.org}:{self.digest}"


def answer_key(*, org: str | None, request: GenerationRequest, kb_version: str, provider: str, model: str,
               modal_heuristics: bool, query_tokens: Sequence[str] | None = None) -> CacheKey:
    """One hash of the whole material (orjson, sorted keys: a lead's field order does not matter)."""
    passages = [(p.source, hashlib.sha256(p.text.encode()).hexdigest()[:16]) for p in request.passages]
    material: dict[str, Any] = {
        "org": org or NO_ORG,
        "intent": request.intent,
        "modal": request.modal_type,
        "query": list(query_tokens) if query_tokens is not None else normalise(request.query),
        "lead": request.lead,
        "passages": passages,
        "notes": request.notes,
        "kb": kb_version,
        "prompt": PROMPT_VERSION,
        "provider": provider,
        "model": model,
        "max_output": request.max_output_tokens,
        "modal_heuristics": modal_heuristics,
    }
    blob = orjson.dumps(material, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS, default=str)
    return CacheKey(org=org_namespace(org), digest=hashlib.sha256(blob).hexdigest())
