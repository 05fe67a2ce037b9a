"""Every input an answer depends on changes the key; nothing else does."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from app.cache import answer_key, org_namespace
from app.intent.normalise import normalise, read
from app.providers.base import GenerationRequest, Passage

BASE: dict[str, Any] = {"intent": "rag", "query": "What's their budget?", "system": "s", "prompt": "p",
                        "lead": {"id": "L-1", "budget": "$40k", "notes": ["a"]},
                        "passages": (Passage("lead.budget", "$40k"),), "modal_type": None, "notes": (),
                        "json_schema": None, "max_output_tokens": 512}
KEY_ARGS: dict[str, Any] = {"org": "o:acme", "kb_version": "kb1", "provider": "gemini",
                            "model": "gemini-2.5-flash", "modal_heuristics": True}


def key(request: dict[str, Any] | None = None, **args: Any) -> str:
    return str(answer_key(request=GenerationRequest(**{**BASE, **(request or {})}), **{**KEY_ARGS, **args}))


@pytest.mark.parametrize("change", [
    {"intent": "conversational"}, {"modal_type": "lead_insights"}, {"query": "what's their timeline?"},
    {"lead": {"id": "L-2", "budget": "$40k", "notes": ["a"]}},
    {"lead": {"id": "L-1", "budget": "$40k", "notes": ["b"]}},
    {"passages": (Passage("lead.budget", "$41k"),)}, {"passages": (Passage("kb/x.md#y", "$40k"),)},
    {"notes": ("This lead has no lead score or AI insights yet.",)}, {"max_output_tokens": 256},
])
def test_what_went_into_the_prompt_changes_the_key(change: dict[str, Any]) -> None:
    assert key(change) != key()


@pytest.mark.parametrize("change", [{"org": "o:globex"}, {"org": None}, {"kb_version": "kb2"},
                                    {"provider": "openai"}, {"model": "gemini-2.5-pro"}, {"modal_heuristics": False}])
def test_who_asks_and_what_answers_changes_the_key(change: dict[str, Any]) -> None:
    assert key(**change) != key()


def test_the_classifiers_normalisation_and_field_order_do_not() -> None:
    assert key({"query": "WHATS  their budgett"}) == key()
    assert key({"lead": {"notes": ["a"], "budget": "$40k", "id": "L-1"}}) == key()
    assert key({"prompt": "the raw prompt text is not keyed: its inputs are"}) == key()


def test_the_org_namespace_is_a_hash() -> None:
    assert "acme" not in org_namespace("o:acme") and org_namespace("o:acme") != org_namespace("o:globex")
    assert "acme" not in str(answer_key(request=GenerationRequest(**BASE), **KEY_ARGS))


def test_the_query_normalised_once_keys_the_cache_as_normalising_it_again_would() -> None:
    # The pipeline normalises a question once (app/intent/normalise.py `read`) and hands the tokens to
    # the classifier, the retriever and the key: the key must not change for any question we know.
    cases = Path(__file__).resolve().parents[2] / "scripts" / "eval_data" / "cases.jsonl"
    queries = [json.loads(line)["query"] for line in cases.read_text().splitlines() if line.strip()]
    assert len(queries) > 100
    for query in queries:
        request = GenerationRequest(intent="rag", query=query, system="s", prompt=query)
        once = answer_key(org="o", request=request, kb_version="v", provider="gemini", model="m",
                          modal_heuristics=True, query_tokens=read(query).tokens)
        again = answer_key(org="o", request=request, kb_version="v", provider="gemini", model="m",
                           modal_heuristics=True)
        assert once == again and list(read(query).tokens) == normalise(query), query
