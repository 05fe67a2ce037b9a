"""What does one hostile request cost? CPU per request for worst-case 64 KiB bodies; not a test.

    flock /tmp/ivy-bench.lock python scripts/bench_hostile.py [--repeats 15] [--ordinary 300]

Each shape is a body just under IVY_MAX_BODY_BYTES (the body limit) built to hit one matcher
where it is weakest: one huge word (the typo matcher), thousands of distinct long words, a query
of punctuation, hyphen chains, JSON context nested deep or spread wide, long lists, combining
marks and characters that NFKD expands. They go through the real app in-process, called as
uvicorn calls it (the ASGI lifespan, then one ASGI call per request on one event loop; offline
provider, in-process limiter, logs at INFO to a temp file), each request timed with
`time.process_time` (every thread of the process: the event loop and the log writer), `--repeats`
times after one warm-up, each repeat with new text. The baseline is measured in the same run: the eval
set's ordinary requests (`scripts/eval_data`), one each, whose p50 every shape is compared with.
The target (issue 19): no shape above ~20 ms; ordinary p50 unchanged. It measures; it never fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import resource
import statistics
import string
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `cd scripts && python bench_hostile.py` must find `app`
    sys.path.insert(0, str(ROOT))

from app.config import Settings  # noqa: E402
from app.main import create_app  # noqa: E402

V2 = "/ai/router/v2"
BODY_LIMIT = 64 * 1024
MAX_QUERY = 8000
TARGET_MS = 20.0
RAG_QUERY = "What did Dana say in her notes and emails about the budget?"
DRAFT_QUERY = "Draft a follow-up email to Dana about the budget"
LEAD = {"name": "Dana Reyes", "company": "Acme", "email": "dana@acme.example", "stage": "Negotiation",
        "budget": "$50k", "leadScore": 82, "aiInsights": ["Engaged on pricing"]}

Body = dict[str, Any]


def _size(body: Body) -> int:
    return len(json.dumps(body, ensure_ascii=False).encode())


def _fill(make: Callable[[int], Body]) -> Body:
    """The largest `make(n)` whose JSON stays under the body limit (binary search on n)."""
    lo, hi = 1, 1
    while _size(make(hi)) < BODY_LIMIT - 64:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if _size(make(mid)) < BODY_LIMIT - 64 else (lo, mid)
    return make(lo)


def _words(n: int, rng: random.Random, lo: int = 6, hi: int = 14) -> list[str]:
    return ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(lo, hi))) for _ in range(n)]


def shapes(seed: int) -> dict[str, Body]:
    """Every shape, its text drawn from `seed`: each repeat is new text, never an answer a cache
    of the previous request's words would serve."""
    rng = random.Random(seed)
    distinct = _words(12_000, rng)
    letters = "".join(rng.choices(string.ascii_lowercase, k=BODY_LIMIT))

    def deep(n: int) -> Any:
        value: Any = "x"
        for _ in range(n):
            value = {"note": value}
        return value

    out: dict[str, Body] = {
        "huge_word_note": _fill(lambda n: {"query": RAG_QUERY, "context": {"lead": LEAD, "notes": [letters[:n]]}}),
        "huge_word_query": {"query": letters[:MAX_QUERY], "context": {"lead": LEAD}},
        "huge_word_draft": _fill(lambda n: {"query": DRAFT_QUERY, "context": {"lead": {**LEAD, "notes": letters[:n]}}}),
        "distinct_words_notes": _fill(lambda n: {"query": RAG_QUERY, "context": {
            "lead": LEAD, "notes": [" ".join(distinct[i:i + 40]) for i in range(0, n, 40)]}}),
        "distinct_words_query": {"query": " ".join(distinct)[:MAX_QUERY], "context": {"lead": LEAD}},
        "punctuation_query": {"query": ("{<[?!;,.'-/" * 800)[:MAX_QUERY], "context": {"lead": LEAD}},
        "hyphen_chain_query": {"query": ("ab-" * 3000)[:MAX_QUERY], "context": {"lead": LEAD}},
        # As deep as the body parser allows (pydantic's JSON parser stops near 200 levels), many times.
        "deep_json_context": _fill(lambda n: {"query": RAG_QUERY, "context": {"lead": LEAD, "notes": [deep(190)] * n}}),
        "wide_notes": _fill(lambda n: {"query": RAG_QUERY, "context": {"lead": LEAD, "notes": ["Dana budget"] * n}}),
        "many_lead_items": _fill(lambda n: {"query": RAG_QUERY, "context": {"lead": {**LEAD, "tags": ["budget"] * n}}}),
        "many_lead_fields": _fill(lambda n: {"query": RAG_QUERY, "context": {
            "lead": {**LEAD, **{f"f{i}": "budget" for i in range(n)}}}}),
        "capitalised_names": _fill(lambda n: {"query": "Is Raj the CFO?", "context": {
            "lead": LEAD, "notes": [" ".join(w.capitalize() for w in distinct[:n])]}}),
        "combining_marks": _fill(lambda n: {"query": RAG_QUERY, "context": {
            "lead": LEAD, "notes": ["e" + "\u0301\u0302\u0303" * n]}}),
        "nfkd_expanding": _fill(lambda n: {"query": "\ufdfa" * min(n, MAX_QUERY), "context": {
            "lead": LEAD, "notes": ["\ufdfa" * n]}}),
        "long_name": _fill(lambda n: {"query": "Who is Dana?", "context": {"lead": {**LEAD, "name": letters[:n]}}}),
    }
    return out


def ordinary_cases(limit: int) -> list[Body]:
    cases = [json.loads(line) for f in sorted((ROOT / "scripts" / "eval_data").glob("*.jsonl"))
             for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [{"query": c["query"], "context": c.get("context") or {}} for c in cases[:limit]]


class AsgiApp:
    """The app driven as uvicorn drives it: its lifespan, then one ASGI call per request."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.state: dict[str, Any] = {}
        self._shutdown = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> AsgiApp:
        started = asyncio.get_running_loop().create_future()
        events = iter([{"type": "lifespan.startup"}])

        async def receive() -> dict[str, Any]:
            with contextlib.suppress(StopIteration):
                return next(events)
            await self._shutdown.wait()
            return {"type": "lifespan.shutdown"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"].startswith("lifespan.startup") and not started.done():
                started.set_result(message)

        scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": self.state}
        self._task = asyncio.create_task(self.app(scope, receive, send))
        message = await started
        if message["type"] != "lifespan.startup.complete":
            raise RuntimeError(f"the app did not start: {message}")
        return self

    async def __aexit__(self, *_: object) -> None:
        self._shutdown.set()
        if self._task is not None:
            await self._task

    async def post(self, body: bytes, user: str) -> int:
        status = 0
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.Event().wait()  # never disconnects
            raise AssertionError

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]

        headers = [(b"content-type", b"application/json"), (b"x-user-id", user.encode()),
                   (b"content-length", str(len(body)).encode()), (b"host", b"127.0.0.1:8000")]
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": V2, "raw_path": V2.encode(), "query_string": b"", "root_path": "",
                 "headers": headers, "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000),
                 "state": dict(self.state)}
        await self.app(scope, receive, send)
        return status


async def _cpu_ms(app: AsgiApp, body: Body, user: str) -> tuple[float, int]:
    payload = json.dumps(body, ensure_ascii=False).encode()
    started = time.process_time()
    status = await app.post(payload, user)
    return (time.process_time() - started) * 1000, status


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def _measure(settings: Settings, rounds: list[dict[str, Body]], ordinary: list[Body]
                   ) -> tuple[list[float], list[dict[str, Any]]]:
    async with AsgiApp(create_app(settings)) as app:
        for i, body in enumerate(ordinary):  # warm-up: imports, caches, the first GC generations
            await _cpu_ms(app, body, f"warm-{i}")
        base = sorted([(await _cpu_ms(app, body, f"ordinary-{i}"))[0] for i, body in enumerate(ordinary)])
        rows = []
        for name in rounds[0]:
            await _cpu_ms(app, rounds[0][name], f"{name}-warm")
            runs = [await _cpu_ms(app, r[name], f"{name}-{i}") for i, r in enumerate(rounds[1:])]
            times = [ms for ms, _ in runs]
            rows.append({"shape": name, "bytes": _size(rounds[0][name]), "status": sorted({s for _, s in runs}),
                         "median_ms": statistics.median(times), "max_ms": max(times), "peak_rss_mb": _rss_mb()})
    return base, rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeats", type=int, default=15, help="timed requests per hostile shape (default 15)")
    parser.add_argument("--ordinary", type=int, default=300, help="eval cases for the ordinary baseline (default 300)")
    parser.add_argument("--only", default="", help="comma-separated shape names (default: all)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object too")
    args = parser.parse_args(argv)

    wanted = set(args.only.split(",")) if args.only else None
    rounds = [{k: v for k, v in shapes(seed).items() if wanted is None or k in wanted}
              for seed in range(args.repeats + 1)]
    with tempfile.TemporaryDirectory() as tmp, open(Path(tmp) / "stderr.log", "w") as stderr, \
            contextlib.redirect_stderr(stderr):  # the app's console log lines: to a file, not the table
        settings = Settings(_env_file=None, gemini_api_key=None, openai_api_key=None, redis_url=None,
                            ivy_log_file=Path(tmp) / "bench.log", ivy_log_level="INFO", ivy_cache_warmup_per_min=0,
                            ai_rate_limit_per_min=1_000_000_000, ai_org_rate_limit_per_min=1_000_000_000)
        base, rows = asyncio.run(_measure(settings, rounds, ordinary_cases(args.ordinary)))
    p50 = statistics.median(base)
    for row in rows:
        row["x_ordinary"] = row["median_ms"] / p50

    print(f"app: {Path(create_app.__code__.co_filename).parents[1]}")
    print(f"ordinary requests (eval set, {len(base)}): p50 {p50:.2f} ms CPU, p90 {base[int(0.9 * len(base))]:.2f} ms,"
          f" max {base[-1]:.2f} ms")
    print(f"{'shape':24} {'bytes':>6} {'status':>8} {'median ms':>10} {'max ms':>8} {'x p50':>6} {'rss MB':>7}")
    for r in rows:
        flag = "" if r["median_ms"] <= TARGET_MS else f"  over {TARGET_MS:.0f} ms"
        print(f"{r['shape']:24} {r['bytes']:6d} {','.join(map(str, r['status'])):>8} {r['median_ms']:10.2f}"
              f" {r['max_ms']:8.2f} {r['x_ordinary']:6.1f} {r['peak_rss_mb']:7.0f}{flag}")
    if args.json:
        print(json.dumps({"ordinary_p50_ms": p50, "shapes": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
