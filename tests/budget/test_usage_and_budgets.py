"""Usage, cost and per-org budgets through the real app, its real adapters and the fake provider
over HTTP (both wire formats), with the in-process store and with a real Redis."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from app.budget import NANO_PER_USD, PriceTable
from app.config.settings import ConfigError, load_settings
from tests.conftest import LEAD_NO_SCORE, FakeProviderThread, read_log

V2 = "/ai/router/v2"
TOKEN = "admin-token-for-tests-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PRICES = PriceTable.load()


def ask(client: TestClient, org: str = "acme", query: str = "what's their budget?", **body: Any) -> Any:
    return client.post(V2, json={"query": query, "context": {"lead": LEAD_NO_SCORE}, **body},
                       headers={"X-User-ID": "rep-1", "X-Org-ID": org})


def fake_cost(fake: FakeProviderThread) -> int:
    """What the fake's own usage counts cost at the shipped prices, in nano-USD."""
    total = 0
    for name, counts in fake.call(lambda: dict(fake.server.usage)).items():
        price = PRICES.get(name.split("/", 1)[1])
        assert price is not None
        total += price.cost(counts["input"], counts["output"])
    return total


@pytest.fixture
def app(make_client, provider_settings):
    def make(**overrides: Any) -> TestClient:
        client: TestClient = make_client(**{**provider_settings, "ivy_admin_token": TOKEN, **overrides})
        return client

    return make


@pytest.mark.parametrize("active", ["gemini", "openai"])
def test_a_response_carries_the_usage_and_cost_the_fake_reported(app, fake_provider: FakeProviderThread,
                                                                 active: str, log_file: Path) -> None:
    r = ask(app(active_model=active))
    assert r.status_code == 200, r.text
    usage = r.json()["usage"]
    (counts,) = fake_provider.call(lambda: list(fake_provider.server.usage.values()))
    assert (usage["input_tokens"], usage["output_tokens"]) == (counts["input"], counts["output"])
    assert [c["role"] for c in usage["calls"]] == ["first"] and not usage["calls"][0]["estimated"]
    assert round(usage["cost_usd"] * NANO_PER_USD) == fake_cost(fake_provider) > 0
    line = next(x for x in read_log(log_file, lambda ls: any(x.get("usage") for x in ls)) if x.get("usage"))
    assert line["usage"]["input"] == counts["input"] and line["usage"]["cost_usd"] == usage["cost_usd"]


def test_a_streamed_done_carries_the_same_usage_as_json(app, fake_provider: FakeProviderThread) -> None:
    client = app()
    with client.stream("POST", V2, json={"query": "what's their budget?", "context": {"lead": LEAD_NO_SCORE},
                                         "stream": True}, headers={"X-User-ID": "rep-1", "X-Org-ID": "acme"}) as r:
        text = "".join(r.iter_text())
    done = json.loads(text.split("event: done\ndata: ", 1)[1].split("\n", 1)[0])
    assert done["usage"]["input_tokens"] > 0 and done["usage"]["cost_usd"] > 0
    assert round(done["usage"]["cost_usd"] * NANO_PER_USD) == fake_cost(fake_provider)


def test_a_failover_bills_only_the_calls_the_provider_answered(app, fake_provider: FakeProviderThread) -> None:
    fake_provider.set_fault("503", provider="gemini")
    usage = ask(app()).json()["usage"]
    assert [(c["provider"], c["role"]) for c in usage["calls"]] == [("openai", "failover")]
    assert round(usage["cost_usd"] * NANO_PER_USD) == fake_cost(fake_provider)


def test_a_hedge_outrun_is_billed_by_estimate_and_said_so(app, fake_provider: FakeProviderThread) -> None:
    fake_provider.set_fault("latency", ms=1500, provider="gemini")
    usage = ask(app(ivy_hedge_initial_delay_ms=100, ivy_hedge_min_delay_ms=50)).json()["usage"]
    roles = {(c["provider"], c["role"], c["estimated"]) for c in usage["calls"]}
    assert ("openai", "hedge", False) in roles and ("gemini", "first", True) in roles
    cancelled = next(c for c in usage["calls"] if c["estimated"])
    assert cancelled["input_tokens"] > 0 and cancelled["output_tokens"] == 0  # the prompt, nothing received


def test_a_cache_hit_costs_nothing_and_says_what_it_saved(app, fake_provider: FakeProviderThread) -> None:
    client = app(ivy_cache_enabled=True)
    first = ask(client).json()
    hit = ask(client).json()
    assert hit["cache"] == "hit"
    assert hit["usage"]["cost_usd"] == 0 and hit["usage"]["calls"] == []
    assert hit["usage"]["saved"]["cost_usd"] == first["usage"]["cost_usd"] > 0


def test_an_unknown_model_is_cost_unknown_never_a_failure(app, fake_provider: FakeProviderThread,
                                                          log_file: Path) -> None:
    client = app(gemini_model="gemini-9-experimental")
    r = ask(client)
    assert r.status_code == 200 and r.json()["provider"] == "gemini"
    assert r.json()["usage"]["cost_usd"] is None and r.json()["usage"]["input_tokens"] > 0
    assert 'ivy_price_unknown_total{model="gemini-9-experimental"}' in client.get("/metrics").text
    warned = [x for x in read_log(log_file, lambda ls: any(x["event"] == "price_unknown" for x in ls))
              if x["event"] == "price_unknown"]
    assert warned and len(warned) <= 2  # at start, and once at the first call: not per request


def test_a_price_file_replaces_the_table(app, fake_provider: FakeProviderThread, tmp_path: Path) -> None:
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"models": {"gemini-2.5-flash": {
        "input": "1", "output": "2", "as_of": "2026-12-01", "source": "https://example.invalid/contract"}}}))
    usage = ask(app(ivy_price_file=prices)).json()["usage"]
    assert round(usage["cost_usd"] * NANO_PER_USD) == (usage["input_tokens"] * 1 + usage["output_tokens"] * 2) * 1000


def test_a_bad_price_file_or_budget_stops_the_start_naming_the_variable(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"models": {"m": {"input": "0.0001", "output": "1", "as_of": "x", "source": "y"}}}))
    monkeypatch.setenv("IVY_PRICE_FILE", str(prices))
    with pytest.raises(ConfigError, match=r"IVY_PRICE_FILE.*m\.input"):
        load_settings()
    monkeypatch.delenv("IVY_PRICE_FILE")
    monkeypatch.setenv("IVY_BUDGET_DEFAULT", "50 dollars a month")
    with pytest.raises(ConfigError, match=r"IVY_BUDGET_DEFAULT.*usd/month"):
        load_settings()


def test_every_shipped_price_has_its_date_and_source() -> None:
    assert {"gemini-2.5-flash", "gpt-4.1-mini"} <= set(PRICES.prices)
    for price in PRICES.prices.values():
        assert price.source.startswith("https://") and len(price.as_of) == 10 and price.input > 0
        assert len(price.checked) == 10 and price.checked >= price.as_of  # checked against public pricing
        assert price.cached_input <= price.input


def _put(client: TestClient, org: str, limit: Any, unit: str = "usd", period: str = "month") -> Any:
    return client.put("/admin/budgets", headers=AUTH,
                      json={"org_id": org, "limit": limit, "unit": unit, "period": period, "set_by": "alice"})


def test_budgets_are_off_unless_configured(app, fake_provider: FakeProviderThread) -> None:
    client = app()
    r = _put(client, "acme", 1)
    assert r.status_code == 409 and r.json()["error"]["code"] == "budgets_off"
    assert client.get("/admin/budgets", headers=AUTH).json()["enabled"] is False


def test_bad_budget_bodies_are_a_clear_4xx(app, fake_provider: FakeProviderThread) -> None:
    client = app(ivy_budget_default="none")
    for limit, unit in ((0, "usd"), (-1, "usd"), ("x", "usd"), ("", "usd"), (10**13, "tokens"), (1, "eur")):
        assert _put(client, "acme", limit, unit).status_code == 422, (limit, unit)
    assert _put(client, "   ", 1).status_code == 422
    assert client.delete("/admin/budgets", headers=AUTH).status_code == 422
    assert _put(client, "acme", 1.5, "tokens").json()["limit"] == 2  # a fraction of the unit rounds up


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_an_exhausted_budget_refuses_with_429_until_the_period_ends(app, fake_provider: FakeProviderThread,
                                                                    backend: str, request, log_file: Path) -> None:
    extra = {"redis_url": request.getfixturevalue("redis_url")} if backend == "redis" else {}
    client = app(ivy_budget_default="none", **extra)
    assert ask(client).status_code == 200  # no override, no default: not limited
    assert _put(client, "acme", "0.000001").status_code == 200  # below one worst case
    r = ask(client)
    assert r.status_code == 429 and r.json()["error"]["code"] == "budget_exhausted"
    assert 0 < int(r.headers["Retry-After"]) <= 31 * 86_400
    assert ask(client, org="other").status_code == 200  # other orgs are not touched
    with client.stream("POST", V2, json={"query": "hi", "stream": True},
                       headers={"X-User-ID": "rep-1", "X-Org-ID": "acme"}) as s:
        assert s.status_code == 429  # before meta: a plain 429, not an event
    row = next(o for o in client.get("/admin/budgets", headers=AUTH).json()["orgs"] if o["org_id"] == "acme")
    assert row["spent"] == 0 and row["reserved"] == 0 and row["set_by"] == "alice"
    refused = read_log(log_file, lambda ls: any(x["event"] == "budget_exhausted" for x in ls))
    assert any(x["event"] == "budget_exhausted" for x in refused)


def test_offline_mode_answers_from_the_offline_provider_and_says_why(app, fake_provider: FakeProviderThread) -> None:
    client = app(ivy_budget_default="0.000001 usd/day", ivy_budget_exhausted="offline")
    body = ask(client).json()
    assert body["provider"] == "local" and body["fallback"]["reason"] == "budget_exhausted"
    assert body["usage"]["calls"] == [] and not fake_provider.requests_for("gemini")


def test_a_token_budget_counts_tokens_and_stops_at_its_limit(app, fake_provider: FakeProviderThread,
                                                             redis_url: str) -> None:
    client = app(ivy_budget_default="none", redis_url=redis_url)
    assert _put(client, "acme", 1_000_000, "tokens", "day").status_code == 200
    used = sum(u["input_tokens"] + u["output_tokens"] for u in (ask(client).json()["usage"] for _ in range(3)))
    row = next(o for o in client.get("/admin/budgets", headers=AUTH).json()["orgs"] if o["org_id"] == "acme")
    assert row["spent"] == used and row["unit"] == "tokens" and row["period"] == "day" and row["reserved"] == 0
    assert client.delete("/admin/budgets?org_id=acme&set_by=alice", headers=AUTH).json()["deleted"] is True


def test_spend_after_settlement_equals_the_fakes_usage_to_the_cent(app, fake_provider: FakeProviderThread,
                                                                   redis_url: str, log_file: Path) -> None:
    client = app(ivy_budget_default="10 usd/month", redis_url=redis_url, ivy_budget_soft_threshold=0.000001)
    costs = []
    for i, active in enumerate(["gemini", "openai"] * 3):
        client.put("/admin/flags", headers=AUTH, json={"ACTIVE_MODEL": active, "set_by": "t"})
        costs.append(ask(client, query=f"what's their budget? {i}").json()["usage"]["cost_usd"])
    snapshot = client.get("/admin/budgets", headers=AUTH).json()
    (top,) = snapshot["top_spenders"]
    spent = Decimal(str(top["spent"]))
    assert round(spent * NANO_PER_USD) == fake_cost(fake_provider)  # exact, in nano-USD
    assert round(spent, 2) == round(Decimal(fake_cost(fake_provider)) / NANO_PER_USD, 2)
    assert abs(float(spent) - sum(costs)) < 1e-9
    raw = redis.Redis.from_url(redis_url)
    month = next(k for k in raw.keys("ivy:budget:{o:acme}:*") if not k.endswith((b":holds", b":limit")))
    assert raw.hget(month, "reserved") == b"0"  # every reservation settled
    soft = [x for x in read_log(log_file, lambda ls: any(x["event"] == "budget_soft_threshold" for x in ls))
            if x["event"] == "budget_soft_threshold"]
    assert len(soft) == 1  # once per org and period, not per request
