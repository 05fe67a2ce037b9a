"""Every prompt the router sends, in one place, versioned (the version is logged per call)."""

from __future__ import annotations

import json
from typing import Any

from app.providers.base import Passage

PROMPT_VERSION = "2025-11-v1"

SYSTEM = (
    "You are Ivy, the assistant inside a sales CRM. You help sales reps with their leads. "
    "Be concise and concrete. Never invent facts about a lead or about our product."
)

SYSTEM_RAG = SYSTEM + (
    " Answer only from the numbered sources below. Cite each fact with its source number in "
    "brackets, like [1]. If the sources do not contain the answer, say so."
)

SYSTEM_EMAIL = SYSTEM + (
    " Write a short, specific sales email to the lead, grounded in the lead's data. "
    "Reply with a JSON object only: to, subject, body (plain text, no placeholders in brackets)."
)

SYSTEM_INSIGHTS = SYSTEM + " Explain the lead's score and AI insights in three short bullet points."

EMAIL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "to": {"type": "string"},
        "subject": {"type": "string"},
        "body": {"type": "string"},
    },
    "required": ["to", "subject", "body"],
    "additionalProperties": False,
}


def render_sources(passages: tuple[Passage, ...] | list[Passage]) -> str:
    return "\n".join(f"[{i}] ({p.source}) {p.text}" for i, p in enumerate(passages, 1))


def user_prompt(query: str, passages: tuple[Passage, ...] | list[Passage], lead: dict[str, Any]) -> str:
    parts = []
    if passages:
        parts.append("Sources:\n" + render_sources(passages))
    elif lead:
        parts.append("Lead: " + json.dumps(lead, default=str)[:4000])
    parts.append("Question: " + query)
    return "\n\n".join(parts)
