"""The same token-bucket cases against both backends: in-process and a real Redis server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import redis.asyncio as aioredis

from app.resilience.ratelimit import (
    Limits,
    MemoryRateLimiter,
    RateLimiter,
    RedisRateLimiter,
    normalise_id,
    retry_after_header,
)

Make = Callable[[Limits], Awaitable[tuple[RateLimiter, Callable[[float], Awaitable[None]]]]]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["memory", "redis"])
async def make_limiter(request: pytest.FixtureRequest) -> AsyncIterator[Make]:
    """Returns (limiter, advance): advance moves a fake clock (memory) or waits for real (redis)."""
    clients: list[aioredis.Redis] = []

    async def make(limits: Limits) -> tuple[RateLimiter, Callable[[float], Awaitable[None]]]:
        if request.param == "memory":
            clock = FakeClock()

            async def advance(seconds: float) -> None:
                clock.now += seconds

            return MemoryRateLimiter(limits, clock=clock), advance
        url: str = request.getfixturevalue("redis_url")
        client = aioredis.Redis.from_url(url)
        clients.append(client)
        return RedisRateLimiter(client, limits), asyncio.sleep

    yield make
    for c in clients:
        await c.aclose()


def limits(per_min: int = 60, burst: int | None = None, org_per_min: int = 6000, org_burst: int | None = None,
           burst_window: float = 10.0) -> Limits:
    return Limits(per_min, burst or per_min, org_per_min, org_burst or org_per_min, burst_window)


async def admitted(limiter: RateLimiter, n: int, user: str = "u:a", org: str | None = "o:x") -> int:
    return sum([(await limiter.check(user, org)).allowed for _ in range(n)])


async def test_burst_admits_exactly_the_capacity_then_refuses(make_limiter: Make) -> None:
    limiter, _ = await make_limiter(limits(per_min=6, burst=5))
    assert await admitted(limiter, 8) == 5
    refusal = await limiter.check("u:a", "o:x")
    assert not refusal.allowed
    assert refusal.bucket == "burst"  # the whole capacity went at once
    assert refusal.remaining == 0
    assert refusal.limit == 5


async def test_sustained_overuse_is_refused_as_user_not_burst(make_limiter: Make) -> None:
    # 4 tokens, 2 per second; the burst window is 0.5 s so the real-time Redis case stays quick.
    limiter, advance = await make_limiter(limits(per_min=120, burst=4, burst_window=0.5))
    for _ in range(6):  # three requests per 0.3 s against a refill of 0.6: the bucket drains slowly
        await advance(0.3)
        await admitted(limiter, 3)
    refusal = await limiter.check("u:a", "o:x")
    assert not refusal.allowed
    assert refusal.bucket == "user"


async def test_steady_rate_refills_continuously(make_limiter: Make) -> None:
    limiter, advance = await make_limiter(limits(per_min=120, burst=2))  # 2 tokens per second
    assert await admitted(limiter, 3) == 2
    await advance(0.6)  # ~1.2 tokens back
    assert await admitted(limiter, 3) == 1


async def test_retry_after_is_the_time_until_the_next_token(make_limiter: Make) -> None:
    limiter, _ = await make_limiter(limits(per_min=6, burst=1))  # one token per 10 s
    assert (await limiter.check("u:a", None)).allowed
    refusal = await limiter.check("u:a", None)
    assert 9.0 < refusal.retry_after <= 10.0
    assert retry_after_header(refusal.retry_after) == "10"


async def test_refused_request_takes_no_token(make_limiter: Make) -> None:
    # The org bucket is empty, so the user's requests are refused by the org; the user's own
    # bucket must stay full for when the org refills.
    limiter, _ = await make_limiter(limits(per_min=60, burst=3, org_per_min=6, org_burst=1))
    assert (await limiter.check("u:b", "o:x")).allowed
    for _ in range(5):
        refusal = await limiter.check("u:a", "o:x")
        assert not refusal.allowed and refusal.bucket == "org"
    assert (await limiter.check("u:a", "o:y")).remaining == 2  # all three tokens were still there


async def test_org_limit_is_shared_by_its_users(make_limiter: Make) -> None:
    limiter, _ = await make_limiter(limits(per_min=60, org_per_min=6, org_burst=4))
    assert await admitted(limiter, 3, user="u:a") == 3
    assert await admitted(limiter, 3, user="u:b") == 1
    assert await admitted(limiter, 3, user="u:c", org="o:other") == 3


async def test_users_do_not_share_a_bucket(make_limiter: Make) -> None:
    limiter, _ = await make_limiter(limits(per_min=60, burst=2))
    assert await admitted(limiter, 5, user="u:a") == 2
    assert await admitted(limiter, 5, user="u:b") == 2


async def test_redis_keys_expire_when_the_bucket_would_be_full(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    limiter = RedisRateLimiter(client, limits(per_min=60, burst=10))  # 1 token/s
    await admitted(limiter, 3)
    keys = limiter.keys_for("u:a", "o:x")
    ttl_ms = await client.pttl(keys[0])
    assert 3000 < ttl_ms <= 4000  # 3 tokens to refill at 1/s, plus 1 s of slack
    assert keys == ["ivy:rl:u:a", "ivy:rl:o:x"]
    await client.aclose()


async def test_a_user_gets_one_bucket_whatever_org_header_comes_with_it(make_limiter: Make) -> None:
    limiter, _ = await make_limiter(limits(per_min=60, burst=4))
    decisions = [await limiter.check("u:hopper", f"o:org-{i}") for i in range(8)]
    assert sum(d.allowed for d in decisions) == 4
    assert decisions[-1].bucket == "burst"


async def test_redis_reloads_the_script_after_a_flush(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    limiter = RedisRateLimiter(client, limits())
    assert (await limiter.check("u:a", None)).allowed
    await client.script_flush()
    assert (await limiter.check("u:a", None)).allowed
    await client.aclose()


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("rep-42", "u:rep-42"),
        ("  rep-42  ", "u:rep-42"),
        ("", None),
        ("   ", None),
        (None, None),
    ],
)
def test_plain_ids_stay_readable(raw: str | None, expected: str | None) -> None:
    assert normalise_id(raw, kind="u") == expected


def test_hostile_ids_are_hashed_bounded_and_cannot_collide_with_plain_ones() -> None:
    long = normalise_id("a" * 5000, kind="u")
    braces = normalise_id("{o:x}", kind="u")
    assert long is not None and braces is not None
    assert long.startswith("uh:") and len(long) == 35
    assert "{" not in braces and "}" not in braces
    assert normalise_id("a" * 5000 + "b", kind="u") != long
    # A user cannot pick an id that reads as another user's hashed key.
    assert normalise_id(long, kind="u") != long




async def test_memory_and_redis_backends_decide_one_sequence_alike(redis_url: str) -> None:
    """The Python arithmetic (memory backend) and bucket.lua (Redis backend) agree, check for check.

    The Redis script reads the server's clock, so the in-process clock is set to it before each
    check: both backends see the same elapsed time and any difference is in the arithmetic.
    """
    lim = Limits(user_per_min=60, user_capacity=3, org_per_min=30, org_capacity=5, burst_window=0.3)
    a, b, c, d = ("u:a", "o:x"), ("u:b", "o:x"), ("u:c", "o:y"), ("u:d", None)  # a and b share org x
    # Bursts at once; then refills (s) that leave fractions just above a whole token, robust to lag.
    steps = [a, a, a, a, b, b, b, c, d, d, d, d, 0.5, a, d, c, 0.6, a, d, d, c, c, c]
    clock = FakeClock()
    memory = MemoryRateLimiter(lim, clock=clock)
    refused: list[str | None] = []
    async with aioredis.Redis.from_url(redis_url) as client:
        redis = RedisRateLimiter(client, lim)
        for step in steps:
            if isinstance(step, float):
                await asyncio.sleep(step)
                continue
            seconds, micros = await client.time()
            clock.now = seconds + micros / 1e6
            want, got = await memory.check(*step), await redis.check(*step)
            assert (got.allowed, got.bucket, got.limit, got.remaining) == (
                want.allowed, want.bucket, want.limit, want.remaining), step
            assert got.retry_after == pytest.approx(want.retry_after, abs=0.1), step
            assert got.reset_after == pytest.approx(want.reset_after, abs=0.1), step
            if not want.allowed:
                refused.append(want.bucket)
        await redis.aclose()
    # What the sequence covers: bursts, the org refusing a user with tokens (b, later a) and a user
    # without (a after 0.5 s: the org's wait is the longer), sustained use past the burst window.
    assert refused == ["burst", "org", "burst", "org", "user", "org", "user", "user"]
