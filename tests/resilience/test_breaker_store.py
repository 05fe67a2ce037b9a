"""The circuit-breaker state shared through Redis: what one worker opens, the others see, for the
cost of one read per provider per second however many requests ask. Reads are counted by the
Redis server itself (INFO commandstats)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from app.resilience.breaker_store import SharedBreakerStore
from tests.support import RedisProcess


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def reads(client: aioredis.Redis) -> int:
    """PTTL commands the server has run so far: one per refresh of the cached state."""
    stats = await client.info("commandstats")
    return int(stats.get("cmdstat_pttl", {}).get("calls", 0))


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    c = aioredis.Redis.from_url(redis_url)
    yield c
    await c.aclose()


async def test_requests_that_find_the_cache_stale_together_share_one_read(client: aioredis.Redis) -> None:
    clock = Clock()
    store = SharedBreakerStore(client, clock=clock)
    other_worker = SharedBreakerStore(client)

    before = await reads(client)
    assert await asyncio.gather(*(store.remaining_open("openai") for _ in range(50))) == [None] * 50
    assert await reads(client) - before == 1

    await other_worker.publish_open("openai", 30, "failure rate 60%")
    assert await store.remaining_open("openai") is None  # still cached: the cost of no read per call
    clock.now += 1.5
    before = await reads(client)
    seen = await asyncio.gather(*(store.remaining_open("openai") for _ in range(50)))
    assert await reads(client) - before == 1
    assert {reason for _, reason in filter(None, seen)} == {"failure rate 60%"}
    assert len([s for s in seen if s is not None]) == 50 and all(0 < left <= 30 for left, _ in filter(None, seen))


async def test_a_caller_cancelled_mid_read_leaves_the_read_to_the_others(client: aioredis.Redis) -> None:
    store = SharedBreakerStore(client)
    await SharedBreakerStore(client).publish_open("gemini", 30, "timeouts")
    callers = [asyncio.create_task(store.remaining_open("gemini")) for _ in range(10)]
    await asyncio.sleep(0)  # every caller is now waiting on the one read, which is on the wire
    callers[0].cancel()
    results = await asyncio.gather(*callers, return_exceptions=True)
    assert isinstance(results[0], asyncio.CancelledError)
    assert all(isinstance(r, tuple) and r[1] == "timeouts" for r in results[1:]), results


async def test_redis_away_falls_back_to_the_last_answer_then_to_in_process_state() -> None:
    clock = Clock()
    with RedisProcess() as server:
        client = aioredis.Redis.from_url(server.url, socket_timeout=0.5)
        store = SharedBreakerStore(client, clock=clock)
        await SharedBreakerStore(client).publish_open("openai", 30, "5xx")
        assert (await store.remaining_open("openai") or (0, ""))[1] == "5xx"
        server.stop()
        clock.now += 1.5
        assert (await store.remaining_open("openai") or (0, ""))[1] == "5xx"  # last answer kept
        assert await SharedBreakerStore(client).remaining_open("openai") is None  # nothing known: closed
        await client.aclose()
