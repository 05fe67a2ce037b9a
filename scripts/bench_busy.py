#!/usr/bin/env python3
"""Busy is not slow (issue 20): one router worker and the floor, open-loop, in the same run.

    flock /tmp/ivy-bench.lock python scripts/bench_busy.py [--seconds 10] [--only capacity,load,slow]
                                                          [--brownout-runs 5] [--no-pin]

Both servers stand in front of the fake provider in realistic mode (gemini's published shape,
tools/fake_provider/realism.py); the floor is tools/bench/floor.py (FastAPI streaming one Gemini
call over one aiohttp session, nothing else). Pinned with taskset (unless --no-pin): the router
and the floor on core 0 (one at a time under load), this generator and the fake on core 1, so
the server measured has a core of its own and the generator's cost does not land on it.

1. capacity: arrivals (Poisson, open loop: a request is sent at its time whether or not earlier
   ones answered) at rising rates, ``--seconds`` each; a server's capacity is the highest rate
   whose p95 is <= 1.2 x its p95 at the first rate (25/s), with under 1% shed or failed.
2. load: 0.5x, 1x, 1.5x and 2x the router's capacity, for each server: goodput (real answers per
   second: 200 and not the offline provider), shed share (503 overloaded), shed latency (p50 /
   max), p50 / p95 / p99 of admitted requests, CPU ms per request (the server process's user +
   system time over the requests it answered, /proc), breaker transitions (router's /metrics).
3. slow: a fresh router (defaults, no setting changed) in front of a thinking model (first token
   ~3 s, ~40 tokens/s) at 50/s: share of real answers, p50 / p95, breaker transitions.
4. ``--brownout-runs N``: issue 12's brownout ratio, scripts/bench_realistic.py --only
   healthy,brownout N times (seeds 1..N), its check lines printed.

The generator is one asyncio loop with one unbounded aiohttp connector: a request costs it a task
and a JSON parse. Loopback only; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _repo_root  # noqa: F401  (puts the repository's root on sys.path, for tools.*)
import aiohttp
import orjson
from bench_realistic import MIX

from app.providers.hedging import percentile
from tools.bench import ROOT
from tools.bench.servers import Server, pinned, raise_fd_limit, realistic_fake
from tools.ports import free_port

LADDER = (25, 50, 100, 150, 200, 250, 300, 350, 400, 500, 600, 700, 800, 1000)
SETTLE_SECONDS = 3.0  # between steps: the last one's answers drain and the admission limit grows back
BROWNOUT_RATIO = re.compile(r"healthy p95 \(x([0-9.]+)\)")  # bench_realistic.py's brownout check line
THINKING = {"gemini": {"ttft_median": 3.0, "speed_min": 38.0, "speed_max": 42.0}}


@dataclass(slots=True)
class Sample:
    status: int
    seconds: float
    real: bool
    code: str | None = None


def cpu_seconds(pid: int) -> float:
    """A process's user + system CPU time (its children's too: uvicorn has none with one worker)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    return percentile(sorted(values), q) if values else float("nan")


class Target:
    """A server under test: how to ask it and how to read it."""

    def __init__(self, name: str, server: Server, base: str, path: str) -> None:
        self.name, self.server, self.base, self.path = name, server, base, path

    def body(self, i: int, rng: random.Random) -> bytes:
        _, query, context = rng.choices(MIX, weights=[w for w, _, _ in MIX])[0]
        if self.name == "floor":
            return orjson.dumps({"query": query})
        return orjson.dumps({"query": query, "context": context})

    async def transitions(self, session: aiohttp.ClientSession) -> float:
        if self.name == "floor":
            return 0.0
        for _ in range(3):  # a keep-alive connection the server closed under load: ask again
            try:
                async with session.get(self.base + "/metrics") as r:
                    text = await r.text()
                break
            except aiohttp.ClientError:
                await asyncio.sleep(0.5)
        else:
            return float("nan")
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("ivy_breaker_transitions_total{"))


async def one(session: aiohttp.ClientSession, target: Target, body: bytes, i: int, out: list[Sample]) -> None:
    started = time.perf_counter()
    headers = {"Content-Type": "application/json", "X-User-ID": f"rep-{i % 50}", "X-Org-ID": "org-1"}
    try:
        async with session.post(target.base + target.path, data=body, headers=headers) as r:
            data = await r.read()
            seconds = time.perf_counter() - started
            doc = orjson.loads(data) if data else {}
            if r.status == 200:
                out.append(Sample(200, seconds, doc.get("provider") not in (None, "local")))
            else:
                out.append(Sample(r.status, seconds, False, (doc.get("error") or {}).get("code")))
    except (TimeoutError, aiohttp.ClientError, orjson.JSONDecodeError):
        out.append(Sample(0, time.perf_counter() - started, False, "client_error"))


async def open_loop(session: aiohttp.ClientSession, target: Target, rate: float, seconds: float, seed: int
                    ) -> dict[str, Any]:
    """Poisson arrivals at ``rate`` for ``seconds``; waits for the answers (bounded by the session timeout)."""
    rng = random.Random(seed)
    out: list[Sample] = []
    tasks: list[asyncio.Task[None]] = []
    cpu_before = cpu_seconds(target.server.pid)
    transitions_before = await target.transitions(session)
    loop = asyncio.get_running_loop()
    start = loop.time()
    at, i = start, 0
    while at - start < seconds:
        delay = at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(session, target, target.body(i, rng), i, out)))
        i += 1
        at += rng.expovariate(rate)
    await asyncio.gather(*tasks)
    cpu = cpu_seconds(target.server.pid) - cpu_before
    await asyncio.sleep(SETTLE_SECONDS)
    ok = [s for s in out if s.status == 200]
    shed = [s for s in out if s.code == "overloaded"]
    return {"rate": rate, "sent": len(out), "ok": len(ok), "real": sum(s.real for s in ok), "shed": len(shed),
            "failed": len(out) - len(ok) - len(shed), "goodput": sum(s.real for s in ok) / seconds,
            "p50": pct([s.seconds for s in ok], 50), "p95": pct([s.seconds for s in ok], 95),
            "p99": pct([s.seconds for s in ok], 99),
            "shed_p50_ms": pct([s.seconds * 1000 for s in shed], 50),
            "shed_max_ms": max((s.seconds * 1000 for s in shed), default=float("nan")),
            "cpu_ms": cpu * 1000 / max(1, len(ok) + len(shed)),
            "transitions": await target.transitions(session) - transitions_before}


def row(name: str, r: dict[str, Any]) -> str:
    return (f"| {name} | {r['rate']:.0f} | {r['goodput']:.1f} | {r['shed'] / max(1, r['sent']):.1%} "
            f"| {r['shed_p50_ms']:.1f} / {r['shed_max_ms']:.1f} | {r['p50']:.2f} / {r['p95']:.2f} / {r['p99']:.2f} "
            f"| {r['cpu_ms']:.2f} | {r['failed']} | {r['transitions']:.0f} |")


HEADER = ("| server | arrivals/s | goodput/s | shed | shed ms p50 / max | admitted p50 / p95 / p99 s "
          "| CPU ms/req | failed | breaker transitions |\n|---|---|---|---|---|---|---|---|---|")


def start_router(fake_base: str, cpus: str | None, tag: str) -> Target:
    port = free_port()
    logdir = Path(tempfile.mkdtemp(prefix=f"ivy-busy-{tag}-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IVY_", "AI_", "GEMINI_", "OPENAI_", "REDIS_"))}
    env.update({"GEMINI_API_KEY": "bench-gemini-key-000000", "OPENAI_API_KEY": "bench-openai-key-000000",
                "GEMINI_BASE_URL": fake_base, "OPENAI_BASE_URL": f"{fake_base}/v1",
                "AI_RATE_LIMIT_PER_MIN": "1000000", "AI_ORG_RATE_LIMIT_PER_MIN": "10000000",
                "IVY_LOG_FILE": str(logdir / "ai_router.log"), "IVY_CACHE_ENABLED": "false"})
    server = Server(f"router-{tag}", pinned([sys.executable, "-m", "uvicorn", "app.main:app", "--port", str(port),
                                             "--log-level", "warning"], cpus), env=env, port=port,
                    log=logdir / "uvicorn.log").start()
    return Target("ivy", server, f"http://127.0.0.1:{port}", "/ai/router/v2")


def start_floor(fake_base: str, cpus: str | None) -> Target:
    port = free_port()
    logdir = Path(tempfile.mkdtemp(prefix="ivy-busy-floor-"))
    server = Server("floor", pinned([sys.executable, "-m", "uvicorn", "tools.bench.floor:app", "--port", str(port),
                                     "--log-level", "warning"], cpus),
                    env={**os.environ, "GEMINI_BASE_URL": fake_base}, port=port, log=logdir / "uvicorn.log").start()
    return Target("floor", server, f"http://127.0.0.1:{port}", "/ai/router/v2")


async def ready(session: aiohttp.ClientSession, server: Server, url: str) -> None:
    for _ in range(300):
        try:
            async with session.get(url) as r:
                if r.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{server.name} did not start: {server.log_tail()}")


async def capacity(session: aiohttp.ClientSession, target: Target, seconds: float, seed: int
                   ) -> tuple[float, list[str]]:
    lines, base_p95, best = [], None, LADDER[0]
    for rate in LADDER:
        r = await open_loop(session, target, rate, seconds, seed)
        lines.append(row(target.name, r))
        print(lines[-1], flush=True)
        if base_p95 is None:
            base_p95 = r["p95"]
        good = r["p95"] <= 1.2 * base_p95 and (r["shed"] + r["failed"]) < 0.01 * r["sent"]
        if good:
            best = rate
        elif r["p95"] > 2 * base_p95 or r["shed"] > 0.05 * r["sent"]:
            break
    return float(best), lines


async def set_realism(session: aiohttp.ClientSession, fake_base: str, seed: int, profiles: dict[str, Any]) -> None:
    async with session.post(f"{fake_base}/_fake/realism", json={"seed": seed, "time_scale": 1.0,
                                                                "profiles": profiles}) as r:
        assert r.status == 200, await r.text()


async def main_async(args: argparse.Namespace) -> int:
    router_cpus, generator_cpus = (None, None) if args.no_pin else ("0", "1")
    if generator_cpus is not None:
        os.sched_setaffinity(0, {int(generator_cpus)})
    raise_fd_limit()
    fake, fake_base = realistic_fake(args.seed, 1.0, generator_cpus)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:
        try:
            await ready(session, fake, f"{fake_base}/_fake/health")
            if args.only & {"capacity", "load"}:
                ivy, floor = start_router(fake_base, router_cpus, "load"), start_floor(fake_base, router_cpus)
                for target in (ivy, floor):
                    await ready(session, target.server, target.base + "/health")
                    await open_loop(session, target, 20, 2, seed=1)  # warm: the router learns its providers
                print(HEADER)
                cap = {}
                for target in (ivy, floor):
                    cap[target.name], _ = await capacity(session, target, args.seconds, args.seed)
                print(f"\ncapacity (p95 <= 1.2 x p95 at 25/s): ivy {cap['ivy']:.0f}/s, floor {cap['floor']:.0f}/s, "
                      f"ratio {cap['ivy'] / cap['floor']:.2f}\n")
                if "load" in args.only:
                    print(HEADER)
                    for share in (0.5, 1.0, 1.5, 2.0):
                        for target in (ivy, floor):
                            r = await open_loop(session, target, share * cap["ivy"], args.seconds, args.seed)
                            print(row(f"{target.name} {share}x", r), flush=True)
                ivy.server.stop()
                floor.server.stop()
            if "slow" in args.only:
                await set_realism(session, fake_base, args.seed, THINKING)
                ivy = start_router(fake_base, router_cpus, "slow")
                await ready(session, ivy.server, ivy.base + "/health")
                r = await open_loop(session, ivy, args.slow_rate, args.slow_seconds, args.seed)
                print(f"\nslow but healthy provider (first token ~3 s, ~40 tokens/s), {args.slow_rate}/s for "
                      f"{args.slow_seconds:.0f} s, cold router, defaults: real answers {r['real']}/{r['sent']} "
                      f"({r['real'] / max(1, r['sent']):.2%}), p50 {r['p50']:.2f} s, p95 {r['p95']:.2f} s, "
                      f"shed {r['shed']}, failed {r['failed']}, breaker transitions {r['transitions']:.0f}")
                ivy.server.stop()
                await set_realism(session, fake_base, args.seed, {})
        finally:
            Server.stop_all()
    del fake
    return 0


def brownout_runs(n: int) -> None:
    """Issue 12's brownout ratio, n times (seeds 1..n): bench_realistic.py's own check lines, then the
    ratios' median and highest against the target (median <= 1.6 x, none above 1.8 x)."""
    ratios: list[float] = []
    for seed in range(1, n + 1):
        run = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_realistic.py"), "--only",
                              "healthy,brownout", "--seed", str(seed)], cwd=ROOT, capture_output=True, text=True,
                             timeout=900, check=False)
        said = [line for line in run.stdout.splitlines() if "brownout" in line.lower()]
        print(f"brownout run {seed}: " + " | ".join(said[-3:]), flush=True)
        found = BROWNOUT_RATIO.search(run.stdout)
        if found:
            ratios.append(float(found.group(1)))
    if ratios:
        median, worst = statistics.median(ratios), max(ratios)
        verdict = "PASS" if median <= 1.6 and worst <= 1.8 else "MISS"
        print(f"brownout p95 / healthy p95 over {len(ratios)} runs: {', '.join(f'{r:.2f}' for r in ratios)}; "
              f"median {median:.2f} (<= 1.6), highest {worst:.2f} (<= 1.8): {verdict}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each open-loop step")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--only", type=lambda v: set(v.split(",")) - {""}, default={"capacity", "load", "slow"},
                        help='a comma list of capacity, load, slow ("" for none: only --brownout-runs)')
    parser.add_argument("--slow-rate", type=float, default=50.0)
    parser.add_argument("--slow-seconds", type=float, default=20.0)
    parser.add_argument("--brownout-runs", type=int, default=0)
    parser.add_argument("--no-pin", action="store_true", help="do not pin with taskset / sched_setaffinity")
    args = parser.parse_args()
    code = asyncio.run(main_async(args)) if args.only else 0
    brownout_runs(args.brownout_runs)
    sys.exit(code)


if __name__ == "__main__":
    main()
