"""The CRM context is outsiders' text up to the 64 KiB body limit: what one request reads of it is
bounded (issue 19, item 7), far above any real record, so ordinary retrieval is unchanged."""

from __future__ import annotations

import gc
from typing import Any

import pytest

from app.config import Settings
from app.crm import Flatten, flatten
from app.crm.record import MAX_VALUE_CHARS
from app.intent.classifier import classify
from app.intent.guards import context_names
from app.intent.normalise import MAX_CONTEXT_CHARS, MAX_CONTEXT_VALUES
from app.retrieval.retriever import (
    FACT_INDEXES_KEPT,
    MAX_LIST_ITEMS,
    MAX_PASSAGE_CHARS,
    MAX_PASSAGES,
    MAX_QUERY_TERMS,
    KnowledgeBase,
    context_passages,
    fact_index,
    retrieve,
)
from tests.conftest import LEAD


@pytest.fixture(scope="module")
def kb() -> KnowledgeBase:
    return KnowledgeBase.from_folder(Settings(_env_file=None).ivy_knowledge_dir)


def test_a_context_with_10000_notes_makes_at_most_max_list_items_passages_of_them() -> None:
    passages = context_passages({"lead": LEAD, "notes": [f"note {i}" for i in range(10_000)]})
    notes = [p for p in passages if p.source.startswith("notes[")]
    assert [p.source for p in notes] == [f"notes[{i}]" for i in range(MAX_LIST_ITEMS)]
    assert len(passages) <= MAX_PASSAGES


def test_a_lead_list_of_10000_items_leaves_room_for_the_notes() -> None:
    passages = context_passages({"lead": {**LEAD, "tags": ["vip"] * 10_000}, "notes": ["Raj is the CFO"]})
    assert len([p for p in passages if p.source.startswith("lead.tags[")]) == MAX_LIST_ITEMS
    assert passages[-1].source == "notes[0]"


def test_a_lead_with_10000_fields_makes_at_most_max_passages() -> None:
    passages = context_passages({"lead": {f"field{i}": "x" for i in range(10_000)}, "notes": ["late"]})
    assert len(passages) == MAX_PASSAGES
    assert passages[-1].source == f"lead.field{MAX_PASSAGES - 1}"


def test_deep_and_wide_values_become_passages_of_at_most_max_passage_chars() -> None:
    deep: Any = "bottom"
    for _ in range(190):
        deep = {"note": deep}
    wide = {"body": ["word"] * 20_000}
    passages = context_passages({"notes": [deep, wide, "short"]})
    assert [len(p.text) <= MAX_PASSAGE_CHARS for p in passages] == [True, True, True]
    assert len(passages[1].text) == MAX_PASSAGE_CHARS
    assert passages[2].text == "short"


def test_the_context_walk_stops_after_max_context_values_values() -> None:
    item = {"a": {"b": {"c": "x"}}}  # four values an item
    passages = context_passages({"notes": [item] * MAX_LIST_ITEMS, "emails": [[item] * 40] * MAX_LIST_ITEMS})
    walked = sum(p.text.count("c: x") for p in passages)
    assert MAX_CONTEXT_VALUES // 8 <= walked <= MAX_CONTEXT_VALUES // 4 + 1


def test_text_beyond_max_context_chars_is_not_indexed(kb: KnowledgeBase) -> None:
    filler = ["Quarterly planning went fine. " * 60] * (MAX_CONTEXT_CHARS // 1800 + 1)
    assert sum(map(len, filler)) > MAX_CONTEXT_CHARS
    found = [p.source for p in retrieve("zebra", {"notes": [*filler, "The zebra deal."]}, kb)]
    assert f"notes[{len(filler)}]" not in found
    assert retrieve("zebra", {"notes": ["The zebra deal.", *filler]}, kb)[0].source == "notes[0]"


def test_a_query_is_scored_by_its_first_max_query_terms_terms(kb: KnowledgeBase) -> None:
    lead = {**LEAD, "favouriteAnimal": "zebra"}
    words = " ".join(f"w{i}x" for i in range(MAX_QUERY_TERMS))
    assert "lead.favouriteAnimal" in [p.source for p in retrieve(f"zebra {words}", {"lead": lead}, kb)]
    assert "lead.favouriteAnimal" not in [p.source for p in retrieve(f"{words} zebra", {"lead": lead}, kb)]


def test_the_names_a_question_may_use_are_read_from_the_first_max_context_chars() -> None:
    early = {"notes": ["Raj is the CFO."]}
    late = {"notes": ["q" * MAX_CONTEXT_CHARS, "Raj is the CFO."]}
    assert context_names({"raj", "cfo"}, early) == {"raj", "cfo"}
    assert context_names({"raj", "cfo"}, late) == frozenset()


def test_classifying_and_retrieving_leave_no_garbage_for_the_cyclic_gc(kb: KnowledgeBase) -> None:
    deep: Any = "bottom"
    for _ in range(50):
        deep = {"note": [deep, {"x": 1}]}
    contexts = [{"lead": LEAD, "notes": ["Raj is the CFO", deep], "emails": [{"subject": "Re: price", "body": "ok"}]},
                {"lead": {**LEAD, "tags": ["vip"] * 500}, "activities": [[{"a": {"b": "c"}}] * 30] * 60}]
    gc.collect()
    gc.disable()
    try:
        for context in contexts:
            for query in ("what did Raj say about the price?", "Is Raj the CFO?", "tell me about this lead"):
                classify(query, context)
                retrieve(query, context, kb)
        assert gc.collect() == 0  # all freed by reference counting: no cycle waits for a collection
    finally:
        gc.enable()


def test_a_lead_context_asked_about_again_is_scored_on_the_index_built_the_first_time(kb: KnowledgeBase) -> None:
    context = {"lead": {**LEAD, "favouriteAnimal": "okapi"}, "notes": ["The okapi deal closes in May."]}
    first = retrieve("the okapi deal", context, kb)
    before = fact_index.cache_info()
    again = retrieve("what about the okapi", context, kb)
    after = fact_index.cache_info()
    assert (after.hits - before.hits, after.misses - before.misses) == (1, 0)
    assert "notes[0]" in [p.source for p in first] and "notes[0]" in [p.source for p in again]


def test_an_edited_lead_context_is_answered_from_its_new_facts(kb: KnowledgeBase) -> None:
    first = retrieve("the quokka", {"lead": LEAD, "notes": ["The quokka deal closes in May."]}, kb)
    assert first[0].source == "notes[0]"
    edited = [p.source for p in retrieve("the quokka", {"lead": LEAD, "notes": ["The wombat deal closes in May."]}, kb)]
    assert "notes[0]" not in edited


def test_the_indexes_kept_of_lead_contexts_are_at_most_fact_indexes_kept(kb: KnowledgeBase) -> None:
    for i in range(FACT_INDEXES_KEPT + 20):
        retrieve("the deal", {"notes": [f"Deal number {i} closes in May."]}, kb)
    assert fact_index.cache_info().currsize <= FACT_INDEXES_KEPT


def test_a_scalar_value_flattens_as_its_text_cut_at_max_value_chars_and_spends_one_value() -> None:
    reader = Flatten()
    assert reader("x" * (MAX_VALUE_CHARS + 10)) == "x" * MAX_VALUE_CHARS
    assert (reader(82), reader(True), reader(0.5)) == ("82", "True", "0.5")
    assert reader.left == MAX_CONTEXT_VALUES - 4
    assert flatten("y" * (MAX_VALUE_CHARS + 1)) == "y" * MAX_VALUE_CHARS
    assert flatten({"score": 82, "tags": ["a", "b"]}) == "score: 82; tags: a; b"
