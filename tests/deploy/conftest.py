"""The real service's /metrics, with every series the alert rules and the dashboard query made to exist."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import LEAD_NO_SCORE, FakeProviderThread
from tests.deploy.promql import Exported
from tools.ports import free_port

V2, V1 = "/ai/router/v2", "/ai/router/"


def _ask(client: TestClient, query: str, context: dict[str, Any] | None = None, *, user: str = "rep-1",
         path: str = V2) -> int:
    r = client.post(path, json={"query": query, "context": context or {}}, headers={"X-User-ID": user})
    return r.status_code


@pytest.fixture
def exported(make_client: Callable[..., TestClient], fake_provider: FakeProviderThread,
             provider_settings: dict[str, Any], tmp_path: Path) -> Exported:
    """Scrapes of the app in the situations the alerts are about; each step asserts it happened."""
    scrapes = Exported()

    # Traffic: both SLO intents on v2 and v1, a 422, and the limiter's memory backend; a nightly
    # eval report of its own (a fresh clone has none), so the eval gauges exist.
    reports = tmp_path / "eval_reports"
    reports.mkdir()
    (reports / "20261124.json").write_text(json.dumps({"summary": {"success_rate": 0.9, "intent_accuracy": 0.9,
                                                                         "false_modals": 0}}))
    app = make_client(ivy_eval_reports_dir=reports)
    assert _ask(app, "hello there, how are you") == 200
    assert _ask(app, "what's their budget?", {"lead": LEAD_NO_SCORE}) == 200
    assert _ask(app, "hello", path=V1) == 200
    assert app.post(V2, json={"context": {}}, headers={"X-User-ID": "rep-1"}).status_code == 422
    scrapes.add_scrape(app.get("/metrics").text)

    # 429s: a one-request-a-minute user asking three times.
    limited = make_client(ai_rate_limit_per_min=1)
    assert [_ask(limited, "hello", user="rep-2") for _ in range(3)] == [200, 429, 429]
    scrapes.add_scrape(limited.get("/metrics").text)

    # Redis unreachable: nothing listens on the port, so the limiter fails open.
    no_redis = make_client(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    assert _ask(no_redis, "hello") == 200
    assert no_redis.get("/health").json()["status"] == "degraded"
    scrapes.add_scrape(no_redis.get("/metrics").text)

    # Providers: gemini answers once, then fails with 503s; one failure opens its breaker
    # (min calls 1) and openai answers instead (a fallback).
    providers = make_client(**provider_settings, ivy_breaker_min_calls=1)
    assert providers.post(V2, json={"query": "hello there"}, headers={"X-User-ID": "rep-3"}).json()["provider"] == \
        "gemini"
    fake_provider.set_fault("503", provider="gemini")
    body = providers.post(V2, json={"query": "hello again"}, headers={"X-User-ID": "rep-3"}).json()
    assert body["provider"] == "openai" and body["fallback"]["used"], body
    breakers = providers.get("/ai/router/health").json()["providers"]["circuit_breakers"]
    assert breakers["gemini"]["state"] == "open", breakers
    scrapes.add_scrape(providers.get("/metrics").text)

    fake_provider.clear_faults()
    # The answer cache: a miss, a hit (tokens saved) and a bypass (Cache-Control: no-cache).
    cached = make_client(**provider_settings, ivy_cache_enabled=True, ivy_cache_max_entries=1)
    outcomes = [cached.post(V2, json={"query": q}, headers={"X-User-ID": "rep-5", **h}).json()["cache"]
                for q, h in (("hello cache", {}), ("hello cache", {}), ("hello cache", {"Cache-Control": "no-cache"}),
                             ("another question", {}))]
    assert outcomes == ["miss", "hit", "bypass", "miss"], outcomes
    scrapes.add_scrape(cached.get("/metrics").text)
    cache_down = make_client(**provider_settings, ivy_cache_enabled=True,  # Redis unreachable: no cache
                             redis_url=f"redis://127.0.0.1:{free_port()}/0")
    assert cache_down.post(V2, json={"query": "hello"}, headers={"X-User-ID": "rep-6"}).json()["cache"] == "bypass"
    scrapes.add_scrape(cache_down.get("/metrics").text)

    # A gemini call with no first token after the hedge delay: a hedge to openai answers first.
    hedging = make_client(**provider_settings, ivy_hedge_initial_delay_ms=200)
    fake_provider.set_fault("brownout", provider="gemini", share=1.0, seconds=1.0, times=1)
    hedged = hedging.post(V2, json={"query": "hello once more"}, headers={"X-User-ID": "rep-4"}).json()
    assert hedged["provider"] == "openai" and hedged["fallback"]["reason"] == "slow", hedged
    scrapes.add_scrape(hedging.get("/metrics").text)

    # Budgets: an org over its default (a refusal, the exhaustion crossing), a model without a price,
    # and the budget store unreachable (fails open).
    budgeted = make_client(**provider_settings, ivy_budget_default="0.000001 usd/day")
    assert budgeted.post(V2, json={"query": "hello"}, headers={"X-User-ID": "rep-7", "X-Org-ID": "o1"}
                         ).status_code == 429
    scrapes.add_scrape(budgeted.get("/metrics").text)
    unpriced = make_client(**provider_settings, gemini_model="gemini-x")
    assert unpriced.post(V2, json={"query": "hello"}, headers={"X-User-ID": "rep-7"}).json()["usage"]["cost_usd"] \
        is None
    scrapes.add_scrape(unpriced.get("/metrics").text)
    store_down = make_client(**provider_settings, ivy_budget_default="10 usd/day",
                             redis_url=f"redis://127.0.0.1:{free_port()}/0")
    assert store_down.post(V2, json={"query": "hello"}, headers={"X-User-ID": "rep-8", "X-Org-ID": "o2"}
                           ).status_code == 200
    scrapes.add_scrape(store_down.get("/metrics").text)
    return scrapes
