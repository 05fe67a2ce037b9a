"""The command line: ``python scripts/bench.py [--quick] [--markdown-from JSON] ...``."""

from __future__ import annotations

import argparse
import json
import shutil
import signal
from pathlib import Path

import tools.bench
from tools.bench import say
from tools.bench.record import default_json_path, write_json
from tools.bench.render import render_markdown
from tools.bench.run import Bench
from tools.bench.servers import Server

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/14"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=tools.bench.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="2 s points, c=1/50 and moderate, 15 s soak (~1 min)")
    p.add_argument("--json-out", type=Path, default=None, help="default: bench-results/bench-YYYYMMDD-HHMMSS.json")
    p.add_argument("--targets", default="a,b,c,d", help="subset of a,b,c,d (a is always measured)")
    p.add_argument("--upstream", choices=("fast", "fake"), default="fast",
                   help="fast: scripts/bench_upstream.py (default; the fake provider is the bottleneck); "
                   "fake: tools/fake_provider/. Both are measured at c=50 either way")
    p.add_argument("--moderate-rps", type=int, default=200, help="the fixed moderate load, requests/s")
    p.add_argument("--moderate-connections", type=int, default=40,
                   help="connections carrying the moderate load (each paced by exponential think times)")
    p.add_argument("--slow-connections", type=int, default=500, help="connections of the 300 ms upstream case")
    p.add_argument("--point-seconds", type=int, default=0, help="override the duration of each point")
    p.add_argument("--soak-seconds", type=int, default=None, help="override the soak (0 skips it)")
    p.add_argument("--no-slow", action="store_true", help="skip the 300 ms / 500 connection case")
    p.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs with taskset")
    p.add_argument("--no-install", action="store_true", help="install neither wrk nor LiteLLM")
    p.add_argument("--litellm-install-timeout", type=float, default=300.0)
    p.add_argument("--start-timeout", type=float, default=120.0, help="seconds a server may take to answer")
    p.add_argument("--redis-url", default=DEFAULT_REDIS_URL)
    p.add_argument("--router-env", type=lambda v: tuple(v.split("=", 1)), action="append", default=[],
                   help="NAME=VALUE for the router (c), e.g. IVY_CACHE_ENABLED=false (repeatable)")
    p.add_argument("--markdown-from", type=Path, default=None, metavar="JSON",
                   help="print docs/PERFORMANCE.md's tables for a saved run and exit (measures nothing)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.markdown_from is not None:
        print(render_markdown(json.loads(args.markdown_from.read_text())))
        return 0
    args.targets = ",".join(sorted({"a", *(t.strip() for t in args.targets.split(",") if t.strip())}))
    if not set(args.targets.split(",")) <= set("abcd"):
        build_parser().error("--targets takes a subset of a,b,c,d")
    json_out = args.json_out or default_json_path()

    def on_signal(signum: int, _frame: object) -> None:
        Server.stop_all()
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    bench = Bench(args, json_out)
    failed = True
    try:
        record = bench.run()
        failed = any(t.status != "measured" for t in bench.targets.values())
    finally:
        Server.stop_all()
        if failed:
            say(f"server logs kept in {bench.work}")
        else:
            shutil.rmtree(bench.work, ignore_errors=True)
    write_json(json_out, record)
    return 0
