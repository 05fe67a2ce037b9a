"""The core's typed State: every client and shared object a request needs, opened once at start
(`running_state`, from the builders next to what they build) and closed at stop."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import orjson

from app import __version__
from app.budget import Budgets, build_budgets
from app.cache import AnswerCache, Warmer, build_cache
from app.config import Settings
from app.config.runtime_flags import RuntimeFlags
from app.observability.latency import LatencyView
from app.observability.logging import get_logger
from app.observability.metrics import LimiterMetrics, Metrics, clean_dead_process_files, multiproc_dir
from app.observability.slo import latency_summaries
from app.observability.throttle import STORM_WARNING_SECONDS, Throttle
from app.providers import prompts
from app.providers.chain import ProviderChain
from app.providers.wiring import build_chain
from app.resilience.breaker import CircuitBreaker
from app.resilience.load import Admission
from app.resilience.ratelimit import RateLimiter
from app.resilience.wiring import build_admission, build_limiter, build_redis, warm_limiter
from app.retrieval.retriever import KnowledgeBase
from app.safety import LeakCheck, OutputPolicy, new_canary
from app.safety.links import hosts_in

log = get_logger()


@dataclass(slots=True)
class LimiterHealth:
    """What the fail-open path knows about the limiter backend, for /health and the warning throttle."""

    last_error: str | None = None
    last_error_at: float | None = None
    last_ok_at: float | None = None
    warnings: Throttle = field(default_factory=lambda: Throttle(STORM_WARNING_SECONDS))
    failures: int = 0

    @property
    def degraded(self) -> bool:
        if self.last_error_at is None:
            return False
        return self.last_ok_at is None or self.last_error_at > self.last_ok_at


@dataclass(slots=True)
class State:
    settings: Settings
    metrics: Metrics
    latency: LatencyView
    limiter: RateLimiter
    limiter_metrics: LimiterMetrics  # its series, bound once
    chain: ProviderChain
    breakers: dict[str, CircuitBreaker]
    kb: KnowledgeBase
    http: aiohttp.ClientSession
    flags: RuntimeFlags
    cache: AnswerCache
    warmer: Warmer
    canary: str  # in every system text, per process: an answer holding it leaked the prompt
    output_policy: OutputPolicy
    budgets: Budgets
    admission: Admission  # the loop's lag and the door's limit (app/resilience/load.py)
    started_at: float = field(default_factory=time.time)
    limiter_health: LimiterHealth = field(default_factory=LimiterHealth)
    missing_user_warned: Throttle = field(default_factory=lambda: Throttle(60.0))


@contextlib.asynccontextmanager
async def running_state(settings: Settings) -> AsyncIterator[State]:
    """Open every client into a State, run its background loops, and close it all on exit."""
    if (folder := multiproc_dir()) is not None:
        clean_dead_process_files(folder)
    metrics = Metrics(eval_reports_dir=settings.ivy_eval_reports_dir)
    http = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=1000, ttl_dns_cache=300, enable_cleanup_closed=True),
        json_serialize=lambda obj: orjson.dumps(obj).decode(),
    )
    redis = build_redis(settings)
    budgets = build_budgets(settings, redis, metrics)
    admission = build_admission(settings, metrics)
    chain, breakers = build_chain(settings, http, metrics, redis, budgets, lag=admission.lag)
    cache, warmer = build_cache(settings, redis, metrics)
    kb = KnowledgeBase.from_folder(settings.ivy_knowledge_dir)
    canary = new_canary()
    policy = OutputPolicy.build(allowed_domains=settings.link_domains,
                                kb_hosts=set().union(*(hosts_in(s.text) for s in kb.sections)),
                                leak=LeakCheck(prompts.system_texts(), canary))
    limiter = build_limiter(settings, redis)
    state = State(
        settings=settings, metrics=metrics, latency=LatencyView(metrics, settings.ivy_latency_window_seconds),
        limiter=limiter, limiter_metrics=metrics.for_limiter(limiter.backend), chain=chain, breakers=breakers,
        kb=kb, http=http, flags=RuntimeFlags(settings, redis), cache=cache, warmer=warmer, canary=canary,
        output_policy=policy, budgets=budgets, admission=admission,
    )
    log.info("router_started", version=__version__, provider_chain=" -> ".join(chain.names),
             model_provider=chain.names[0], limiter_backend=state.limiter.backend,
             modal_heuristics=settings.ivy_modal_heuristics, organic=settings.ivy_organic_enabled,
             rate_limit_per_min=settings.ai_rate_limit_per_min, knowledge_sections=len(state.kb.sections),
             gc_gen0_threshold=settings.ivy_gc_gen0_threshold, auth_mode=settings.ivy_auth_mode,
             answer_cache=cache.backend.name if cache.enabled else "off",
             budgets=(budgets.store.backend if budgets.store is not None else "off"))
    await warm_limiter(state.limiter, metrics, fail_open=settings.ai_rate_limit_fail_open)
    tasks = [asyncio.create_task(latency_summaries(state.latency, settings.ivy_latency_summary_seconds)),
             asyncio.create_task(admission.lag.run())]
    if budgets.store is not None:
        tasks.append(asyncio.create_task(budgets.run()))
    if redis is not None:
        with contextlib.suppress(Exception):  # Redis down at start: env flags until it answers
            await state.flags.refresh()
        tasks.append(asyncio.create_task(state.flags.poll()))
    try:
        yield state
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await chain.aclose()
        await budgets.aclose()  # every settlement written before Redis closes
        await http.close()
        await state.limiter.aclose()
        if redis is not None:
            await redis.aclose()
        metrics.close()
        log.info("router_stopped", uptime_seconds=round(time.time() - state.started_at, 1))
