"""Retrieval: known questions find their passage; citations and the prompt carry them; warm at start."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from rank_bm25 import BM25Okapi

from app.config import Settings
from app.intent.classifier import classify
from app.pipeline import build_generation_request
from app.retrieval.retriever import FactIndex, KnowledgeBase, Section, _section_terms, load_sections, retrieve
from tests.conftest import LEAD, LEAD_NO_SCORE

ACTIVITY = {
    "activities": [
        {"type": "meeting", "date": "2026-10-14", "summary": "Demo with Dana and two ops managers."},
        {"type": "call", "date": "2026-10-28", "summary": "Walked through Growth vs Enterprise; needs Okta SSO."},
    ],
    "emails": [
        {"from": "rep@ivycrm.com", "subject": "Ivy proposal - 35 seats", "date": "2026-10-29",
         "snippet": "Attached is the proposal for 35 Growth seats."},
        {"from": "dana@northwind.io", "subject": "Re: Ivy proposal", "date": "2026-10-30",
         "snippet": "Can you confirm Okta SSO is included and whether annual billing changes the price?"},
    ],
}


@pytest.fixture(scope="module")
def kb() -> KnowledgeBase:
    return KnowledgeBase.from_folder(Settings(_env_file=None).ivy_knowledge_dir)


def sources(passages: list[Any]) -> list[str]:
    return [p.source for p in passages]


@pytest.mark.parametrize(("query", "section"), [
    ("does our product support SSO with okta", "kb/security-and-sso.md#single-sign-on-sso"),
    ("what's your refund policy", "kb/refunds-and-billing.md#30-day-money-back-guarantee"),
    ("how much is the Growth plan", "kb/plans-and-pricing.md#plan-overview"),
    ("how long do we keep audit logs", "kb/security-and-sso.md#audit-logs"),
    ("how long is the free trial", "kb/plans-and-pricing.md#free-trial"),
    ("min seats for enterprise?", "kb/plans-and-pricing.md#seat-minimums-and-limits"),
    ("do we support okta scim", "kb/security-and-sso.md#scim-provisioning"),
    ("where is data hosted, do we have EU data residency", "kb/security-and-sso.md#data-residency"),
    ("what does our playbook say about price objections", "kb/sales-playbook.md#handling-price-objections"),
    ("can customers pay with paypal", "kb/refunds-and-billing.md#payment-methods"),
    ("does ivy integrate with stripe", "kb/integrations.md#stripe"),
    ("can we migrate them from salesforce", "kb/onboarding.md#salesforce-migration"),
    ("is our data encrypted", "kb/security-and-sso.md#encryption"),
])
def test_known_product_questions_retrieve_their_section_first(kb: KnowledgeBase, query: str, section: str) -> None:
    found = sources(retrieve(query, {}, kb))
    assert found and found[0] == section, found


def test_lead_question_cites_the_lead_field_and_not_the_playbook(kb: KnowledgeBase) -> None:
    found = sources(retrieve("what's their budget", {"lead": LEAD, **ACTIVITY}, kb))
    assert found[0] == "lead.budget"
    assert not any(s.startswith("kb/") for s in found), found


def test_product_question_with_a_lead_open_leads_with_the_knowledge_base(kb: KnowledgeBase) -> None:
    found = sources(retrieve("does our product support SSO?", {"lead": LEAD, **ACTIVITY}, kb))
    assert found[0] == "kb/security-and-sso.md#single-sign-on-sso"
    assert "lead.notes[0]" in found  # "Asked about SSO on 10/02 call": context for the answer


@pytest.mark.parametrize(("query", "first"), [
    ("what did their last email say", "emails[1]"),
    ("did they reply to my last email?", "emails[1]"),
    ("what did they say in the last call", "activities[1]"),
    ("how long since last contact", "lead.lastContact"),
    ("any notes on this lead?", "lead.notes[0]"),
    ("who is dana", "lead.name"),
])
def test_questions_about_the_leads_activity_find_the_right_item(kb: KnowledgeBase, query: str, first: str) -> None:
    found = sources(retrieve(query, {"lead": LEAD, **ACTIVITY}, kb))
    assert found[0] == first, found


def test_tell_me_about_this_lead_answers_from_its_core_record(kb: KnowledgeBase) -> None:
    found = sources(retrieve("tell me about this lead", {"lead": LEAD_NO_SCORE}, kb))
    assert {"lead.name", "lead.company", "lead.title", "lead.stage", "lead.budget"} <= set(found)
    assert not any(s.startswith("kb/") for s in found), found


def test_sections_are_named_by_doc_and_heading(tmp_path: Path) -> None:
    (tmp_path / "returns.md").write_text("# Returns\n\n## Return window\nItems can be returned in 45 days.\n\n"
                                         "## Empty heading\n\n## Restocking fee\nA 10% fee applies.\n")
    (tmp_path / "ignored.txt").write_text("## Not markdown\nnever indexed")
    sections = load_sections(tmp_path)
    assert [s.source for s in sections] == ["kb/returns.md#return-window", "kb/returns.md#restocking-fee"]
    assert sections[0].title == "Returns › Return window"


def test_an_empty_or_missing_folder_gives_a_cold_knowledge_base(tmp_path: Path) -> None:
    assert not KnowledgeBase.from_folder(tmp_path / "missing").warm
    assert not KnowledgeBase.from_folder(tmp_path).warm
    assert KnowledgeBase.from_folder(tmp_path).search("refund policy") == []


def test_prompt_carries_the_retrieved_passages_with_their_sources(kb: KnowledgeBase) -> None:
    query, context = "what's their budget?", {"lead": LEAD}
    c = classify(query, context)
    request = build_generation_request("canary-1", query, LEAD, c, retrieve(query, context, kb))
    assert "(lead.budget) budget: $40k" in request.prompt
    assert request.prompt.index("Sources:") < request.prompt.index("</crm_data>") < request.prompt.index(
        "Question: " + query)


def test_knowledge_dir_is_indexed_at_start_and_answers_rag_with_citations(
        make_client: Callable[..., TestClient], tmp_path: Path) -> None:
    (tmp_path / "hardware.md").write_text(
        "# Hardware\n\n## Hardware warranty\nEvery Ivy badge reader carries a 3-year hardware warranty.\n\n"
        "## Shipping\nReaders ship within 5 business days from our Dublin warehouse.\n\n"
        "## Setup\nPair a reader with the mobile app over Bluetooth in under a minute.\n")
    client = make_client(ivy_knowledge_dir=tmp_path)
    health = client.get("/ai/router/health").json()
    assert health["knowledge_base"] == {"warm": True, "sections": 3, "version": client.app_state["ivy"].kb.version}
    assert len(health["knowledge_base"]["version"]) == 16  # the content hash in every answer-cache key
    body = client.post("/ai/router/v2", json={"query": "what's the warranty policy on badge readers?", "context": {}},
                       headers={"X-User-ID": "rep-1"}).json()
    assert body["intent"] == "rag"
    assert body["citations"][0]["source"] == "kb/hardware.md#hardware-warranty"
    assert "3-year hardware warranty" in body["citations"][0]["snippet"]


def test_an_empty_knowledge_dir_shows_as_cold_in_health(make_client: Callable[..., TestClient],
                                                         tmp_path: Path) -> None:
    client = make_client(ivy_knowledge_dir=tmp_path)
    kb = client.get("/ai/router/health").json()["knowledge_base"]
    assert (kb["warm"], kb["sections"]) == (False, 0)


def test_rag_response_cites_every_passage_it_used(client: TestClient) -> None:
    body = client.post("/ai/router/v2", json={"query": "did they reply to my last email?",
                                              "context": {"lead": LEAD, **ACTIVITY}},
                       headers={"X-User-ID": "rep-1"}).json()
    assert body["intent"] == "rag"
    cited = [c["source"] for c in body["citations"]]
    assert cited[0] == "emails[1]"
    assert all(c["snippet"] for c in body["citations"])
    assert "Okta SSO is included" in body["answer"]  # the offline provider answers from the passages


def test_the_retriever_reads_the_shared_lexicon_not_the_classifier() -> None:
    import ast

    import app.retrieval.retriever as retriever

    tree = ast.parse(Path(retriever.__file__).read_text(encoding="utf-8"))
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "app.intent.classifier" not in imported
    assert {"app.intent.lexicon", "app.intent.normalise"} <= imported


@pytest.mark.parametrize("terms", [["pricing", "plans"], ["sso", "okta", "sso"], ["refund", "annual", "billing"],
                                   ["zzzunknownword", "pricing"]])
def test_a_knowledge_base_search_scores_exactly_as_bm25_over_all_its_terms(terms: list[str]) -> None:
    # Each term's scores are kept once computed; their sum must be the library's own, repeats included.
    sections = load_sections(Path("app/knowledge"))
    kb = KnowledgeBase(sections)
    reference = BM25Okapi([_section_terms(s) for s in sections]).get_scores(terms)
    for _ in range(2):  # computed, then from what was kept
        found = kb.search_terms(terms, k=len(sections), min_match=0.0)
        assert found
        assert all(p.score == reference[[f"{s.title}: {s.text}" for s in sections].index(p.text)] for p in found)


def test_the_lead_facts_index_scores_every_fact_exactly_as_bm25okapi() -> None:
    # Corpora of one fact, of empty facts, of terms in most facts (rank-bm25's epsilon idf) and
    # queries with repeated and unknown terms: equal floats, not close ones.
    rng = random.Random(20)
    words = [f"w{i}" for i in range(24)]
    for _ in range(400):
        documents = [[rng.choice(words[:rng.randint(1, len(words))]) for _ in range(rng.randint(0, 25))]
                     for _ in range(rng.randint(1, 16))]
        if not any(documents):
            continue
        query = [rng.choice([*words, "unknown"]) for _ in range(rng.randint(1, 10))]
        assert FactIndex(documents).get_scores(query) == BM25Okapi(documents).get_scores(query).tolist()


def test_a_knowledge_base_search_ranks_tied_sections_in_the_knowledge_bases_order() -> None:
    sections = [Section(f"kb/s.md#{i}", "Plans", "seats pricing annual" if i in (1, 2, 5) else "kickoff call agenda")
                for i in range(8)]
    found = KnowledgeBase(sections).search("pricing", k=2, min_score=0.0)
    assert [p.source for p in found] == ["kb/s.md#1", "kb/s.md#2"]
    assert found[0].score == found[1].score > 0
