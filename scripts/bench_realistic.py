#!/usr/bin/env python3
"""Real answers at real providers' speeds: the router in front of the fake provider in realistic mode.

    python scripts/bench_realistic.py [--requests 200] [--concurrency 8] [--time-scale 1.0] [--only healthy,...]

The answer cache is off in the provider scenarios (they measure the chain); `repeated` and
`repeated_nocache` send the same Zipf mix over 100 distinct questions (20 product questions, 16
questions about each of 5 leads) from 5 orgs, with the cache on and off: provider calls, hit ratio,
p50, and hits that served another org's or another lead's answer (must be 0: a hit must return
an answer that a miss of the same org and question produced).

Per scenario it starts a fresh router (uvicorn, no Redis), warms it with 30 healthy requests (a
router that has run a while knows its providers), switches the fault on, and sends a realistic
mix (greetings, lead questions, knowledge-base questions, email drafts, insights). It prints the
share of answers from a real model, the fallback reasons, p50/p95/p99 per intent (time to the
first `delta` for streams), extra upstream calls per request, and the primary's own service
time measured by the simulator in the same run (every call it planned, the cancelled ones too),
then checks the issue's targets against those references. Exit code 1 when a target is missed.
Loopback only; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _repo_root  # noqa: F401  (puts the repository's root on sys.path, for tools.*)
import aiohttp
import orjson

from app.providers.hedging import percentile
from tools.bench.servers import Server, realistic_fake, wait_ready
from tools.ports import free_port

# The router and the simulator are child processes for the length of the run (tools/bench/servers.py,
# cwd the repository's root); starting and stopping them from the event loop is deliberate (a few
# ms, once per scenario).
LEAD = {"id": "L-1042", "name": "Dana Whitfield", "email": "dana@northwind.io", "company": "Northwind Logistics",
        "title": "VP Operations", "stage": "proposal", "budget": "$40k", "leadScore": 82,
        "aiInsights": ["Opened pricing email 3 times", "Champion identified"],
        "notes": ["Asked about SSO on 10/02 call"], "lastContact": "2026-10-28"}
MIX = [  # (weight, query, context)
    (25, "hi there, how's it going?", {}),
    (15, "what's their budget?", {"lead": LEAD}),
    (15, "when did we last talk to Dana and what did she ask about?", {"lead": LEAD}),
    (20, "do we support SSO with Okta?", {}),
    (15, "draft a follow-up email to dana about the proposal", {"lead": LEAD}),
    (10, "show me this lead's score and insights", {"lead": LEAD}),
]
PRODUCT_QUESTIONS = [
    "do we support SSO with Okta?", "what's in the starter plan?", "how much is the pro plan per seat?",
    "what is our refund policy?", "do we integrate with Salesforce?", "how long does onboarding take?",
    "do we support SAML?", "is there an annual discount?", "can customers export their data?",
    "do we have a HubSpot integration?", "what does the enterprise plan include?",
    "how do I handle a pricing objection?",
    "do we offer a free trial?", "is SCIM provisioning supported?", "how are invoices sent?",
    "what is the cancellation policy?", "do we support two-factor authentication?", "what's our uptime SLA?",
    "how do we qualify a lead with BANT?", "can we connect to Slack?",
]
LEAD_QUESTIONS = [
    "what's their budget?", "when did we last talk to them?", "what stage is this deal in?", "who is the contact?",
    "what did they ask about?", "what's their title?", "which company are they with?", "what are the next steps?",
    "summarise this lead", "what's their email?", "any notes on this lead?", "what do we know about their needs?",
    "is this lead qualified?", "what should I say on the next call?", "how engaged is this lead?",
    "what objections did they raise?",
]
LEADS = [{**LEAD, "id": f"L-{2000 + i}", "name": name, "email": f"{name.split()[0].lower()}@example.com",
          "budget": f"${20 + 15 * i}k", "notes": [f"Call {i + 1}: asked about {topic}"]}
         for i, (name, topic) in enumerate([("Ana Ruiz", "SSO"), ("Ben Okafor", "pricing"), ("Chen Wei", "onboarding"),
                                           ("Dara Nolan", "refunds"), ("Eli Moss", "integrations")])]
for _lead in LEADS:
    _lead.pop("leadScore", None)
    _lead.pop("aiInsights", None)
REPEATED = [(q, {}) for q in PRODUCT_QUESTIONS] + [(q, {"lead": lead}) for lead in LEADS for q in LEAD_QUESTIONS]
ORGS = [f"org-{n}" for n in range(5)]
ZIPF_S = 1.1


@dataclass
class Scenario:
    name: str
    active: str = "gemini"
    faults: list[dict[str, Any]] = field(default_factory=list)
    stream: bool = False
    cache: bool = False  # the answer cache (IVY_CACHE_ENABLED)
    repeated: bool = False  # the repeated-questions mix instead of MIX


SCENARIOS = [
    Scenario("healthy"),
    Scenario("openai_primary", active="openai"),
    Scenario("brownout", faults=[{"kind": "brownout", "provider": "gemini", "share": 0.2, "seconds": 4}]),
    Scenario("primary_503", faults=[{"kind": "503", "provider": "gemini"}]),
    Scenario("primary_hangs", faults=[{"kind": "hang", "provider": "gemini", "seconds": 120}]),
    Scenario("both_down", faults=[{"kind": "503"}]),
    Scenario("streamed", stream=True),
    Scenario("repeated", cache=True, repeated=True),
    Scenario("repeated_nocache", repeated=True),
]


@dataclass
class Sample:
    intent: str
    provider: str
    reason: str | None
    seconds: float  # whole answer, or first delta for streams
    status: int
    cache: str = "-"
    answer: str = ""
    origin: tuple[str, int] = ("", -1)  # (org, question index) in the repeated mix


def pct(values: list[float], q: float) -> float:
    return percentile(sorted(values), q) if values else float("nan")


async def wait_up(server: Server, path: str) -> None:
    """Until the server answers 200 at ``path`` (30 s at most); polled in a thread, off the event loop."""
    await asyncio.to_thread(wait_ready, server, "GET", path, timeout=30)


async def ask(session: aiohttp.ClientSession, base: str, query: str, context: dict[str, Any], stream: bool,
              user: str, org: str | None = None) -> Sample:
    started = time.perf_counter()
    body = orjson.dumps({"query": query, "context": context, "stream": stream})
    headers = {"Content-Type": "application/json", "X-User-ID": user, **({"X-Org-ID": org} if org else {})}
    async with session.post(f"{base}/ai/router/v2", data=body, headers=headers) as r:
        if not stream:
            payload = orjson.loads(await r.read())
            elapsed = time.perf_counter() - started
            if r.status != 200:
                return Sample("error", "none", f"http_{r.status}", elapsed, r.status)
            return Sample(payload["intent"], payload["provider"], payload["fallback"]["reason"], elapsed, r.status,
                          payload.get("cache", "-"), payload["answer"])
        first: float | None = None
        intent, provider, reason, event = "none", "none", None, ""
        async for line in r.content:
            text = line.decode().strip()
            if text.startswith("event: "):
                event = text[7:]
            elif text.startswith("data: "):
                data = orjson.loads(text[6:])
                if event == "meta":
                    intent = data["intent"]
                elif event == "delta" and first is None:
                    first = time.perf_counter() - started
                elif event == "done":
                    provider, reason = data["provider"], data["fallback"]["reason"]
                elif event == "error":
                    provider, reason = data.get("provider", "none"), "stream_error"
        return Sample(intent, provider, reason, first if first is not None else time.perf_counter() - started,
                      r.status)


async def fire(session: aiohttp.ClientSession, base: str, n: int, concurrency: int, stream: bool, seed: int
               ) -> list[Sample]:
    rng = random.Random(seed)
    weights = [w for w, _, _ in MIX]
    picks = rng.choices(MIX, weights=weights, k=n)
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> Sample:
        _, query, context = picks[i]
        async with gate:
            return await ask(session, base, query, context, stream, f"rep-{i % 40}")

    return list(await asyncio.gather(*(one(i) for i in range(n))))


async def fire_repeated(session: aiohttp.ClientSession, base: str, n: int, concurrency: int, seed: int
                        ) -> list[Sample]:
    """A Zipf mix over REPEATED, each request from one of ORGS (uniformly)."""
    rng = random.Random(seed)
    weights = [1 / (rank ** ZIPF_S) for rank in range(1, len(REPEATED) + 1)]
    picks = [(rng.choices(range(len(REPEATED)), weights=weights)[0], rng.choice(ORGS)) for _ in range(n)]
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> Sample:
        q, org = picks[i]
        query, context = REPEATED[q]
        async with gate:
            sample = await ask(session, base, query, context, False, f"rep-{i % 40}", org)
        sample.origin = (org, q)
        return sample

    return list(await asyncio.gather(*(one(i) for i in range(n))))


def cross_hits(samples: list[Sample]) -> int:
    """Hits that served another org's entry or another lead's data. Each of the fake's answers is its
    own (it quotes the prompt, then a random length of text), so a hit whose text no miss of its own
    org produced came from another org's entry; a hit that names another lead (name, email, id,
    budget or note; the fake quotes what the prompt held) carries that lead's data. Two leads whose
    prompts come out the same (one retrieved fact, the same stage) rightly share an entry: neither
    is named in it (the question-by-question check this replaces counted 15 such hits as leaks)."""
    made_in_org: dict[str, set[str]] = {}
    for s in samples:
        if s.cache != "hit":
            made_in_org.setdefault(s.origin[0], set()).add(s.answer)

    def names_another_lead(s: Sample) -> bool:
        own = REPEATED[s.origin[1]][1].get("lead")
        return any(mark in s.answer for lead in LEADS if lead is not own
                   for mark in (lead["name"], lead["email"], lead["id"], lead["budget"], lead["notes"][0]))

    return sum(1 for s in samples if s.cache == "hit" and (
        s.answer not in made_in_org.get(s.origin[0], set()) or names_another_lead(s)))


async def run_scenario(sc: Scenario, args: argparse.Namespace, fake_base: str, session: aiohttp.ClientSession
                       ) -> dict[str, Any]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    logdir = Path(tempfile.mkdtemp(prefix="ivy-realistic-"))
    env = {**os.environ, "ACTIVE_MODEL": sc.active, "GEMINI_API_KEY": "bench-gemini-key-000000",
           "OPENAI_API_KEY": "bench-openai-key-000000", "GEMINI_BASE_URL": fake_base,
           "OPENAI_BASE_URL": f"{fake_base}/v1", "AI_RATE_LIMIT_PER_MIN": "1000000",
           "AI_ORG_RATE_LIMIT_PER_MIN": "1000000", "IVY_LOG_FILE": str(logdir / "ai_router.log"),
           "IVY_CACHE_ENABLED": "true" if sc.cache else "false", "IVY_CACHE_WARMUP_PER_MIN": "0"}
    env.pop("REDIS_URL", None)
    for name, value in args.router_env:
        env[name] = value
    router = Server(f"router-{sc.name}", [sys.executable, "-m", "uvicorn", "app.main:app", "--port", str(port),
                                          "--log-level", "warning"], env=env, port=port,
                    log=logdir / "uvicorn.log").start()
    try:
        await wait_up(router, "/health")
        async with session.delete(f"{fake_base}/_fake/fault"):
            pass
        await fire(session, base, 30, args.concurrency, False, seed=1)  # warm: the router learns its providers
        async with session.post(f"{fake_base}/_fake/realism",
                                json={"seed": args.seed, "time_scale": args.time_scale}):
            pass
        for fault in sc.faults:
            async with session.post(f"{fake_base}/_fake/fault", json=fault) as r:
                assert r.status == 200, await r.text()
        started = time.monotonic()
        samples = (await fire_repeated(session, base, max(600, 3 * args.requests), args.concurrency, args.seed)
                   if sc.repeated else
                   await fire(session, base, args.requests, args.concurrency, sc.stream, seed=args.seed))
        wall = time.monotonic() - started
        async with session.get(f"{fake_base}/_fake/stats") as r:
            stats = await r.json()
        async with session.get(f"{base}/ai/router/health") as r:
            health = await r.json()
    finally:
        router.stop()
        async with session.delete(f"{fake_base}/_fake/fault"):
            pass
    calls = sum(int(s["calls"]) for s in stats.values())
    return {"scenario": sc, "samples": samples, "stats": stats, "health": health, "wall": wall,
            "extra": (calls - len(samples)) / len(samples)}


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    samples: list[Sample] = result["samples"]
    sc: Scenario = result["scenario"]
    real = [s for s in samples if s.provider in ("gemini", "openai")]
    reasons: dict[str, int] = {}
    for s in samples:
        if s.reason:
            reasons[s.reason] = reasons.get(s.reason, 0) + 1
    intents = {}
    for intent in sorted({s.intent for s in samples}):
        times = [s.seconds for s in samples if s.intent == intent]
        intents[intent] = (pct(times, 50), pct(times, 95), pct(times, 99), len(times))
    secondary = "openai" if sc.active == "gemini" else "gemini"
    return {
        "real_share": len(real) / len(samples), "reasons": reasons, "intents": intents,
        "p95": pct([s.seconds for s in samples], 95),
        "p95_chat": pct([s.seconds for s in samples if s.intent != "modal"], 95),
        "p95_tail": pct([s.seconds for s in samples[20:]], 95),
        "max": max(s.seconds for s in samples), "ok_share": sum(s.status == 200 for s in samples) / len(samples),
        "local_share": sum(s.provider == "local" for s in samples) / len(samples),
        "primary": result["stats"].get(sc.active, {}), "secondary": result["stats"].get(secondary, {}),
        "extra": result["extra"], "wall": result["wall"],
        "breakers": {k: v["state"] for k, v in result["health"]["providers"]["circuit_breakers"].items()},
        "hedge_delay_ms": {k: v["hedge_delay_ms"]
                           for k, v in result["health"]["providers"]["hedging"]["providers"].items()},
        "requests": len(samples), "calls": sum(int(v["calls"]) for v in result["stats"].values()),
        "p50": pct([s.seconds for s in samples], 50),
        "hit_ratio": sum(s.cache == "hit" for s in samples) / len(samples),
        "cross_hits": cross_hits(samples),
        # Ticks of the router's lag timer above its bound: hedges due then were put off.
        "late_ticks": result["health"].get("load", {}).get("loop", {}).get("late_ticks", 0),
    }


def check(name: str, s: dict[str, Any], healthy: dict[str, Any] | None, deadline: float) -> list[tuple[str, bool]]:
    prim, sec = s["primary"], s["secondary"]
    ms = 1000.0
    if name == "healthy":
        return [("real >= 99.5%", s["real_share"] >= 0.995), ("no breaker opened", set(s["breakers"].values()) ==
                {"closed"}), ("extra calls <= 10%", s["extra"] <= 0.10),
                ("p95 <= primary service p95 + 50 ms", s["p95"] * ms <= prim.get("service_p95_ms", 0) + 50)]
    if name == "openai_primary":
        return [("real >= 99.5%", s["real_share"] >= 0.995),
                ("p95 <= openai service p95 + 50 ms", s["p95"] * ms <= prim.get("service_p95_ms", 0) + 50)]
    if name == "brownout":
        ratio = s["p95"] / healthy["p95"] if healthy else float("nan")
        return [("real >= 99%", s["real_share"] >= 0.99), ("extra calls <= 35%", s["extra"] <= 0.35),
                (f"p95 <= 1.6 x healthy p95 (x{ratio:.2f})", not ratio > 1.6)]
    if name == "primary_503":
        return [("real >= 99%", s["real_share"] >= 0.99),
                ("p95 (breaker open) <= secondary p95 + 100 ms",
                 s["p95_tail"] * ms <= sec.get("service_p95_ms", 0) + 100)]
    if name == "primary_hangs":
        delay = s["hedge_delay_ms"].get("gemini", 0)
        return [("real >= 99%", s["real_share"] >= 0.99),
                ("p95 <= hedge delay + secondary p95 + 100 ms",
                 s["p95"] * ms <= delay + sec.get("service_p95_ms", 0) + 100)]
    if name == "both_down":
        return [("100% HTTP 200 from local", s["ok_share"] == 1 and s["local_share"] == 1),
                ("within the deadline", s["max"] <= deadline)]
    if name == "repeated":
        return [("real >= 99.5%", s["real_share"] >= 0.995), ("0 cross-org / cross-lead hits", s["cross_hits"] == 0),
                ("provider calls <= misses + 5%", s["calls"] <= (1 - s["hit_ratio"]) * s["requests"] * 1.05 + 1)]
    if name == "repeated_nocache":
        return [("real >= 99.5%", s["real_share"] >= 0.995), ("no hits", s["hit_ratio"] == 0)]
    if name == "streamed":
        # A modal's payload is one JSON document, sent whole: only chat answers stream token by token.
        return [("real >= 99.5%", s["real_share"] >= 0.995),
                ("first delta p95 (chat intents) <= primary TTFT p95 + 50 ms",
                 s["p95_chat"] * ms <= prim.get("ttft_p95_ms", 0) + 50)]
    return []


def render(rows: list[tuple[str, dict[str, Any]]], checks: dict[str, list[tuple[str, bool]]]) -> str:
    out = ["| scenario | real model | fallback reasons | p50 / p95 / p99 per intent (ms) | extra calls/req "
           "| primary service p50 / p95 (ms) | primary TTFT p95 (ms) | targets |", "|---|---|---|---|---|---|---|---|"]
    for name, s in rows:
        intents = "; ".join(f"{i} {a * 1000:.0f}/{b * 1000:.0f}/{c * 1000:.0f} (n={n})"
                            for i, (a, b, c, n) in s["intents"].items())
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(s["reasons"].items())) or "-"
        prim = s["primary"]
        verdict = "; ".join(f"{'PASS' if ok else 'MISS'} {label}" for label, ok in checks[name])
        out.append(f"| {name} | {s['real_share']:.1%} | {reasons} | {intents} | {s['extra']:.2f} | "
                   f"{prim.get('service_p50_ms', '-')} / {prim.get('service_p95_ms', '-')} | "
                   f"{prim.get('ttft_p95_ms', '-')} | {verdict} |")
    return "\n".join(out)


def render_repeated(rows: list[tuple[str, dict[str, Any]]]) -> tuple[str, list[tuple[str, bool]]]:
    """The repeated-questions table, cache on against cache off, and the issue's targets on the pair."""
    got = dict(rows)
    out = ["| repeated questions | requests | provider calls | calls/request | hit ratio | p50 (ms) | p95 (ms) "
           "| cross-org/lead hits |", "|---|---|---|---|---|---|---|---|"]
    for name in ("repeated", "repeated_nocache"):
        if (s := got.get(name)) is not None:
            out.append(f"| {'cache on' if name == 'repeated' else 'cache off'} | {s['requests']} | {s['calls']} | "
                       f"{s['calls'] / s['requests']:.2f} | {s['hit_ratio']:.1%} | {s['p50'] * 1000:.1f} | "
                       f"{s['p95'] * 1000:.0f} | {s['cross_hits']} |")
    checks: list[tuple[str, bool]] = []
    if "repeated" in got and "repeated_nocache" in got:
        on, off = got["repeated"], got["repeated_nocache"]
        ratio = off["p50"] / max(on["p50"], 1e-9)
        fall = 1 - (on["calls"] / on["requests"]) / max(off["calls"] / off["requests"], 1e-9)
        checks = [(f"p50 falls >= 5x (x{ratio:.0f})", ratio >= 5),
                  (f"provider calls fall by the hit ratio ({fall:.1%} vs {on['hit_ratio']:.1%})",
                   fall >= on["hit_ratio"] - 0.05)]
        out.append("\n" + "; ".join(f"{'PASS' if ok else 'MISS'} {label}" for label, ok in checks))
    return "\n".join(out), checks


async def main_async(args: argparse.Namespace) -> int:
    fake, fake_base = realistic_fake(args.seed, args.time_scale)
    rows: list[tuple[str, dict[str, Any]]] = []
    checks: dict[str, list[tuple[str, bool]]] = {}
    deadline = float(dict(args.router_env).get("IVY_REQUEST_DEADLINE_SECONDS", 8.0))
    try:
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=100)) as session:
            await wait_up(fake, "/_fake/health")
            healthy: dict[str, Any] | None = None
            for sc in SCENARIOS:
                if args.only and sc.name not in args.only:
                    continue
                summary = summarise(await run_scenario(sc, args, fake_base, session))
                healthy = summary if sc.name == "healthy" else healthy
                rows.append((sc.name, summary))
                checks[sc.name] = check(sc.name, summary, healthy, deadline)
                print(f"{sc.name}: real {summary['real_share']:.1%}, p95 {summary['p95'] * 1000:.0f} ms, "
                      f"extra {summary['extra']:.2f}, late loop ticks {summary['late_ticks']}, {summary['wall']:.0f} s",
                      file=sys.stderr, flush=True)
    finally:
        fake.stop()
    print(render(rows, checks))
    if any(name.startswith("repeated") for name, _ in rows):
        table, checks["repeated_pair"] = render_repeated(rows)
        print("\n" + table)
    return 0 if all(ok for c in checks.values() for _, ok in c) else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--time-scale", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--only", type=lambda v: set(v.split(",")), default=None)
    parser.add_argument("--router-env", type=lambda v: tuple(v.split("=", 1)), action="append", default=[],
                        help="NAME=VALUE for the router, e.g. IVY_HEDGE_ENABLED=false (repeatable)")
    args = parser.parse_args()
    sys.exit(asyncio.run(main_async(args)))


if __name__ == "__main__":
    main()
