#!/usr/bin/env python3
"""What a per-org budget adds to one request, against Redis on loopback. Measures; never judges.

    flock /tmp/ivy-bench.lock python scripts/bench_budget.py [--redis-url redis://127.0.0.1:6379/15]
        [--runs 5] [--requests 400] [--n 3000]

End to end (the target: added p50 <= 0.3 ms): two routers (uvicorn, one worker each, the same
Redis, the fake provider answering at once), one without budgets (the same run's baseline) and one
with IVY_BUDGET_DEFAULT, asked the same sequential requests alternately (one to each, so the host's
load drifts over both alike), each question new (every request reaches the provider). Per run: each
router's p50 and the difference (with - without), the router's CPU per request (both, and the
difference), the Redis commands per request (INFO commandstats, each router asked alone) and the
budget's own script calls and the round trips that carried them (its /ai/router/health).
Printed per run and as the medians of --runs runs, with the answer cache on (the default: the
reservation is asked while the cache is, both one round trip) and off (nothing to overlap).

In process (the store's own cost): reserve + settle of one tab, each alone, a Redis PING (the
floor), the in-process store, and budget.lua's time on the server. Starts its own redis-server if
none answers at the URL. Loopback only; bounded in count.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import _repo_root  # noqa: F401  (puts the repository's root on sys.path, for app.* and tools.*)
import aiohttp
import redis.asyncio as aioredis
from bench_limiter import against_redis, pct, timed

from app.budget import Budgets, Hold, Limit, MemoryBudgetStore, PriceTable, RedisBudgetStore, Tab
from app.budget.store import BUDGET_LUA, BudgetStore
from app.observability.metrics import Metrics
from app.resilience.ratelimit.redis_batch import BUCKET_LUA
from tools.bench.servers import Server, child_env, wait_ready
from tools.ports import free_port

SYSTEM = "You are Ivy, the CRM's assistant. " * 40  # about the router's system text
PROMPT = "Lead: Dana Whitfield, Northwind Logistics, budget $40k. Question: what's their budget? " * 6
MODELS = ["gemini-2.5-flash", "gpt-4.1-mini"]


# --- end to end: a router with budgets against the same run's router without ----------------------

def cpu_seconds(pid: int) -> float:
    """Every thread's CPU time (/proc/PID/task/*/schedstat, ns)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def router(name: str, redis_url: str, fake: str, *, budgets: bool, cache: bool) -> Server:
    port = free_port()
    logdir = Path(tempfile.mkdtemp(prefix=f"ivy-bench-budget-{name}-"))
    env = child_env(
        GEMINI_API_KEY="bench-gemini-key-000000", OPENAI_API_KEY="bench-openai-key-000000", GEMINI_BASE_URL=fake,
        OPENAI_BASE_URL=f"{fake}/v1", REDIS_URL=redis_url, AI_RATE_LIMIT_PER_MIN="1000000",
        AI_ORG_RATE_LIMIT_PER_MIN="1000000", IVY_HEDGE_ENABLED="false", IVY_CACHE_WARMUP_PER_MIN="0",
        IVY_CACHE_ENABLED="true" if cache else "false", IVY_LOG_FILE=str(logdir / "ai_router.log"))
    if budgets:
        env["IVY_BUDGET_DEFAULT"] = "1000000 usd/month"
    return Server(f"router-{name}", [sys.executable, "-m", "uvicorn", "app.main:app", "--port", str(port),
                                     "--log-level", "warning"], env=env, port=port, log=logdir / "uvicorn.log").start()


async def ask(session: aiohttp.ClientSession, server: Server, org: str, question: str) -> float:
    started = time.perf_counter()
    async with session.post(f"http://127.0.0.1:{server.port}/ai/router/v2", json={"query": question},
                            headers={"X-User-ID": "bench-rep", "X-Org-ID": org}) as r:
        await r.read()
        if r.status != 200:
            raise RuntimeError(f"{server.name}: HTTP {r.status}")
    return (time.perf_counter() - started) * 1e6


# Commands a script runs count in INFO commandstats too: what the router itself sent (its round
# trips, one command each or one pipeline) is every command less those the scripts issue.
_IN_SCRIPTS = {f"cmdstat_{name.lower()}" for lua in (BUDGET_LUA, BUCKET_LUA)
               for name in re.findall(r"redis\.call\('([A-Z]+)'", lua)}


async def commands(client: aioredis.Redis) -> int:
    """Commands the routers sent (not those run inside a script, not this bench's INFO)."""
    stats = await client.info("commandstats")
    return sum(int(v.get("calls", 0)) for k, v in stats.items() if k not in _IN_SCRIPTS and k != "cmdstat_info")


async def one_run(client: aioredis.Redis, pair: tuple[Server, Server], org: str, n: int, run: int
                  ) -> dict[str, float]:
    without, with_ = pair
    samples: dict[str, list[float]] = {"without": [], "with": []}
    cpu = {"without": cpu_seconds(without.pid), "with": cpu_seconds(with_.pid)}
    async with aiohttp.ClientSession() as session:
        for i in range(n):  # alternately, the first of each pair swapped every request
            order = [("without", without), ("with", with_)] if i % 2 else [("with", with_), ("without", without)]
            for name, server in order:
                question = f"what's new at account {run}-{i}? {uuid.uuid4().hex}"
                samples[name].append(await ask(session, server, org, question))
        cpu = {name: (cpu_seconds(s.pid) - cpu[name]) / n * 1e6 for name, s in (("without", without), ("with", with_))}
        redis_per_request = {}
        traffic = await budget_traffic(session, with_)
        for name, server in (("without", without), ("with", with_)):  # each alone, for its Redis commands
            before = await commands(client)
            for i in range(100):
                await ask(session, server, org, f"count {run}-{i} {uuid.uuid4().hex}")
            await asyncio.sleep(0.2)  # the settlements written off the request's path counted too
            redis_per_request[name] = (await commands(client) - before) / 100
        after = await budget_traffic(session, with_)
    p50 = {name: pct(values, 50) for name, values in samples.items()}
    return {"p50_without": p50["without"], "p50_with": p50["with"], "added_p50": p50["with"] - p50["without"],
            "added_mean": statistics.fmean(samples["with"]) - statistics.fmean(samples["without"]),
            "cpu_without": cpu["without"], "cpu_with": cpu["with"], "added_cpu": cpu["with"] - cpu["without"],
            "redis_without": redis_per_request["without"], "redis_with": redis_per_request["with"],
            "budget_calls": (after["calls"] - traffic["calls"]) / 100,
            "budget_trips": (after["round_trips"] - traffic["round_trips"]) / 100}


async def budget_traffic(session: aiohttp.ClientSession, server: Server) -> dict[str, int]:
    """The budget store's script calls and round trips so far (/ai/router/health)."""
    async with session.get(f"http://127.0.0.1:{server.port}/ai/router/health") as r:
        traffic: dict[str, int] = (await r.json())["budgets"]["store_traffic"]
        return traffic


async def end_to_end(url: str, runs: int, n: int) -> None:
    fake_port = free_port()
    fake = Server("fake-provider", [sys.executable, "-m", "tools.fake_provider", "--port", str(fake_port)],
                  env=dict(os.environ), port=fake_port,
                  log=Path(tempfile.mkdtemp(prefix="ivy-bench-budget-fake-")) / "fake.log").start()
    client = aioredis.Redis.from_url(url)
    org = f"bench-{uuid.uuid4().hex[:8]}"
    try:
        wait_ready(fake, "GET", "/_fake/usage")
        for cache in (True, False):
            pair = (router("without", url, f"http://127.0.0.1:{fake_port}", budgets=False, cache=cache),
                    router("with", url, f"http://127.0.0.1:{fake_port}", budgets=True, cache=cache))
            try:
                for server in pair:
                    wait_ready(server, "GET", "/health")
                async with aiohttp.ClientSession() as session:
                    for i in range(100):  # warm: imports, pools, scripts loaded
                        for server in pair:
                            await ask(session, server, org, f"warm {i} {uuid.uuid4().hex}")
                results = [await one_run(client, pair, org, n, run) for run in range(runs)]
            finally:
                for server in pair:
                    server.stop()
            report(f"end to end, answer cache {'on' if cache else 'off'}, {n} requests x 2 per run", results)
    finally:
        fake.stop()
        # This run's org's keys, and the answers its routers cached (the cache keys hash the org; the
        # bench's database, --redis-url, is its own).
        for pattern in (f"ivy:*{org}*", "ivy:cache:*"):
            keys = [k async for k in client.scan_iter(match=pattern, count=1000)]
            if keys:
                await client.delete(*keys)
        for unit_period in ("usd:month",):
            await client.zrem(f"ivy:budget:top:{unit_period}:{time.strftime('%Y-%m', time.gmtime())}", f"o:{org}")
        await client.aclose()


def report(title: str, results: list[dict[str, float]]) -> None:
    print(f"\n{title}")
    columns = ["p50_without", "p50_with", "added_p50", "added_mean", "cpu_without", "cpu_with", "added_cpu",
               "redis_without", "redis_with", "budget_calls", "budget_trips"]
    print(f"{'run':<8}" + "".join(f"{c:>14}" for c in columns))
    for i, row in enumerate(results):
        print(f"{i:<8}" + "".join(f"{row[c]:>14.1f}" for c in columns))
    median = {c: statistics.median(r[c] for r in results) for c in columns}
    print(f"{'median':<8}" + "".join(f"{median[c]:>14.1f}" for c in columns))
    print(f"added per budgeted request, median of {len(results)} runs: p50 {median['added_p50'] / 1000:.3f} ms "
          f"(target <= 0.3 ms), router CPU {median['added_cpu']:.0f} us, Redis commands "
          f"{median['redis_with'] - median['redis_without']:.2f} in {median['budget_trips']:.2f} round trips "
          "(latencies and CPU in us per request; redis_*: commands the router sent per request, less those run "
          "inside a script; budget_*: the budget's script calls and round trips per request)")


# --- in process: the store's own cost -------------------------------------------------------------

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
    tab.settle(hold, provider="gemini", model=MODELS[0], role="first", input_tokens=420, cached_tokens=0,
               output_tokens=180, received_chars=700, stopped=False)
    await tab.budgets.drain()  # what the settlement's write costs, awaited here to be timed


async def request(budgets: Budgets, org: str) -> None:
    tab, hold = await reserve(budgets, org)
    await settle(tab, hold)


async def script_usec(client: aioredis.Redis) -> tuple[float, int]:
    stats = (await client.info("commandstats")).get("cmdstat_evalsha", {})
    return float(stats.get("usec", 0)), int(stats.get("calls", 0))


async def in_process(url: str, n: int) -> None:
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
    print(f"\nin process, {n} sequential\n{'per request (µs)':<26}{'p50':>9}{'p99':>9}{'mean':>9}")
    for name, samples in rows:
        print(f"{name:<26}{pct(samples, 50):>9.1f}{pct(samples, 99):>9.1f}{statistics.fmean(samples):>9.1f}")
    usec, calls = after[0] - before[0], after[1] - before[1]
    print(f"budget.lua on the server: {usec / max(1, calls):.1f} µs per EVALSHA ({calls} calls)")
    print(f"reserve alone: {pct(rows[2][1], 50) / pct(rows[0][1], 50):.1f} PING round trips at p50 (only the "
          "reservation is on a request's path; its settlement is written after the response)")
    keys = [k async for k in client.scan_iter(match=f"ivy:budget:*{org}*", count=1000)]
    if keys:
        await client.delete(*keys)
    await client.zrem(f"ivy:budget:top:usd:month:{time.strftime('%Y-%m', time.gmtime())}", org)
    await client.aclose()


async def run(url: str, args: argparse.Namespace) -> None:
    await end_to_end(url, args.runs, args.requests)
    await in_process(url, args.n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/15")
    ap.add_argument("--runs", type=int, default=5, help="end-to-end runs (medians are quoted)")
    ap.add_argument("--requests", type=int, default=400, help="requests to each router per run")
    ap.add_argument("--n", type=int, default=3000, help="in-process calls per row")
    args = ap.parse_args()
    try:
        against_redis(args.redis_url, 6391, lambda url: run(url, args))
    finally:
        Server.stop_all()


if __name__ == "__main__":
    main()
