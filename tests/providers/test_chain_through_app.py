"""The real app, its real adapters and the fake provider server over HTTP: happy paths, every fault,
failover, breakers, the email JSON tool and streaming."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import LEAD, LEAD_NO_SCORE, FakeProviderThread, read_log

V2 = "/ai/router/v2"

QUERIES = {
    "conversational": ("hello there, how are you", {}),
    "rag": ("what's their budget?", {"lead": LEAD_NO_SCORE}),
    "email_composer": ("draft a follow-up email to dana", {"lead": LEAD}),
    "lead_insights": ("show me this lead's score", {"lead": LEAD}),
}


def ask(client: TestClient, kind: str = "conversational", **body: Any) -> dict[str, Any]:
    query, context = QUERIES[kind]
    r = client.post(V2, json={"query": query, "context": context, **body}, headers={"X-User-ID": "rep-1"})
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()
    return result


@pytest.fixture
def app_with_providers(make_client, provider_settings):
    def make(**overrides: Any) -> TestClient:
        client: TestClient = make_client(**{**provider_settings, **overrides})
        return client

    return make


@pytest.mark.parametrize("active", ["gemini", "openai"])
@pytest.mark.parametrize("kind", list(QUERIES))
def test_active_provider_answers_every_intent(app_with_providers, fake_provider: FakeProviderThread,
                                              active: str, kind: str) -> None:
    body = ask(app_with_providers(active_model=active), kind)
    assert body["provider"] == active
    assert body["model"] == ("gemini-2.5-flash" if active == "gemini" else "gpt-4.1-mini")
    assert body["fallback"] == {"used": False, "reason": None, "failures": []}
    sent = fake_provider.requests_for(active)
    assert len(sent) == 1
    assert not fake_provider.requests_for("openai" if active == "gemini" else "gemini")
    wire = json.dumps(sent[0].json)
    if kind == "rag":
        assert "$40k" in wire and "lead.budget" in wire  # the retrieved passage reached the model
        assert body["answer"].startswith("Fake answer to:")
    if kind == "email_composer":
        assert "json" in wire.lower() and "subject" in wire  # JSON mode with the email schema
        assert body["modal"]["type"] == "email_composer"
        assert set(body["modal"]["payload"]) >= {"to", "subject", "body"}
    if kind == "lead_insights":
        assert body["modal"]["payload"]["leadScore"] == 82


def test_active_model_openai_puts_openai_first(app_with_providers) -> None:
    assert app_with_providers(active_model="openai").get("/ai/router/health").json()["providers"]["chain"] == [
        "openai", "gemini", "local"]
    assert app_with_providers().get("/ai/router/health").json()["providers"]["chain"] == [
        "gemini", "openai", "local"]


@pytest.mark.parametrize(
    ("fault", "params", "reason"),
    [
        ("503", {}, "unavailable"),
        ("500", {}, "unavailable"),
        ("429", {"retry_after": 20}, "rate_limited"),
        ("hang", {"seconds": 5}, "slow"),  # outrun by a hedge to openai after the initial hedge delay
        ("reset", {}, "unavailable"),
        ("401", {}, "auth"),
        ("400", {}, "bad_request"),
        ("malformed_body", {}, "malformed_output"),
    ],
)
def test_primary_fault_fails_over_to_the_other_provider(app_with_providers, fake_provider: FakeProviderThread,
                                                        fault: str, params: dict[str, Any], reason: str) -> None:
    fake_provider.set_fault(fault, provider="gemini", **params)
    client = app_with_providers()
    body = ask(client)
    assert body["provider"] == "openai"
    assert body["fallback"] == {"used": True, "reason": reason, "failures": [f"gemini:{reason}"]}
    assert f'ivy_fallbacks_total{{reason="{reason}"}} 1.0' in client.get("/metrics").text


def test_every_provider_down_degrades_to_the_offline_provider(app_with_providers,
                                                              fake_provider: FakeProviderThread) -> None:
    fake_provider.set_fault("503")
    body = ask(app_with_providers(), "rag")
    assert body["provider"] == "local" and body["model"] == "ivy-offline-1"
    assert body["fallback"]["failures"] == ["gemini:unavailable", "openai:unavailable"]
    assert "$40k" in body["answer"] and body["citations"]


def test_rate_limit_with_retry_after_opens_the_breaker_for_that_long(app_with_providers,
                                                                     fake_provider: FakeProviderThread,
                                                                     log_file: Path) -> None:
    fake_provider.set_fault("429", provider="gemini", retry_after=20, times=1)
    client = app_with_providers()
    ask(client)
    breaker = client.get("/ai/router/health").json()["providers"]["circuit_breakers"]["gemini"]
    assert breaker["state"] == "open" and 19 <= breaker["retry_in_seconds"] <= 20
    body = ask(client)  # the fault is gone, but gemini is skipped until the breaker half-opens
    assert body["fallback"]["failures"] == ["gemini:circuit_open"]
    assert len(fake_provider.requests_for("gemini")) == 1
    lines = read_log(log_file, lambda ls: any(x["event"] == "circuit_breaker" for x in ls))
    transition = next(x for x in lines if x["event"] == "circuit_breaker")
    assert (transition["provider"], transition["from_state"], transition["to_state"]) == ("gemini", "closed", "open")
    assert 'ivy_circuit_breaker_state{provider="gemini"} 2.0' in client.get("/metrics").text


def test_rejected_key_opens_the_breaker_and_logs_an_error_naming_the_provider(
        app_with_providers, fake_provider: FakeProviderThread, log_file: Path) -> None:
    fake_provider.set_fault("401", provider="openai")
    client = app_with_providers(active_model="openai")
    assert ask(client)["provider"] == "gemini"
    assert client.get("/ai/router/health").json()["providers"]["circuit_breakers"]["openai"]["state"] == "open"
    lines = read_log(log_file, lambda ls: any(x["event"] == "provider_auth_rejected" for x in ls))
    error = next(x for x in lines if x["event"] == "provider_auth_rejected")
    assert error["level"] == "ERROR" and error["model_provider"] == "openai"
    assert "test-openai-key-0001" not in log_file.read_text()


def test_bad_request_does_not_count_against_the_provider(app_with_providers,
                                                         fake_provider: FakeProviderThread) -> None:
    fake_provider.set_fault("400", provider="gemini")
    client = app_with_providers(ivy_breaker_min_calls=2)
    for _ in range(4):
        ask(client)
    assert client.get("/ai/router/health").json()["providers"]["circuit_breakers"]["gemini"]["state"] == "closed"


def test_failures_open_the_breaker_after_the_minimum_calls(app_with_providers,
                                                           fake_provider: FakeProviderThread) -> None:
    fake_provider.set_fault("503", provider="gemini")
    client = app_with_providers(ivy_breaker_min_calls=3, ivy_breaker_window=5)
    for _ in range(3):
        assert ask(client)["fallback"]["failures"] == ["gemini:unavailable"]
    assert ask(client)["fallback"]["failures"] == ["gemini:circuit_open"]
    assert len(fake_provider.requests_for("gemini")) == 3


def test_breaker_state_is_shared_across_app_instances_on_one_redis(app_with_providers, redis_url: str,
                                                                   fake_provider: FakeProviderThread) -> None:
    a = app_with_providers(redis_url=redis_url, ivy_breaker_min_calls=2)
    b = app_with_providers(redis_url=redis_url, ivy_breaker_min_calls=2)
    fake_provider.set_fault("503", provider="gemini")
    ask(a)
    ask(a)  # a opens gemini's breaker...
    assert a.get("/ai/router/health").json()["providers"]["circuit_breakers"]["gemini"]["state"] == "open"
    before = len(fake_provider.requests_for("gemini"))
    body = ask(b)  # ...and b skips gemini without ever having seen it fail
    assert body["fallback"]["failures"] == ["gemini:circuit_open"]
    assert len(fake_provider.requests_for("gemini")) == before
    breaker = b.get("/ai/router/health").json()["providers"]["circuit_breakers"]["gemini"]
    assert breaker["state"] == "open" and breaker["reason"].startswith("shared:")


def test_email_json_valid_repaired_and_fallback(app_with_providers, fake_provider: FakeProviderThread) -> None:
    client = app_with_providers()
    valid = ask(client, "email_composer")
    assert valid["fallback"]["used"] is False and valid["provider"] == "gemini"

    fake_provider.set_fault("malformed_json", provider="gemini", variant="trailing_comma", times=1)
    repaired = ask(client, "email_composer")
    assert repaired["fallback"]["used"] is False  # json-repair saved the model's own draft
    assert repaired["modal"]["payload"]["subject"] == valid["modal"]["payload"]["subject"]

    fake_provider.set_answer(json_answer={"to": "dana@northwind.io", "body": "no subject here"})
    schema = ask(client, "email_composer")
    assert schema["fallback"]["reason"] == "schema"
    assert schema["modal"]["payload"]["subject"].startswith("Following up")  # _make_email_json_fallback

    fake_provider.set_answer(json_answer="Sorry, I can't write emails.")
    prose = ask(client, "email_composer")
    assert prose["fallback"]["reason"] == "json_parse_error"
    assert prose["modal"]["payload"]["to"] == "dana@northwind.io"


def _events(text: str) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        out.append((lines["event"], json.loads(lines["data"])))
    return out


def test_stream_from_the_active_provider(app_with_providers) -> None:
    r = app_with_providers().post(V2, json={"query": "hello there", "stream": True}, headers={"X-User-ID": "r"})
    events = _events(r.text)
    assert events[-1][0] == "done" and events[-1][1]["provider"] == "gemini"
    text = "".join(data["text"] for name, data in events if name == "delta")
    assert text == events[-1][1]["answer"] and text.startswith("Fake answer to:")


def test_stream_broken_before_the_first_token_fails_over(app_with_providers,
                                                         fake_provider: FakeProviderThread) -> None:
    fake_provider.set_fault("stream_cut", provider="gemini", after=0)
    r = app_with_providers().post(V2, json={"query": "hello there", "stream": True}, headers={"X-User-ID": "r"})
    done = _events(r.text)[-1]
    assert done[0] == "done"
    assert done[1]["provider"] == "openai"
    assert done[1]["fallback"]["failures"] == ["gemini:unavailable"]


def test_stream_cut_mid_way_ends_with_an_error_event(app_with_providers, fake_provider: FakeProviderThread) -> None:
    fake_provider.set_fault("stream_cut", provider="gemini", after=2)
    fake_provider.set_answer("word " * 60)
    r = app_with_providers(gemini_model="gemini-2.5-flash").post(
        V2, json={"query": "hello there", "stream": True}, headers={"X-User-ID": "r"})
    events = _events(r.text)
    assert [name for name, _ in events].count("delta") >= 1
    assert events[-1][0] == "error"
    assert events[-1][1]["code"] == "provider_stream_interrupted" and events[-1][1]["provider"] == "gemini"
    assert "done" not in [name for name, _ in events]


def test_a_stream_cut_mid_answer_is_logged_as_its_own_outcome_not_a_plain_200(
        app_with_providers, fake_provider: FakeProviderThread, log_file) -> None:
    fake_provider.set_fault("stream_cut", provider="gemini", after=2)
    client = app_with_providers()
    r = client.post(V2, json={"query": "hello there", "stream": True},
                    headers={"X-User-ID": "r", "X-Request-ID": "req-cut"})
    assert _events(r.text)[-1][0] == "error"
    lines = read_log(log_file, lambda ls: any(x.get("request_id") == "req-cut" for x in ls))
    line = next(x for x in lines if x.get("event") == "request" and x.get("request_id") == "req-cut")
    assert line["outcome"] == "stream_interrupted" and line["level"] == "WARNING"
    interrupted = next(x for x in lines if x.get("event") == "stream_interrupted")
    assert interrupted["error"]  # the provider's own account of the failure
    assert 'ivy_request_errors_total{code="stream_interrupted"} 1.0' in client.get("/metrics").text


def _comparable(answer: dict[str, Any]) -> dict[str, Any]:
    """An answer less what differs between two askings by design: its timings' values."""
    return {**answer, "latency_ms": sorted(answer["latency_ms"])}


@pytest.mark.parametrize("kind", list(QUERIES))
def test_a_streamed_done_carries_the_same_fields_and_values_as_the_json_answer(
        app_with_providers, kind: str) -> None:
    client = app_with_providers()
    query, context = QUERIES[kind]
    headers = {"X-User-ID": "rep-1", "X-Request-ID": f"req-same-{kind}"}
    whole = client.post(V2, json={"query": query, "context": context}, headers=headers).json()
    streamed = client.post(V2, json={"query": query, "context": context, "stream": True}, headers=headers)
    events = _events(streamed.text)
    name, done = events[-1]
    assert name == "done"
    assert set(done) == set(whole)
    assert _comparable(done) == _comparable(whole)
    assert done["model"] == "gemini-2.5-flash" and done["intent_detail"]["reasons"] == whole["intent_detail"]["reasons"]
    assert "".join(d["text"] for n, d in events if n == "delta") == done["answer"]


def test_a_streamed_request_logs_what_a_json_one_does_and_sends_its_overhead(
        app_with_providers, log_file) -> None:
    client = app_with_providers()
    for rid, stream in (("req-log-json", False), ("req-log-sse", True)):
        r = client.post(V2, json={"query": "hello there", "stream": stream},
                        headers={"X-User-ID": "r", "X-Request-ID": rid})
        assert r.status_code == 200 and float(r.headers["x-ivy-overhead-ms"]) >= 0
    lines = read_log(log_file, lambda ls: sum(x.get("event") == "request" for x in ls) >= 2)
    line = {x["request_id"]: x for x in lines if x.get("event") == "request"}
    json_line, sse_line = line["req-log-json"], line["req-log-sse"]
    for key in ("model", "model_provider", "provider_ms", "provider_calls", "hedged", "intent", "cache"):
        assert key in json_line and key in sse_line, key
    assert sse_line["model"] == json_line["model"] == "gemini-2.5-flash"
    assert "fallback" not in sse_line and "fallback" not in json_line  # none was used
