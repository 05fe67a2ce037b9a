"""Warm-up: the most asked questions answered again at start and before their entry expires, within
the per-minute budget, off the request path; through the real app and on the Warmer itself."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from fastapi.testclient import TestClient

from app import pipeline
from app.cache import AnswerCache, CachedAnswer, CacheKey, MemoryBackend, Recipe, RedisBackend, Warmer
from app.observability.metrics import Metrics
from tests.conftest import FakeProviderThread

V2 = "/ai/router/v2"


def _key(n: int, org: str = "o1") -> CacheKey:
    return CacheKey(org, f"{n:064x}")


async def test_the_hottest_questions_are_refreshed_first_within_the_budget() -> None:
    cache = AnswerCache(MemoryBackend(100), Metrics(), ttl=3600)
    warmer = Warmer(cache, None, per_minute=2)
    for n, asks in ((1, 5), (2, 9), (3, 1)):
        for _ in range(asks):
            warmer.asked(_key(n), {"query": f"q{n}"})
    asked: list[Recipe] = []

    async def refresh(recipe: Recipe) -> bool:
        asked.append(recipe)
        return True

    assert await warmer.refresh_due(refresh) == 2
    assert asked == [{"query": "q2"}, {"query": "q1"}]  # most asked first; the budget (2/min) stops there
    assert await warmer.refresh_due(refresh) == 0  # the minute's budget is spent
    assert warmer.snapshot()["refreshed"] == 2


async def test_a_fresh_entry_is_left_alone_and_one_near_expiry_is_refreshed() -> None:
    cache = AnswerCache(MemoryBackend(100), Metrics(), ttl=3600)
    warmer = Warmer(cache, None, per_minute=10)
    warmer.asked(_key(1), {"query": "fresh"})
    warmer.asked(_key(2), {"query": "expiring"})
    await cache.store(_key(1), CachedAnswer("gemini", "m", "a"))
    await cache.backend.set(_key(2), CachedAnswer("gemini", "m", "b").dumps(), 30)  # within the last fifth
    asked: list[Recipe] = []

    async def refresh(recipe: Recipe) -> bool:
        asked.append(recipe)
        return True

    await warmer.refresh_due(refresh)
    assert asked == [{"query": "expiring"}]


async def test_counts_and_recipes_are_shared_through_redis(redis_url: str, redis_db: Any) -> None:
    redis = aioredis.Redis.from_url(redis_url)
    try:
        cache = AnswerCache(RedisBackend(redis), Metrics(), ttl=3600)
        first = Warmer(cache, redis, per_minute=10)
        for _ in range(3):
            first.asked(_key(7, "o2"), {"query": "q7"})
        await first.flush()
        restarted = Warmer(cache, redis, per_minute=10)  # another worker, or this one after a restart
        hottest = await restarted.hottest()
        assert [(k, r, asks) for k, r, asks in hottest] == [(_key(7, "o2"), {"query": "q7"}, 3.0)]
        seen: list[Recipe] = []

        async def refresh(recipe: Recipe) -> bool:
            seen.append(recipe)
            return True

        assert await restarted.refresh_due(refresh) == 1
        assert await first.refresh_due(refresh) == 0  # claimed by the other worker for 60 s
    finally:
        await redis.aclose()


def test_the_app_warms_the_most_asked_question_again_after_its_entry_went(
        make_client: Callable[..., TestClient], provider_settings: dict[str, Any],
        fake_provider: FakeProviderThread) -> None:
    app = make_client(**provider_settings, ivy_cache_enabled=True, ivy_cache_warmup_per_min=5)
    state = app.app_state["ivy"]
    deadline = time.monotonic() + 3
    while state.warmer.last_run_at is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert state.warmer.last_run_at is not None  # the first round runs at start, in the background
    headers = {"X-User-ID": "rep-1", "X-Org-ID": "acme"}
    q = {"query": "what's in the starter plan?"}
    assert app.post(V2, json=q, headers=headers).json()["cache"] == "miss"
    app.portal.call(state.cache.purge, None)  # as an expiry would
    before = len(fake_provider.requests_for("gemini"))
    assert app.portal.call(state.warmer.refresh_due, functools.partial(pipeline.refresh_cached, state)) == 1
    assert len(fake_provider.requests_for("gemini")) == before + 1
    assert app.post(V2, json=q, headers=headers).json()["cache"] == "hit"
    assert len(fake_provider.requests_for("gemini")) == before + 1
    warmup = app.get("/ai/router/health").json()["cache"]["warmup"]
    assert warmup["refreshed"] == 1 and warmup["budget_per_min"] == 5 and warmup["state"] != "off"
