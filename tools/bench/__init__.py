"""End-to-end HTTP benchmark of the router against its floor and against LiteLLM. Measures; never judges.

    .venv/bin/python scripts/bench.py            # full run (~17 min, includes a 10-minute soak)
    .venv/bin/python scripts/bench.py --quick    # ~1 min smoke version (15 s soak)

On one machine, in one run, it starts a fast OpenAI-compatible upstream on loopback and drives
load with wrk (installed with apt-get when missing) against:

  (a) the upstream directly                                    (scripts/bench_upstream.py)
  (b) a minimal FastAPI proxy: same uvicorn, same event loop, one aiohttp session, nothing else
                                                               (scripts/bench_proxy.py)
  (c) our POST /ai/router/v2 (conversational query, provider openai at the upstream, Redis limiter
      on with limits that never refuse, logs at INFO to a temp file, metrics on)
  (d) LiteLLM's proxy (litellm[proxy] in its own venv under ~/.cache/ivy-bench, no DB, retries 0)

Per target: requests/s at 1, 10 (full only) and 50 connections (saturation = the best of them),
p50/p95/p99 at one connection and at a fixed moderate load (default 200 requests/s over 40
connections paced by exponential think times in a Lua delay() hook), errors, and the latency over
(a); then the ratios c/b and c/d, the 300 ms-upstream / 500-connection case for (c) (closed loop,
as the target states, and again with each connection paced by exponential think times), a soak of
(c) (10 min; 15 s with --quick) sampling VmRSS and the fd count. Prints the targets with PASS/MISS
(informative) and writes the same as JSON to bench-results/bench-YYYYMMDD-HHMMSS.json. Exit code 0
whatever the numbers; 2 only when no load generator can be found or installed.

CPU layout (2 cores): wrk and the upstreams on CPU 0, the server under test on CPU 1 (taskset).
Redis (127.0.0.1:6379, database 14) is left where the OS puts it. All traffic stays on loopback.
"""

# The package (scripts/bench.py is its entry point), one job a module:
#   cli.py      the command line: the options, --markdown-from, signals, the JSON file
#   run.py      the orchestrator: start every server, check them, measure each target, the record
#   measure.py  wrk runs against a target: the points, the median of repeats, the slow case, the soak
#   servers.py  server processes, HTTP polling until ready, the child environment, Redis, /metrics
#   wrk.py      wrk: install, the Lua script, one run, the output parser
#   sampler.py  /proc: a process's VmRSS and fds, their trend, the machine and its background load
#   litellm.py  LiteLLM's proxy in its own venv, and its config
#   record.py   the plans, the targets and what the record derives: overheads, ratios, checks, JSON
#   render.py   the terminal report and docs/PERFORMANCE.md's markdown tables

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts"


def say(*parts: object) -> None:
    print(*parts, flush=True)


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
