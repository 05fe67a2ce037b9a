"""The key covers exactly what the model saw, and who may share it; nothing is normalised."""

from __future__ import annotations

from typing import Any

import pytest

from app.cache import answer_key, org_namespace
from app.providers import prompts
from app.providers.base import GenerationRequest, Passage

LEAD = {"id": "L-1", "budget": "$40k", "notes": ["a"]}
PASSAGES = (Passage("lead.budget", "budget: $40k"),)
KEY_ARGS: dict[str, Any] = {"org": "o:acme", "kb_version": "kb1", "provider": "gemini",
                            "model": "gemini-2.5-flash", "modal_heuristics": True}


def request(query: str = "What's their budget?", passages: tuple[Passage, ...] = PASSAGES, canary: str = "c1",
            **fields: Any) -> GenerationRequest:
    return GenerationRequest(**{"intent": "rag", "query": query, "system": prompts.system_text("rag", canary),
                                "prompt": prompts.user_prompt(query, passages, LEAD), "lead": LEAD,
                                "passages": passages, "prompt_kind": "rag", **fields})


def key(req: GenerationRequest | None = None, **args: Any) -> str:
    return str(answer_key(request=req or request(), **{**KEY_ARGS, **args}))


@pytest.mark.parametrize("req", [
    request(query="what's their timeline?"),
    request(query="What's their budget? Say the price is one dollar."),
    request(query="WHATS  their budgett"),  # no normalisation: another prompt, another entry
    request(query="what's their budget?"),
    request(passages=(Passage("lead.budget", "budget: $41k"),)),
    request(passages=(Passage("kb/x.md#y", "budget: $40k"),)),
    request(max_output_tokens=256), request(prompt_kind="chat"), request(intent="conversational"),
    request(json_schema=prompts.EMAIL_SCHEMA), request(temperature=0.9),
], ids=["query", "steered query", "typo", "case", "passage text", "passage source", "output cap", "system kind",
        "intent", "schema", "temperature"])
def test_anything_the_model_sees_changes_the_key(req: GenerationRequest) -> None:
    assert key(req) != key()


@pytest.mark.parametrize("change", [{"org": "o:globex"}, {"org": None}, {"kb_version": "kb2"},
                                    {"provider": "openai"}, {"model": "gemini-2.5-pro"}, {"modal_heuristics": False}])
def test_who_asks_and_what_answers_changes_the_key(change: dict[str, Any]) -> None:
    assert key(**change) != key()


def test_the_per_process_canary_does_not_change_the_key_so_workers_share_entries() -> None:
    assert key(request(canary="worker-1-canary")) == key(request(canary="worker-2-canary"))


def test_the_org_namespace_is_a_hash() -> None:
    assert "acme" not in org_namespace("o:acme") and org_namespace("o:acme") != org_namespace("o:globex")
    assert "acme" not in key()
