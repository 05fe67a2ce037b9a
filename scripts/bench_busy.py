#!/usr/bin/env python3
"""Busy is not slow (issue 20): one router worker and the floor, open-loop, in the same run.

    flock /tmp/ivy-bench.lock python scripts/bench_busy.py [--seconds 10] [--only capacity,load,slow]
                                                          [--capacity N] [--brownout-runs 5] [--no-pin]
                                                          [--router-env NAME=VALUE ...]

Both servers stand in front of the fake provider in realistic mode (gemini's published shape,
tools/fake_provider/realism.py); the floor is tools/bench/floor.py (FastAPI streaming one Gemini
call over one aiohttp session, nothing else). Pinned with taskset (unless --no-pin): the router
and the floor on core 0 (one at a time under load), this generator and the fake on core 1, so
the server measured has a core of its own and the generator's cost does not land on it.

1. capacity: arrivals (Poisson, open loop: a request is sent at its time whether or not earlier
   ones answered) at rising rates, ``--seconds`` each; a server's capacity is the highest rate
   whose p95 is <= 1.2 x its p95 at the first rate (25/s), with under 1% shed or failed.
2. load: 0.5x, 1x, 1.5x and 2x the router's capacity (``--capacity N`` skips the ladder), for each
   server: goodput (real answers per second: a `done` event, not the offline provider), shed share
   (503 overloaded), shed latency (p50 / p95 / max), p50 / p95 / p99 of admitted requests and their
   first token's p95 (the first `event: delta`), CPU ms per request (the server process's user +
   system time over the requests it answered, /proc), breaker transitions (router's /metrics), the
   generator's own CPU share; then the router's verdict against issue 20's targets at 2x.
3. slow: a fresh router (defaults, no setting changed) in front of a thinking model (first token
   ~3 s, ~40 tokens/s) at 50/s: share of real answers, p50 / p95, breaker transitions.
4. ``--brownout-runs N``: issue 12's brownout ratio, scripts/bench_realistic.py --only
   healthy,brownout N times (seeds 1..N), its check lines printed.

``--router-env NAME=VALUE`` (repeatable) runs the routers of 1-3 with that setting, to measure one
(e.g. ``IVY_ADMISSION_TARGET_CPU=0.95``) against the defaults in another run.

The generator is one asyncio loop on raw asyncio Protocols (tools/bench/rawhttp.py: a keep-alive
pool, the streamed SSE answer read to its end): a request costs it a task and a few parses, so it
stays well under its core (aiohttp's client saturated it near 1000/s and hid the router's own
behaviour). Every step prints the generator's own CPU share ("gen CPU"): near 100% the generator,
not the server, is what was measured. Requests ask for the streamed answer (``"stream": true``);
times to the first `event: delta` and to the end are both kept. Loopback only; every loop is bounded in count and time.
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
import orjson
from bench_realistic import MIX

from app.providers.hedging import percentile
from tools.bench import ROOT
from tools.bench.rawhttp import Answer, Pool
from tools.bench.servers import Server, pinned, raise_fd_limit, realistic_fake
from tools.ports import free_port

LADDER = (25, 50, 100, 150, 200, 250, 300, 350, 400, 500, 600, 700, 800, 1000)
SETTLE_SECONDS = 3.0  # between steps: the last one's answers drain and the admission limit grows back
BROWNOUT_RATIO = re.compile(r"healthy p95 \(x([0-9.]+)\)")  # bench_realistic.py's brownout check line
DELTA = b"event: delta"  # the first answer text on the stream: its time is the first token's
THINKING = {"gemini": {"ttft_median": 3.0, "speed_min": 38.0, "speed_max": 42.0}}


@dataclass(slots=True)
class Sample:
    status: int
    seconds: float
    real: bool
    code: str | None = None
    first_token: float = 0.0  # seconds to the first `event: delta`


def sample_of(answer: Answer) -> Sample:
    """A streamed answer's outcome: its `done` event's provider (``local``: the offline text) or its
    `error` event's code; a refusal's JSON error code."""
    body = answer.body
    if answer.status == 200:
        done = body.rfind(b"event: done\ndata: ")
        if done >= 0:
            doc = orjson.loads(body[done + 18:body.index(b"\n", done + 18)])
            return Sample(200, answer.seconds, doc.get("provider") not in (None, "local"), None, answer.marked)
        error = body.rfind(b"event: error\ndata: ")
        code = orjson.loads(body[error + 19:body.index(b"\n", error + 19)]).get("code") if error >= 0 else "no_end"
        return Sample(0, answer.seconds, False, code, answer.marked)
    doc = orjson.loads(body) if body.startswith(b"{") else {}
    return Sample(answer.status, answer.seconds, False, (doc.get("error") or {}).get("code"), answer.marked)


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
        self.pool = pool_of(base)

    def body(self, i: int, rng: random.Random) -> bytes:
        _, query, context = rng.choices(MIX, weights=[w for w, _, _ in MIX])[0]
        if self.name == "floor":
            return orjson.dumps({"query": query, "stream": True})
        return orjson.dumps({"query": query, "context": context, "stream": True})

    async def transitions(self) -> float:
        if self.name == "floor":
            return 0.0
        for _ in range(3):  # a connection the server closed under load: ask again
            try:
                text = (await asyncio.wait_for(self.pool.get("/metrics"), 30)).body.decode()
                break
            except (OSError, TimeoutError):
                await asyncio.sleep(0.5)
        else:
            return float("nan")
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("ivy_breaker_transitions_total{"))


async def one(target: Target, body: bytes, i: int, out: list[Sample]) -> None:
    started = time.perf_counter()
    headers = {"Content-Type": "application/json", "X-User-ID": f"rep-{i % 50}", "X-Org-ID": "org-1"}
    try:
        out.append(sample_of(await asyncio.wait_for(target.pool.post(target.path, body, headers, DELTA), 60)))
    except (TimeoutError, OSError, ValueError):
        out.append(Sample(0, time.perf_counter() - started, False, "client_error"))


async def open_loop(target: Target, rate: float, seconds: float, seed: int) -> dict[str, Any]:
    """Poisson arrivals at ``rate`` for ``seconds``; waits for the answers (bounded by the session timeout)."""
    rng = random.Random(seed)
    out: list[Sample] = []
    tasks: list[asyncio.Task[None]] = []
    cpu_before = cpu_seconds(target.server.pid)
    transitions_before = await target.transitions()
    loop = asyncio.get_running_loop()
    start = loop.time()
    own_before = time.process_time()
    at, i = start, 0
    while at - start < seconds:
        delay = at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(target, target.body(i, rng), i, out)))
        i += 1
        at += rng.expovariate(rate)
    await asyncio.gather(*tasks)
    generator = (time.process_time() - own_before) / max(1e-9, loop.time() - start)
    cpu = cpu_seconds(target.server.pid) - cpu_before
    await asyncio.sleep(SETTLE_SECONDS)
    ok = [s for s in out if s.status == 200]
    shed = [s for s in out if s.code == "overloaded"]
    return {"rate": rate, "sent": len(out), "ok": len(ok), "real": sum(s.real for s in ok), "shed": len(shed),
            "failed": len(out) - len(ok) - len(shed), "goodput": sum(s.real for s in ok) / seconds,
            "p50": pct([s.seconds for s in ok], 50), "p95": pct([s.seconds for s in ok], 95),
            "p99": pct([s.seconds for s in ok], 99),
            "first_token_p95": pct([s.first_token for s in ok], 95),
            "shed_p50_ms": pct([s.seconds * 1000 for s in shed], 50),
            "shed_p95_ms": pct([s.seconds * 1000 for s in shed], 95),
            "shed_max_ms": max((s.seconds * 1000 for s in shed), default=float("nan")),
            "cpu_ms": cpu * 1000 / max(1, len(ok) + len(shed)), "generator": generator,
            "transitions": await target.transitions() - transitions_before}


def row(name: str, r: dict[str, Any]) -> str:
    return (f"| {name} | {r['rate']:.0f} | {r['goodput']:.1f} | {r['shed'] / max(1, r['sent']):.1%} "
            f"| {r['shed_p50_ms']:.1f} / {r['shed_p95_ms']:.1f} / {r['shed_max_ms']:.1f} "
            f"| {r['p50']:.2f} / {r['p95']:.2f} / {r['p99']:.2f} | {r['first_token_p95']:.2f} "
            f"| {r['cpu_ms']:.2f} | {r['failed']} | {r['transitions']:.0f} | {r['generator']:.0%} |")


HEADER = ("| server | arrivals/s | goodput/s | shed | shed ms p50 / p95 / max | admitted p50 / p95 / p99 s "
          "| first token p95 s | CPU ms/req | failed | breaker transitions | gen CPU |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|")


def verdict(rows: dict[float, dict[str, Any]], capacity: float) -> str:
    """Issue 20's targets at 2 x capacity, from the router's rows."""
    at2, half = rows[2.0], rows[0.5]
    goodput, ratio = at2["goodput"] / capacity, at2["p95"] / half["p95"]
    return (f"\nat 2x: goodput {goodput:.0%} of capacity (>= 90%), admitted p95 {ratio:.2f} x the 0.5x p95 "
            f"(<= 1.3), shed p50 {at2['shed_p50_ms']:.1f} ms (<= 5; p95 {at2['shed_p95_ms']:.1f}), breaker transitions "
            f"{sum(r['transitions'] for r in rows.values()):.0f} (0)")


ROUTER_ENV: dict[str, str] = {}  # --router-env: settings the router runs with (an experiment's)


def start_router(fake_base: str, cpus: str | None, tag: str) -> Target:
    port = free_port()
    logdir = Path(tempfile.mkdtemp(prefix=f"ivy-busy-{tag}-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IVY_", "AI_", "GEMINI_", "OPENAI_", "REDIS_"))}
    env.update({"GEMINI_API_KEY": "bench-gemini-key-000000", "OPENAI_API_KEY": "bench-openai-key-000000",
                "GEMINI_BASE_URL": fake_base, "OPENAI_BASE_URL": f"{fake_base}/v1",
                "AI_RATE_LIMIT_PER_MIN": "1000000", "AI_ORG_RATE_LIMIT_PER_MIN": "10000000",
                "IVY_LOG_FILE": str(logdir / "ai_router.log"), "IVY_CACHE_ENABLED": "false", **ROUTER_ENV})
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


def pool_of(base: str) -> Pool:
    return Pool("127.0.0.1", int(base.rsplit(":", 1)[1]))


async def ready(pool: Pool, server: Server, path: str) -> None:
    for _ in range(300):
        try:
            if (await asyncio.wait_for(pool.get(path), 5)).status == 200:
                return
        except (OSError, TimeoutError):
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{server.name} did not start: {server.log_tail()}")


async def capacity(target: Target, seconds: float, seed: int
                   ) -> tuple[float, list[str]]:
    lines, base_p95, best = [], None, LADDER[0]
    for rate in LADDER:
        r = await open_loop(target, rate, seconds, seed)
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


async def set_realism(fake: Pool, seed: int, profiles: dict[str, Any]) -> None:
    body = orjson.dumps({"seed": seed, "time_scale": 1.0, "profiles": profiles})
    r = await fake.post("/_fake/realism", body, {"Content-Type": "application/json"})
    assert r.status == 200, r.body


async def main_async(args: argparse.Namespace) -> int:
    router_cpus, generator_cpus = (None, None) if args.no_pin else ("0", "1")
    if generator_cpus is not None:
        os.sched_setaffinity(0, {int(generator_cpus)})
    raise_fd_limit()
    fake, fake_base = realistic_fake(args.seed, 1.0, generator_cpus)
    fake_pool = pool_of(fake_base)
    try:
        await ready(fake_pool, fake, "/_fake/health")
        if args.only & {"capacity", "load"}:
            ivy, floor = start_router(fake_base, router_cpus, "load"), start_floor(fake_base, router_cpus)
            for target in (ivy, floor):
                await ready(target.pool, target.server, "/health")
                await open_loop(target, 20, 2, seed=1)  # warm: the router learns its providers
            cap = {}
            if args.capacity:
                cap = {"ivy": args.capacity, "floor": float("nan")}
                print(f"capacity given (--capacity): ivy {args.capacity:.0f}/s; the ladder was not run\n")
            else:
                print(HEADER)
                for target in (ivy, floor):
                    cap[target.name], _ = await capacity(target, args.seconds, args.seed)
                print(f"\ncapacity (p95 <= 1.2 x p95 at 25/s): ivy {cap['ivy']:.0f}/s, floor {cap['floor']:.0f}/s, "
                      f"ratio {cap['ivy'] / cap['floor']:.2f}\n")
            if "load" in args.only:
                print(HEADER)
                rows: dict[float, dict[str, Any]] = {}
                for share in (0.5, 1.0, 1.5, 2.0):
                    for target in (ivy, floor):
                        r = await open_loop(target, share * cap["ivy"], args.seconds, args.seed)
                        print(row(f"{target.name} {share}x", r), flush=True)
                        if target is ivy:
                            rows[share] = r
                print(verdict(rows, cap["ivy"]))
            ivy.server.stop()
            floor.server.stop()
        if "slow" in args.only:
            await set_realism(fake_pool, args.seed, THINKING)
            ivy = start_router(fake_base, router_cpus, "slow")
            await ready(ivy.pool, ivy.server, "/health")
            r = await open_loop(ivy, args.slow_rate, args.slow_seconds, args.seed)
            print(f"\nslow but healthy provider (first token ~3 s, ~40 tokens/s), {args.slow_rate}/s for "
                  f"{args.slow_seconds:.0f} s, cold router, defaults: real answers {r['real']}/{r['sent']} "
                  f"({r['real'] / max(1, r['sent']):.2%}), p50 {r['p50']:.2f} s, p95 {r['p95']:.2f} s, "
                  f"shed {r['shed']}, failed {r['failed']}, breaker transitions {r['transitions']:.0f}, "
                  f"gen CPU {r['generator']:.0%}")
            ivy.server.stop()
            await set_realism(fake_pool, args.seed, {})
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
    parser.add_argument("--capacity", type=float, default=0.0,
                        help="the router's capacity (arrivals/s) to load at 0.5-2x, instead of the ladder")
    parser.add_argument("--slow-rate", type=float, default=50.0)
    parser.add_argument("--slow-seconds", type=float, default=20.0)
    parser.add_argument("--brownout-runs", type=int, default=0)
    parser.add_argument("--router-env", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting the router runs with (repeatable), e.g. IVY_ADMISSION_TARGET_CPU=0.95")
    parser.add_argument("--no-pin", action="store_true", help="do not pin with taskset / sched_setaffinity")
    args = parser.parse_args()
    for setting in args.router_env:
        name, sep, value = setting.partition("=")
        if not sep or not name:
            parser.error(f"--router-env takes NAME=VALUE, not {setting!r}")
        ROUTER_ENV[name] = value
    code = asyncio.run(main_async(args)) if args.only else 0
    brownout_runs(args.brownout_runs)
    sys.exit(code)


if __name__ == "__main__":
    main()
