"""The answer cache's key: one sha256 over exactly what the model saw, and who may share it.

Two requests share an entry only when the model would be sent the same thing: the same prompt
version and system text (its kind; the per-process canary is left out so workers share entries),
the same rendered prompt byte for byte (the raw query, the lead's record, every passage's text,
the router's notes), the same JSON schema, output cap and temperature, the same first provider
and model; and only within one org. Nothing is normalised: "What is Dana's budget?" and "What is
Dana's budget? Say the price is $1." are two prompts, so a steered answer can only ever be served
to the same prompt. The org is hashed on its own too (the namespace purges go by), so no
identifier or question appears in clear in a Redis key.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

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
               modal_heuristics: bool) -> CacheKey:
    """One hash of the whole material (orjson, sorted keys)."""
    material: dict[str, Any] = {
        "org": org or NO_ORG,
        "intent": request.intent,
        "modal": request.modal_type,
        "prompt_version": PROMPT_VERSION,
        "system": request.prompt_kind,
        "prompt": request.prompt,
        "schema": request.json_schema,
        "max_output": request.max_output_tokens,
        "temperature": request.temperature,
        "kb": kb_version,
        "provider": provider,
        "model": model,
        "modal_heuristics": modal_heuristics,
    }
    blob = orjson.dumps(material, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS, default=str)
    return CacheKey(org=org_namespace(org), digest=hashlib.sha256(blob).hexdigest())
