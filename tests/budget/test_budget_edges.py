"""The budget's edges: a Redis that stops mid-run (fail closed and open, said once per 10 s), a
hedge the org's budget refuses, a client that leaves while its call is reserved, settlements
written after the response, and what /ai/router/health says about budgets."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from fastapi.testclient import TestClient

from app.budget import Budgets, Limit, MemoryBudgetStore, PriceTable, RedisBudgetStore
from app.budget.estimate import upper_bound
from app.observability.logging import configure_logging, shutdown_logging
from app.observability.metrics import Metrics
from app.providers.base import GenerationRequest
from app.providers.links import Trace
from tests.conftest import FakeProviderThread, read_log
from tests.providers.conftest import _make_request
from tests.providers.test_race import Setup
from tests.scripted import Call, FakeClock
from tests.support import RedisProcess, raw_ask, uvicorn_server

TOKEN = "admin-token-for-tests-0123456789"
SYSTEM, PROMPT = "You are Ivy.", "What is their budget?"


class Ticks:
    """An injected clock for the once-per-10-s warning."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def budgets(store: Any, *, fail_open: bool, clock: Ticks | None = None, limit: str = "1000000 tokens/day"
            ) -> Budgets:
    return Budgets(PriceTable.load(), store, Metrics(), default=Limit.parse(limit), enabled=True,
                   exhausted="refuse", soft_threshold=0.8, fail_open=fail_open, hold_seconds=68,
                   clock=clock or Ticks())


def warnings(log_file: Path) -> list[dict[str, Any]]:
    return [x for x in read_log(log_file, lambda ls: any(x["event"] == "budget_store_unavailable" for x in ls))
            if x["event"] == "budget_store_unavailable"]


@pytest.mark.parametrize("fail_open", [False, True])
async def test_a_redis_stopped_mid_run_fails_each_call_the_chosen_way_and_says_so_once_per_10s(
        fail_open: bool, log_file: Path) -> None:
    configure_logging(log_file, max_bytes=10 * 1024 * 1024, backups=1)
    ticks = Ticks()
    with RedisProcess() as server:
        client = aioredis.Redis.from_url(server.url, socket_timeout=1)
        b = budgets(RedisBudgetStore(client), fail_open=fail_open, clock=ticks)
        tab = b.tab("o:acme", SYSTEM, PROMPT, 100, "conversational")
        assert await tab.prepay(["gpt-4.1-mini"]) is None and tab.prepaid is not None
        assert tab.prepaid.amount == upper_bound(SYSTEM, PROMPT) + 100
        server.stop()
        outcomes = []
        for _ in range(25):  # 25 calls over 25 s of the injected clock
            ticks.now += 1
            later = b.tab("o:acme", SYSTEM, PROMPT, 100, "conversational")
            outcomes.append((await later.prepay(["gpt-4.1-mini"]), later.prepaid))
        await client.aclose()
    health = await b.health()
    shutdown_logging()
    if fail_open:
        assert all(refusal is None and hold is not None and hold.amount == 0 for refusal, hold in outcomes)
    else:
        assert all(refusal is not None and refusal.reason == "budget_unavailable" for refusal, _ in outcomes)
    lines = warnings(log_file)
    assert len(lines) == 3  # at 1 s, 11 s and 21 s of the outage
    assert all(x["fail_open"] is fail_open and x["op"] == "reserve" for x in lines)
    assert [x["failures_so_far"] for x in lines] == [1, 11, 21]
    assert b.store_ok is False and health["store_reachable"] is False


def test_fail_closed_with_redis_stopped_mid_run_answers_429_never_5xx(make_client: Any,
                                                                      provider_settings: dict[str, Any],
                                                                      fake_provider: FakeProviderThread) -> None:
    with RedisProcess() as server:
        client: TestClient = make_client(**provider_settings, redis_url=server.url, ai_rate_limit_fail_open=False,
                                         ivy_budget_default="1 usd/month", redis_timeout_ms=500)
        ask = lambda: client.post("/ai/router/v2", json={"query": "hello there"},  # noqa: E731
                                  headers={"X-User-ID": "rep-1", "X-Org-ID": "acme"})
        before = [ask().status_code for _ in range(5)]
        server.stop()
        during = [ask() for _ in range(10)]
        health = client.get("/ai/router/health").json()["budgets"]
    assert before == [200] * 5
    assert [r.status_code for r in during] == [429] * 10  # the limiter, then the budget: closed, not a 5xx
    assert all(r.headers.get("Retry-After") for r in during)
    assert health["fail_mode"] == "closed" and health["store_reachable"] is False and health["enabled"] is True


async def test_a_hedge_the_orgs_budget_refuses_takes_nothing_from_the_hedge_budget() -> None:
    clock = FakeClock()
    try:
        s = Setup(clock)
        request: GenerationRequest = _make_request()
        worst = upper_bound(request.system, request.prompt) + request.max_output_tokens
        b = budgets(MemoryBudgetStore(), fail_open=True, limit=f"{worst} tokens/day")  # room for one call
        s.chain.budgets = b
        s.gemini.script = [Call(ttft=1.0)]  # slow past the hedge delay: a hedge is asked for
        tab = b.tab("o:acme", request.system, request.prompt, request.max_output_tokens, request.intent)
        assert await tab.prepay([link.provider.model for link in s.links]) is None
        trace = Trace()
        chunks = [c async for c in s.chain.stream(request, deadline=s.chain.deadline(), trace=trace, tab=tab)]
    finally:
        clock.close()
    assert chunks and trace.provider == "gemini" and not trace.hedged
    assert ("openai", "budget_exhausted") in [(f.provider, f.reason) for f in trace.failures]
    assert s.chain.budget.snapshot()["hedges"] == 0  # the hedge budget is another request's still
    assert s.openai.started == []


def _budget_row(base: str, org_id: str) -> dict[str, Any]:
    request = urllib.request.Request(base + "/admin/budgets", headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=10) as r:
        orgs = orjson.loads(r.read())["orgs"]
    return next(o for o in orgs if o["org_id"] == org_id)


@pytest.mark.parametrize("stream", [True, False])
def test_a_reservation_whose_client_left_is_released_at_once_not_at_its_expiry(
        redis_url: str, tmp_path: Path, stream: bool) -> None:
    fake = FakeProviderThread()
    fake.set_fault("latency", ms=20_000)  # the call is still waiting when the client goes
    env = {"REDIS_URL": redis_url, "ACTIVE_MODEL": "gemini", "GEMINI_API_KEY": "test-gemini-key-0001",
           "GEMINI_BASE_URL": fake.server.base_url, "IVY_BUDGET_DEFAULT": "none", "IVY_ADMIN_TOKEN": TOKEN,
           "IVY_CACHE_ENABLED": "false", "IVY_HEDGE_ENABLED": "false", "IVY_REQUEST_DEADLINE_SECONDS": "30",
           "IVY_LOG_FILE": str(tmp_path / "ai_router.log")}
    try:
        with uvicorn_server(env) as base:
            put = urllib.request.Request(base + "/admin/budgets", method="PUT", data=orjson.dumps(
                {"org_id": "leaver", "limit": "100", "unit": "usd", "period": "month", "set_by": "test"}),
                headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
            urllib.request.urlopen(put, timeout=10).read()
            with raw_ask(base, "leaver", orjson.dumps({"query": "hello there", "stream": stream})):
                for _ in range(200):  # until the call is made (and so reserved)
                    if fake.call(lambda: len(fake.server.requests)):
                        break
                    time.sleep(0.05)
                held = _budget_row(base, "leaver")["reserved"]
            # The client is gone, 20 s before the provider would answer and 90 s before the hold expires.
            for _ in range(100):
                row = _budget_row(base, "leaver")
                if row["reserved"] == 0:
                    break
                time.sleep(0.1)
            still_waiting = fake.call(lambda: len(fake.server.requests)) == 1
    finally:
        fake.stop()
    assert held > 0
    assert row["reserved"] == 0 and still_waiting  # released when the client left, not at its expiry
    assert 0 < row["spent"] < held  # the prompt, by estimate (a call stopped before it reported)


def test_the_health_page_says_whether_budgets_are_on_where_and_how_they_fail(
        make_client: Any, provider_settings: dict[str, Any], redis_url: str) -> None:
    off = make_client(**provider_settings).get("/ai/router/health").json()["budgets"]
    assert off["enabled"] is False and off["backend"] is None and off["store_reachable"] is None
    on = make_client(**provider_settings, redis_url=redis_url, ivy_budget_default="50 usd/month").get(
        "/ai/router/health").json()["budgets"]
    assert on["enabled"] is True and on["backend"] == "redis" and on["store_reachable"] is True
    assert on["fail_mode"] == "open" and on["default"]["unit"] == "usd" and on["exhausted"] == "refuse"


async def test_settlements_land_after_the_response_and_a_snapshot_waits_for_them(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    b = budgets(RedisBudgetStore(client), fail_open=True)
    tab = b.tab("o:acme", SYSTEM, PROMPT, 100, "conversational")
    assert await tab.prepay(["gpt-4.1-mini"]) is None
    hold = await tab.reserve("gpt-4.1-mini")
    assert hold is not None
    bill = tab.settle(hold, provider="openai", model="gpt-4.1-mini", role="first", input_tokens=10,
                      cached_tokens=0, output_tokens=5, received_chars=20, stopped=False)
    assert bill is not None and b.writing == 1  # the bill at once, its write in the background
    snapshot = await b.snapshot()
    (top,) = snapshot["top_spenders"]  # type: ignore[misc]
    assert top["spent"] == 15 and b.writing == 0
    assert await b.store.spend("o:acme", Limit.parse("1000000 tokens/day"), hold.pid) == (15, 0)  # type: ignore[union-attr]
    await b.aclose()
    await client.aclose()
    await asyncio.sleep(0)
