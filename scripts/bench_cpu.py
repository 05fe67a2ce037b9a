#!/usr/bin/env python3
"""CPU per request of the router against its floor at realistic streaming (issue 20, item 4).

    flock /tmp/ivy-bench.lock python scripts/bench_cpu.py [--rate 200] [--seconds 10] [--runs 3] [--profile FILE]
        [--before DIR]

Both servers (one uvicorn worker each, started fresh per run, interleaved) sit in front of the
same fake provider in realistic mode (gemini-2.5-flash's published speeds: ~30 streamed chunks
per ~110-token answer). The router: defaults, ACTIVE_MODEL=gemini, answer cache off, no Redis.
The floor (tools/bench/floor.py): FastAPI receiving the query and streaming one Gemini call over
one aiohttp session. Open-loop Poisson arrivals at --rate for --seconds, streamed requests of
bench_realistic.py's mix. CPU per request = the server process's CPU time (every thread's,
/proc/PID/task/*/schedstat) from the first arrival to the last answer, over the requests.
Prints each run and the medians, and Ivy / floor. `--before DIR` adds a third server, the router of
another source tree (e.g. `git archive main | tar -x -C DIR`), interleaved with the other two in
the same run, so before / after / floor share the machine's moment. `--profile FILE` instead runs the router once
under cProfile and writes its stats to FILE (for `python -m pstats`). A benchmark: it never fails.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import _repo_root  # noqa: F401  (puts the repository's root on sys.path, for tools.*)
import aiohttp
from bench_realistic import MIX, ask, fire, wait_up
from bench_tracing import cpu_seconds

from tools.bench.servers import Server, child_env, raise_fd_limit, realistic_fake
from tools.ports import free_port

NOT_COMPARABLE = "  (not all answered: a shed or failed request costs a fraction of an answer, so not comparable)"


def server(mode: str, fake_base: str, profile: str | None = None, before: Path | None = None) -> Server:
    port = free_port()
    logdir = Path(tempfile.mkdtemp(prefix=f"ivy-cpu-{mode}-"))
    env = child_env(GEMINI_BASE_URL=fake_base, GEMINI_API_KEY="bench-gemini-key-000000")
    app = "tools.bench.floor:app"
    if mode in ("ivy", "before"):
        app = "app.main:app"
        env.update({"ACTIVE_MODEL": "gemini", "OPENAI_API_KEY": "bench-openai-key-000000",
                    "OPENAI_BASE_URL": f"{fake_base}/v1", "AI_RATE_LIMIT_PER_MIN": "1000000",
                    "AI_ORG_RATE_LIMIT_PER_MIN": "1000000", "IVY_LOG_FILE": str(logdir / "ai_router.log"),
                    "IVY_CACHE_ENABLED": "false", "IVY_CACHE_WARMUP_PER_MIN": "0"})
    head = [sys.executable, "-m", "cProfile", "-o", profile] if profile else [sys.executable]
    cwd = {"cwd": before} if mode == "before" and before is not None else {}
    return Server(f"cpu-{mode}", [*head, "-m", "uvicorn", app, "--port", str(port), "--log-level", "warning"],
                  env=env, port=port, log=logdir / "uvicorn.log", **cwd).start()


async def open_loop(session: aiohttp.ClientSession, base: str, rate: float, n: int, seed: int) -> int:
    """n streamed requests at Poisson arrivals of `rate` per second; how many answered 200."""
    rng = random.Random(seed)
    picks = rng.choices(MIX, weights=[w for w, _, _ in MIX], k=n)
    tasks = []
    start = time.monotonic()
    at = 0.0
    for i, (_, query, context) in enumerate(picks):
        at += rng.expovariate(rate)
        delay = start + at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(ask(session, base, query, context, True, f"cpu-{i % 40}")))
    samples = await asyncio.gather(*tasks, return_exceptions=True)
    return sum(1 for s in samples if not isinstance(s, BaseException) and s.status == 200)


async def one_run(mode: str, args: argparse.Namespace, fake_base: str, session: aiohttp.ClientSession,
                  profile: str | None = None) -> dict[str, float]:
    srv = server(mode, fake_base, profile, args.before)
    base = f"http://127.0.0.1:{srv.port}"
    try:
        await wait_up(srv, "/health")
        await fire(session, base, 40, 8, True, seed=1)  # warm: imports, pools, the router's norms
        n = int(args.rate * args.seconds)
        before = cpu_seconds(srv.pid)
        ok = await open_loop(session, base, args.rate, n, args.seed)
        used = cpu_seconds(srv.pid) - before
    finally:
        if profile and srv.proc is not None:
            os.kill(srv.pid, signal.SIGINT)  # uvicorn stops cleanly; cProfile writes its file
            srv.proc.wait(timeout=30)
        srv.stop()
    return {"cpu_ms": used * 1000 / n, "ok": ok / n}


async def main_async(args: argparse.Namespace) -> None:
    raise_fd_limit()
    fake, fake_base = realistic_fake(args.seed, args.time_scale)
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                         timeout=aiohttp.ClientTimeout(total=60)) as session:
            await wait_up(fake, "/_fake/stats")
            if args.profile:
                r = await one_run("ivy", args, fake_base, session, profile=args.profile)
                print(f"profiled ivy: {r['cpu_ms']:.2f} CPU ms/request (under cProfile), ok {r['ok']:.1%}")
                return
            modes = ("floor", "before", "ivy") if args.before else ("floor", "ivy")
            runs: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
            for i in range(args.runs):
                for mode in modes:
                    r = await one_run(mode, args, fake_base, session)
                    runs[mode].append(r)
                    warn = "" if r["ok"] >= 0.995 else NOT_COMPARABLE
                    print(f"run {i + 1} {mode:6s}: {r['cpu_ms']:.2f} CPU ms/request, ok {r['ok']:.1%}{warn}",
                          flush=True)
    finally:
        Server.stop_all()
    med = {m: statistics.median(r["cpu_ms"] for r in rs) for m, rs in runs.items()}
    ratios = [i["cpu_ms"] / f["cpu_ms"] for i, f in zip(runs["ivy"], runs["floor"], strict=True)]
    print(f"\n{args.rate:g} arrivals/s, {args.seconds:g} s, {args.runs} runs (medians): "
          f"ivy {med['ivy']:.2f} ms, floor {med['floor']:.2f} ms, ivy/floor {med['ivy'] / med['floor']:.2f} "
          f"(per-run ratios {', '.join(f'{r:.2f}' for r in ratios)})")
    if args.before:
        def per_run(a: str, b: str) -> str:
            return ", ".join(f"{x['cpu_ms'] / y['cpu_ms']:.2f}" for x, y in zip(runs[a], runs[b], strict=True))
        print(f"before {med['before']:.2f} ms, before/floor {med['before'] / med['floor']:.2f} "
              f"(per run {per_run('before', 'floor')}); ivy/before {med['ivy'] / med['before']:.2f} "
              f"(per run {per_run('ivy', 'before')})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rate", type=float, default=200.0)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--time-scale", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--profile", default=None, help="run the router once under cProfile, stats to this file")
    p.add_argument("--before", type=Path, default=None,
                   help="also serve the router of this source tree (a git archive), interleaved, as 'before'")
    asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    main()
