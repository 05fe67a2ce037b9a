"""The spans of one request through the real app, its real adapters and the fake provider over HTTP
(decoded from the OTLP bytes the exporter sends, tests/otlp.py): a span per stage under the server
span, one CLIENT span per provider attempt under generate, named and attributed by the
OpenTelemetry GenAI conventions, each child starting and ending inside its parent; a failover's two
attempts; a cache hit with no generate at all.
Races on a fake clock (hedges, cancellations, the deadline) are in tests/providers/test_race_spans.py."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.observability import tracing
from tests.conftest import LEAD, FakeProviderThread
from tests.otlp import Received, ReceivedSpan

V2 = "/ai/router/v2"
QUERY = "what's their budget for the Zanzibar rollout?"


@pytest.fixture
def exporter() -> Received:
    return Received()


@pytest.fixture
def traced(make_client: Callable[..., TestClient], exporter: Received,
           provider_settings: dict[str, Any]) -> Callable[..., TestClient]:
    def make(**overrides: Any) -> TestClient:
        client: TestClient = make_client(span_exporter=exporter, **{**provider_settings, **overrides})
        return client
    return make


def by_name(exporter: Received) -> dict[str, list[ReceivedSpan]]:
    spans: dict[str, list[ReceivedSpan]] = {}
    for span in exporter.get_finished_spans():
        spans.setdefault(span.name, []).append(span)
    return spans


def parent_of(span: ReceivedSpan, spans: list[ReceivedSpan]) -> ReceivedSpan:
    assert span.parent_id is not None
    return next(s for s in spans if s.span_id == span.parent_id)


def assert_within(child: ReceivedSpan, parent: ReceivedSpan) -> None:
    assert child.start_time and child.end_time and parent.start_time and parent.end_time
    assert parent.start_time <= child.start_time <= child.end_time <= parent.end_time, (child.name, parent.name)


def test_a_streamed_answer_has_a_span_per_stage_and_one_attempt_span_under_generate(
        traced: Callable[..., TestClient], exporter: Received) -> None:
    client = traced(active_model="gemini", ivy_cache_enabled=False)
    with client.stream("POST", V2, json={"query": QUERY, "context": {"lead": LEAD}, "stream": True},
                       headers={"X-User-ID": "rep-1"}) as r:
        body = "".join(r.iter_text())
    assert r.status_code == 200 and "event: done" in body
    everything = exporter.get_finished_spans()
    spans = by_name(exporter)
    (server,) = spans["POST /ai/router/v2"]
    for stage in ("rate_limit", "classify", "retrieve", "cache", "generate", "cache_store"):
        (span,) = spans[stage]
        assert parent_of(span, list(everything)) is server
        assert_within(span, server)
    assert spans["classify"][0].attributes["ivy.intent"] == "rag"
    assert spans["retrieve"][0].attributes["ivy.passages"] >= 1
    assert spans["rate_limit"][0].attributes["ivy.rate_limit"] == "allowed"
    assert spans["cache"][0].attributes["ivy.cache"] == "bypass"
    assert spans["generate"][0].attributes["ivy.streamed"] is True
    (attempt,) = spans["chat gemini-2.5-flash"]
    assert attempt.kind == tracing.CLIENT and parent_of(attempt, list(everything)) is spans["generate"][0]
    assert_within(attempt, spans["generate"][0])
    attrs = attempt.attributes
    assert {k: attrs[k] for k in ("gen_ai.operation.name", "gen_ai.provider.name", "gen_ai.request.model",
                                  "gen_ai.response.model", "ivy.attempt.role", "ivy.attempt.outcome")} == {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "gcp.gemini",
        "gen_ai.request.model": "gemini-2.5-flash", "gen_ai.response.model": "gemini-2.5-flash",
        "ivy.attempt.role": "first", "ivy.attempt.outcome": "won"}
    assert attrs["gen_ai.request.max_tokens"] > 0 and attrs["gen_ai.response.finish_reasons"] == ("STOP",)
    assert attrs["gen_ai.usage.input_tokens"] > 0 and attrs["gen_ai.usage.output_tokens"] > 0
    (first_token,) = [e for e in attempt.events if e.name == "ivy.first_token"]
    assert attempt.start_time < first_token.timestamp < attempt.end_time  # the stream went on after it
    assert not attempt.error
    recorded = json.dumps([s.attributes for s in everything], default=str)
    assert "Zanzibar" not in recorded and "Fake answer" not in recorded  # neither query nor answer


def test_a_failed_over_request_has_one_span_per_attempt_the_failure_marked(
        traced: Callable[..., TestClient], exporter: Received,
        fake_provider: FakeProviderThread) -> None:
    fake_provider.set_fault("503", provider="gemini")
    client = traced(active_model="gemini")
    r = client.post(V2, json={"query": "hello there, how are you"}, headers={"X-User-ID": "rep-1"})
    assert r.status_code == 200 and r.json()["provider"] == "openai"
    everything = list(exporter.get_finished_spans())
    spans = by_name(exporter)
    (generate,) = spans["generate"]
    (failed,) = spans["chat gemini-2.5-flash"]
    (failover,) = spans["chat gpt-4.1-mini"]
    for attempt in (failed, failover):
        assert parent_of(attempt, everything) is generate
        assert_within(attempt, generate)
    f, o = failed.attributes, failover.attributes
    assert (f["ivy.attempt.role"], f["ivy.attempt.outcome"], f["error.type"]) == ("first", "failed", "unavailable")
    assert failed.error and "gen_ai.usage.output_tokens" not in f
    assert (o["ivy.attempt.role"], o["ivy.attempt.outcome"], o["gen_ai.provider.name"]) == (
        "failover", "won", "openai")
    assert o["gen_ai.response.finish_reasons"] == ("stop",)
    assert failed.end_time <= failover.start_time  # an error fails over once it is known


def test_a_cache_hit_has_its_stages_and_no_generate_or_attempt_span(
        traced: Callable[..., TestClient], exporter: Received) -> None:
    client = traced(ivy_cache_enabled=True, ivy_cache_warmup_per_min=0)
    ask = {"query": "hello there, how are you"}
    assert client.post(V2, json=ask, headers={"X-User-ID": "rep-1"}).json()["cache"] == "miss"
    exporter.clear()
    assert client.post(V2, json=ask, headers={"X-User-ID": "rep-1"}).json()["cache"] == "hit"
    spans = by_name(exporter)
    assert sorted(spans) == ["POST /ai/router/v2", "cache", "classify", "rate_limit", "retrieve"]
    assert spans["cache"][0].attributes["ivy.cache"] == "hit"
    assert spans["POST /ai/router/v2"][0].attributes["ivy.cache"] == "hit"


def test_a_refused_request_has_its_rate_limit_span_with_the_bucket_and_no_error(
        traced: Callable[..., TestClient], exporter: Received) -> None:
    client = traced(ai_rate_limit_per_min=1)
    client.post(V2, json={"query": "hi"}, headers={"X-User-ID": "rep-2"})
    exporter.clear()
    assert client.post(V2, json={"query": "hi"}, headers={"X-User-ID": "rep-2"}).status_code == 429
    spans = by_name(exporter)
    assert sorted(spans) == ["POST /ai/router/v2", "rate_limit"]
    (limit,) = spans["rate_limit"]
    assert limit.attributes == {"ivy.rate_limit": "refused", "ivy.bucket": "burst"}
    assert not limit.error


def test_an_email_draft_has_its_tool_span_after_generate(
        traced: Callable[..., TestClient], exporter: Received) -> None:
    client = traced(active_model="openai")
    r = client.post(V2, json={"query": "draft a follow-up email to dana", "context": {"lead": LEAD}},
                    headers={"X-User-ID": "rep-1"})
    assert r.status_code == 200 and r.json()["modal"]["type"] == "email_composer"
    spans = by_name(exporter)
    (generate,), (tool,) = spans["generate"], spans["tool"]
    assert generate.end_time <= tool.start_time
    assert tool.attributes == {"ivy.tool": "email_json"}  # the model's JSON held: no fallback
    assert parent_of(tool, list(exporter.get_finished_spans())).name == "POST /ai/router/v2"
