"""The endpoints' contracts, against the real app on its embedded defaults (no keys, no Redis)."""

from __future__ import annotations

import json
import re

from fastapi.testclient import TestClient

from tests.conftest import LEAD, LEAD_NO_SCORE
from tools.ports import free_port

V2 = "/ai/router/v2"


def ask(client: TestClient, query: str, context: dict | None = None, path: str = V2, **headers: str):
    hdrs = {"X-User-ID": "rep-1", **headers}
    return client.post(path, json={"query": query, "context": context or {}}, headers=hdrs)


def test_v2_answers_the_runbook_health_check_with_every_contract_field(client: TestClient) -> None:
    r = ask(client, "health check")
    assert r.status_code == 200
    body = r.json()
    for field in ("request_id", "intent", "provider", "model", "answer", "modal", "citations", "fallback",
                  "latency_ms"):
        assert field in body, field
    assert body["provider"] == "local"
    assert body["intent"] == "conversational"
    assert body["fallback"] == {"used": True, "reason": "no_provider_configured",
                                "failures": ["none:no_provider_configured"]}
    assert body["latency_ms"]["total"] >= body["latency_ms"]["classify"] >= 0
    assert {"rate_limit", "classify", "retrieve", "generate"} <= set(body["latency_ms"])
    assert r.headers["x-request-id"] == body["request_id"]


def test_supplied_request_id_is_echoed_and_used(client: TestClient) -> None:
    r = ask(client, "hello", **{"X-Request-ID": "req-abc-123"})
    assert r.headers["x-request-id"] == "req-abc-123"
    assert r.json()["request_id"] == "req-abc-123"


def test_hostile_request_id_is_replaced_not_echoed(client: TestClient) -> None:
    r = ask(client, "hello", **{"X-Request-ID": "x" * 500})
    assert r.headers["x-request-id"] != "x" * 500
    assert len(r.json()["request_id"]) == 32


def test_rag_answer_cites_the_lead_field_it_used(client: TestClient) -> None:
    r = ask(client, "what's their budget?", {"lead": LEAD_NO_SCORE})
    body = r.json()
    assert body["intent"] == "rag"
    sources = [c["source"] for c in body["citations"]]
    assert "lead.budget" in sources
    assert "$40k" in body["answer"]


def test_rag_answer_cites_the_knowledge_base_section(client: TestClient) -> None:
    body = ask(client, "does our product support SSO with Okta?").json()
    assert body["intent"] == "rag"
    assert any(c["source"].startswith("kb/security-and-sso.md#") for c in body["citations"])


def test_email_request_opens_the_composer_with_a_draft_to_the_lead(client: TestClient) -> None:
    body = ask(client, "draft a follow-up email to dana", {"lead": LEAD}).json()
    assert body["intent"] == "modal"
    assert body["modal"]["type"] == "email_composer"
    payload = body["modal"]["payload"]
    assert payload["to"] == "dana@northwind.io"
    assert payload["subject"] and "Dana" in payload["body"]
    assert body["fallback"]["reason"] == "provider_unavailable"


def test_score_request_opens_insights_only_when_the_lead_has_a_score(client: TestClient) -> None:
    with_score = ask(client, "show me this lead's score", {"lead": LEAD}).json()
    assert with_score["intent"] == "modal"
    assert with_score["modal"]["type"] == "lead_insights"
    assert with_score["modal"]["payload"]["leadScore"] == 82

    without = ask(client, "show me this lead's score", {"lead": LEAD_NO_SCORE}).json()
    assert without["intent"] == "rag"
    assert without["modal"] is None
    assert "no lead score or AI insights" in without["answer"]


def test_modal_heuristics_off_answers_the_same_request_without_a_modal(make_client) -> None:
    client = make_client(ivy_modal_heuristics=False)
    body = ask(client, "draft a follow-up email to dana", {"lead": LEAD}).json()
    assert body["intent"] == "conversational"
    assert body["modal"] is None


def test_organic_off_drops_suggestions(make_client) -> None:
    on = ask(make_client(), "what's their budget?", {"lead": LEAD}).json()
    off = ask(make_client(ivy_organic_enabled=False), "what's their budget?", {"lead": LEAD}).json()
    assert on["suggestions"]
    assert off["suggestions"] == []


def test_v1_keeps_its_contract_and_never_opens_a_modal(client: TestClient) -> None:
    r = ask(client, "draft a follow-up email to dana", {"lead": LEAD}, path="/ai/router/")
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"request_id", "response", "intent", "provider", "model"}
    assert body["intent"] == "conversational"
    assert ask(client, "what's their budget", {"lead": LEAD}, path="/ai/router/").json()["intent"] == "rag"


def test_v1_without_the_trailing_slash_answers_instead_of_redirecting(client: TestClient) -> None:
    r = ask(client, "what's their budget", {"lead": LEAD}, path="/ai/router")
    assert r.status_code == 200 and not r.history
    assert set(r.json()) == {"request_id", "response", "intent", "provider", "model"}


def test_health_says_a_redis_that_is_not_configured_is_not_configured_and_stays_200(client: TestClient) -> None:
    r = client.get("/health")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "checks": {"redis": {"configured": False, "ok": None, "latency_ms": None,
                                                             "backend": "memory"}}}


def test_router_health_says_degraded_with_the_reason_while_only_the_offline_provider_answers(
        client: TestClient) -> None:
    body = client.get("/ai/router/health").json()
    assert body["status"] == "degraded"
    assert body["providers"]["chain"] == ["local"]
    assert len(body["degraded_reasons"]) == 1 and "GEMINI_API_KEY" in body["degraded_reasons"][0]
    assert client.get("/health").status_code == 200


def test_router_health_is_ok_with_a_provider_and_degraded_once_its_breaker_opens(make_client) -> None:
    client = make_client(gemini_api_key="demo-key-for-health", gemini_base_url=f"http://127.0.0.1:{free_port()}",
                         ivy_breaker_min_calls=1, ivy_breaker_consecutive=1)
    body = client.get("/ai/router/health").json()
    assert (body["status"], body["degraded_reasons"], body["providers"]["chain"]) == ("ok", [], ["gemini", "local"])
    assert ask(client, "hello").json()["provider"] == "local"  # nobody listens there: the breaker opens
    body = client.get("/ai/router/health").json()
    assert body["providers"]["circuit_breakers"]["gemini"]["state"] == "open"
    assert body["status"] == "degraded" and "circuit breaker is open" in body["degraded_reasons"][0]
    assert client.get("/health").status_code == 200


def test_router_health_shows_latency_per_intent_breakers_flags_and_limits(client: TestClient) -> None:
    ask(client, "hello")
    ask(client, "what's their budget?", {"lead": LEAD})
    body = client.get("/ai/router/health").json()
    intents = body["latency"]["intents"]
    assert intents["conversational"]["count"] == 1 and intents["rag"]["count"] == 1
    assert {"p50_ms", "p95_ms", "p99_ms"} <= set(intents["rag"])
    assert body["latency"]["error_rate"] == 0.0
    assert body["providers"]["chain"] == ["local"]
    assert body["providers"]["configured"]["gemini"] == {"model": "gemini-2.5-flash", "key_set": False}
    assert body["flags"] == {"IVY_MODAL_HEURISTICS": True, "IVY_ORGANIC_ENABLED": True}
    assert body["rate_limit"]["AI_RATE_LIMIT_PER_MIN"] == 60
    assert body["knowledge_base"]["warm"] is True
    assert body["version"] and body["uptime_seconds"] >= 0


def test_metrics_expose_latency_histograms_by_endpoint_intent_and_provider(client: TestClient) -> None:
    ask(client, "hello")
    text = client.get("/metrics").text
    assert 'ivy_request_latency_seconds_bucket{endpoint="v2",intent="conversational",le="1.5",provider="local"}' \
        in text
    assert 'le="2.2"' in text
    assert 'ivy_requests_total{endpoint="v2",intent="conversational",provider="local",status="200"} 1.0' in text


def test_openapi_describes_both_router_endpoints(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert {"/ai/router/v2", "/ai/router/", "/health", "/ai/router/health", "/metrics"} <= set(spec["paths"])
    schemas = spec["components"]["schemas"]
    assert "query" in schemas["RouterRequest"]["properties"]
    assert "citations" in schemas["RouterResponse"]["properties"]
    v2 = spec["paths"]["/ai/router/v2"]["post"]
    assert v2["requestBody"]["content"]["application/json"]["schema"]["$ref"] == "#/components/schemas/RouterRequest"
    assert {"200", "400", "413", "422", "429"} <= set(v2["responses"])
    assert "X-User-ID" in {p["name"] for p in v2["parameters"]}
    # every $ref resolves
    refs = re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', json.dumps(spec))
    assert refs and set(refs) <= set(schemas)


def test_stream_sends_meta_deltas_and_done(client: TestClient) -> None:
    r = client.post(V2, json={"query": "what's their budget?", "context": {"lead": LEAD}, "stream": True},
                    headers={"X-User-ID": "rep-1"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = [block.split("\n")[0] for block in r.text.strip().split("\n\n")]
    assert events[0] == "event: meta" and events[-1] == "event: done"
    assert "event: delta" in events
    assert "$40k" in r.text


def test_every_suggestion_does_what_it_promises_when_sent_back(client: TestClient) -> None:
    for query, lead in (("draft a follow-up email to dana", LEAD), ("show me this lead's score", LEAD),
                        ("what's their budget?", LEAD), ("what's their budget?", LEAD_NO_SCORE)):
        for suggestion in ask(client, query, {"lead": lead}).json()["suggestions"]:
            body = ask(client, suggestion, {"lead": lead}).json()
            expected = "email_composer" if suggestion.startswith("Draft") else (
                "lead_insights" if "score" in suggestion else None)
            assert (body["modal"] or {}).get("type") == expected, suggestion
            assert body["intent"] != "conversational", suggestion


def test_a_modal_under_the_confidence_gate_is_answered_without_a_panel(make_client) -> None:
    strict = make_client(ivy_modal_min_confidence=0.95)
    body = ask(strict, "draft a follow-up email to dana", {"lead": LEAD}).json()
    assert (body["intent"], body["modal"]) == ("conversational", None)
    assert any(r.startswith("gate:modal_confidence_0.92_below_0.95") for r in body["intent_detail"]["reasons"])
    insights = ask(strict, "show me this lead's score", {"lead": LEAD}).json()
    assert (insights["intent"], insights["modal"]) == ("rag", None)
    default = ask(make_client(), "draft a follow-up email to dana", {"lead": LEAD}).json()
    assert default["modal"]["type"] == "email_composer"
