#!/usr/bin/env python3
"""What a per-org budget adds to one request, against Redis on loopback. Measures; never judges.

    flock /tmp/ivy-bench.lock python scripts/bench_budget.py [--redis-url redis://127.0.0.1:6379/15] [--n 5000]

Per request, as the pipeline and the chain do it: the request's tab reserves its first call's
worst case (one EVALSHA of app/budget/budget.lua) and settles it to the call's usage (one pipelined
round trip: the settle EVALSHA and the top-spenders ZINCRBY). Printed: a Redis PING round trip (the
floor), reserve + settle together (the target: p50 <= 0.3 ms), each alone, the in-process store,
and the script's own time on the server (INFO commandstats). Starts its own redis-server if none
answers at the URL.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import redis.asyncio as aioredis
from bench_limiter import against_redis, pct, timed

from app.budget import Budgets, Hold, Limit, MemoryBudgetStore, PriceTable, RedisBudgetStore, Tab
from app.budget.store import BudgetStore
from app.observability.metrics import Metrics

SYSTEM = "You are Ivy, the CRM's assistant. " * 40  # about the router's system text
PROMPT = "Lead: Dana Whitfield, Northwind Logistics, budget $40k. Question: what's their budget? " * 6
MODELS = ["gemini-2.5-flash", "gpt-4.1-mini"]


def budgets_on(store: BudgetStore) -> Budgets:
    return Budgets(PriceTable.load(), store, Metrics(), default=Limit.parse("1000000 usd/month"), enabled=True,
                   exhausted="refuse", soft_threshold=0.8, fail_open=True, hold_seconds=68)


async def reserve(budgets: Budgets, org: str) -> tuple[Tab, Hold]:
    tab = budgets.tab(org, SYSTEM, PROMPT, 512, "rag")
    assert await tab.prepay(MODELS) is None
    hold = await tab.reserve(MODELS[0])
    assert hold is not None and hold.amount > 0
    return tab, hold


async def settle(tab: Tab, hold: Hold) -> None:
    await tab.settle(hold, provider="gemini", model=MODELS[0], role="first", input_tokens=420, cached_tokens=0,
                     output_tokens=180, received_chars=700, stopped=False)


async def request(budgets: Budgets, org: str) -> None:
    tab, hold = await reserve(budgets, org)
    await settle(tab, hold)


async def script_usec(client: aioredis.Redis) -> tuple[float, int]:
    stats = (await client.info("commandstats")).get("cmdstat_evalsha", {})
    return float(stats.get("usec", 0)), int(stats.get("calls", 0))


async def run(url: str, n: int) -> None:
    client = aioredis.Redis.from_url(url)
    org = f"o:bench-{uuid.uuid4().hex[:8]}"
    redis_budgets, memory_budgets = budgets_on(RedisBudgetStore(client)), budgets_on(MemoryBudgetStore())
    before = await script_usec(client)
    rows = [("redis PING (floor)", await timed(n, lambda i: client.ping())),
            ("reserve + settle, redis", await timed(n, lambda i: request(redis_budgets, org)))]
    after = await script_usec(client)
    pending: list[tuple[Tab, Hold]] = []

    async def reserve_only(i: int) -> None:
        pending.append(await reserve(redis_budgets, org))

    rows.append(("  reserve alone", await timed(n, reserve_only)))
    rows.append(("  settle alone", await timed(len(pending) - min(200, len(pending)),
                                               lambda i: settle(*pending.pop()))))
    rows.append(("reserve + settle, memory", await timed(n, lambda i: request(memory_budgets, org))))
    print(f"{'per request (µs)':<26}{'p50':>9}{'p99':>9}{'mean':>9}")
    for name, samples in rows:
        print(f"{name:<26}{pct(samples, 50):>9.1f}{pct(samples, 99):>9.1f}{statistics.fmean(samples):>9.1f}")
    usec, calls = after[0] - before[0], after[1] - before[1]
    print(f"budget.lua on the server: {usec / max(1, calls):.1f} µs per EVALSHA ({calls} calls)")
    added = pct(rows[1][1], 50)
    print(f"added per budgeted request at p50: {added / 1000:.3f} ms (target <= 0.3 ms); "
          f"{added / pct(rows[0][1], 50):.1f} PING round trips")
    keys = [k async for k in client.scan_iter(match=f"ivy:budget:*{org}*", count=1000)]
    if keys:
        await client.delete(*keys)
    await client.zrem(f"ivy:budget:top:usd:month:{time.strftime('%Y-%m', time.gmtime())}", org)
    await client.aclose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/15")
    ap.add_argument("--n", type=int, default=5000)
    args = ap.parse_args()
    against_redis(args.redis_url, 6391, lambda url: run(url, args.n))

if __name__ == "__main__":
    main()
