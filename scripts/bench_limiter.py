#!/usr/bin/env python3
"""How much the rate limiter adds per request, against Redis on loopback. Measures; never judges.

    python scripts/bench_limiter.py [--redis-url redis://127.0.0.1:6379/15] [--n 5000] [--seconds 3]

Prints, for the same client in the same run: a Redis PING round trip (the floor), one limiter
check (one EVALSHA of the token-bucket script: alone, a check goes out as a batch of one), and the
in-process backend; then the check throughput with 50 concurrent callers, batched (the limiter as
deployed: concurrent checks share one EVALSHA) and unbatched (max_batch=1: one EVALSHA per check,
as before group commit), with the EVALSHA count per check from the server's INFO commandstats.
Starts its own redis-server if none answers at the URL.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import redis.asyncio as aioredis

from app.resilience.ratelimit import Limits, MemoryRateLimiter, RedisRateLimiter

LIMITS = Limits(user_per_min=10**9, user_capacity=10**9, org_per_min=10**9, org_capacity=10**9)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


async def timed(n: int, call: Callable[[int], Awaitable[object]]) -> list[float]:
    for i in range(min(200, n)):  # warm-up
        await call(i)
    samples = []
    for i in range(n):
        started = time.perf_counter()
        await call(i)
        samples.append((time.perf_counter() - started) * 1e6)
    return samples


async def throughput(seconds: float, concurrency: int, call: Callable[[int], Awaitable[object]]) -> float:
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker(w: int) -> None:
        nonlocal done
        i = 0
        while time.perf_counter() < deadline:
            await call(w * 1_000_000 + i)
            i += 1
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return done / (time.perf_counter() - started)


async def evalsha_calls(client: aioredis.Redis) -> int:
    """EVALSHA commands the server has run (its own count, across all clients)."""
    stats = await client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def reachable(url: str) -> bool:
    client = aioredis.Redis.from_url(url, socket_connect_timeout=0.5)
    try:
        await client.ping()
        return True
    except Exception:
        return False
    finally:
        await client.aclose()


async def run(url: str, n: int, seconds: float) -> None:
    client = aioredis.Redis.from_url(url)
    prefix = f"ivy:bench:{uuid.uuid4().hex[:8]}"
    limiter = RedisRateLimiter(client, LIMITS, prefix=prefix)
    memory = MemoryRateLimiter(LIMITS)
    await limiter.warm()
    users = [f"u:bench-{i}" for i in range(1000)]

    rows = [
        ("redis PING (floor)", await timed(n, lambda i: client.ping())),
        ("limiter check, redis", await timed(n, lambda i: limiter.check(users[i % 1000], "o:bench"))),
        ("limiter check, memory", await timed(n, lambda i: memory.check(users[i % 1000], "o:bench"))),
    ]
    print(f"{'per call (µs)':<24}{'p50':>9}{'p99':>9}{'mean':>9}")
    for name, samples in rows:
        print(f"{name:<24}{pct(samples, 50):>9.1f}{pct(samples, 99):>9.1f}{statistics.fmean(samples):>9.1f}")
    floor, check = pct(rows[0][1], 50), pct(rows[1][1], 50)
    print(f"limiter check / PING at p50: {check / floor:.2f}x  (added over a bare round trip: {check - floor:.1f} µs)")

    print(f"\nthroughput, 50 concurrent callers, {seconds:g} s")
    ping_rate = await throughput(seconds, 50, lambda i: client.ping())
    print(f"{'redis PING':<32}{ping_rate:>10.0f} /s")
    # max_in_flight=64 as the pool size: what 50 callers got when every check was its own EVALSHA.
    unbatched = RedisRateLimiter(client, LIMITS, prefix=prefix, max_batch=1, max_in_flight=64)
    for name, under_test in (("limiter check, redis, batched", limiter), ("  unbatched (max_batch=1)", unbatched)):
        checks = 0

        async def one_check(i: int, under_test: RedisRateLimiter = under_test) -> object:
            nonlocal checks
            checks += 1
            return await under_test.check(users[i % 1000], "o:bench")

        before = await evalsha_calls(client)
        check_rate = await throughput(seconds, 50, one_check)
        per_check = (await evalsha_calls(client) - before) / max(1, checks)
        print(f"{name:<32}{check_rate:>10.0f} /s  ({check_rate / ping_rate:.2f}x of PING, "
              f"{per_check:.3f} EVALSHA per check)")

    keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=1000)]
    if keys:
        await client.delete(*keys)
    await client.aclose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/15")
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    against_redis(args.redis_url, 6390, lambda url: run(url, args.n, args.seconds))


def against_redis(url: str, port: int, work: Callable[[str], Awaitable[None]]) -> None:
    """Run ``work`` against the Redis at ``url``, or a redis-server of its own on ``port`` if none answers."""
    server = None
    if not asyncio.run(reachable(url)):
        server = subprocess.Popen(["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"],
                                  stdout=subprocess.DEVNULL)
        time.sleep(0.5)
        print(f"(no Redis at {url}; started redis-server on :{port})")
        url = f"redis://127.0.0.1:{port}/0"
    try:
        asyncio.run(work(url))
    finally:
        if server is not None:
            server.terminate()


if __name__ == "__main__":
    main()
