"""The ASGI entry point: `python -m uvicorn app.main:app`.

`create_app()` reads the settings first (a bad value refuses the start with one line naming
the variable), and the lifespan creates every client into a typed State and closes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import sys
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
import orjson
import redis.asyncio as aioredis
from fastapi import FastAPI

from app import __version__
from app.api.admin import router as admin_router
from app.api.auth import Authenticator
from app.api.errors import install_error_handlers
from app.api.middleware import RequestContextMiddleware
from app.api.router_endpoints import IvyAPI, RouterEndpoints
from app.api.routes import router
from app.api.serving import ServerWatch, bind_is_loopback, find_server
from app.config import ConfigError, Settings, load_settings
from app.config.runtime_flags import RuntimeFlags
from app.observability.latency import LatencyView
from app.observability.logging import configure_logging, get_logger, shutdown_logging
from app.observability.metrics import BREAKER_STATE_VALUE, Metrics, clean_dead_process_files, multiproc_dir
from app.observability.redaction import redact, register_secrets
from app.providers.base import Provider
from app.providers.chain import Link, ProviderChain
from app.providers.gemini import GeminiProvider
from app.providers.hedging import HedgeConfig
from app.providers.openai import OpenAIProvider
from app.resilience.breaker import BreakerConfig, CircuitBreaker
from app.resilience.breaker import State as BreakerState
from app.resilience.breaker_store import SharedBreakerStore
from app.resilience.ratelimit import Limits, MemoryRateLimiter, RateLimiter, RedisRateLimiter
from app.retrieval.retriever import KnowledgeBase
from app.state import State

log = get_logger()

SLO_P95_MS = {"conversational": 1500.0, "rag": 2200.0}


def build_redis(settings: Settings) -> aioredis.Redis | None:
    """One Redis client (one pool) for the limiter and the shared breaker state, or None."""
    if not settings.redis_url:
        return None
    timeout = settings.redis_timeout_ms / 1000
    # A bounded, blocking pool: a burst of requests reuses warm connections instead of opening one
    # each. Cold connects and pool waits under a burst blew a 50 ms budget and failed open while
    # Redis was healthy, so only the command itself gets the short timeout; waiting for our own
    # pool or connecting gets longer (a Redis that is down refuses connections at once anyway).
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.redis_url, max_connections=64, timeout=max(timeout, 0.5), socket_timeout=timeout,
        socket_connect_timeout=max(timeout, 0.25),
    )
    return aioredis.Redis(connection_pool=pool)


def build_limiter(settings: Settings, redis: aioredis.Redis | None) -> RateLimiter:
    limits = Limits(
        user_per_min=settings.ai_rate_limit_per_min,
        user_capacity=settings.rate_limit_burst,
        org_per_min=settings.ai_org_rate_limit_per_min,
        org_capacity=settings.ai_org_rate_limit_per_min,
    )
    return MemoryRateLimiter(limits) if redis is None else RedisRateLimiter(redis, limits)


def build_chain(settings: Settings, http: aiohttp.ClientSession, metrics: Metrics, redis: aioredis.Redis | None
                ) -> tuple[ProviderChain, dict[str, CircuitBreaker]]:
    def on_transition(name: str, before: BreakerState, after: BreakerState, reason: str) -> None:
        metrics.breaker_transitions.labels(name, before, after).inc()
        metrics.breaker_state.labels(name).set(BREAKER_STATE_VALUE[after])
        level = log.warning if after == "open" else log.info
        level("circuit_breaker", provider=name, model_provider=name, from_state=before, to_state=after,
              reason=reason)

    config = BreakerConfig(
        window=settings.ivy_breaker_window, min_calls=settings.ivy_breaker_min_calls,
        failure_rate=settings.ivy_breaker_failure_rate, slow_call_rate=settings.ivy_breaker_slow_call_rate,
        consecutive=settings.ivy_breaker_consecutive,
        open_seconds=settings.ivy_breaker_open_seconds, half_open_calls=settings.ivy_breaker_half_open_calls,
    )
    order = [settings.active_model, "openai" if settings.active_model == "gemini" else "gemini"]
    links: list[Link] = []
    breakers: dict[str, CircuitBreaker] = {}
    for name in order:
        key = settings.provider_key(name)
        if key is None:
            log.warning("provider_disabled", model_provider=name,
                        message=f"{name.upper()}_API_KEY is not set: {name} is left out of the chain")
            continue
        provider: Provider
        if name == "openai":
            provider = OpenAIProvider(http, api_key=key.get_secret_value(), base_url=str(settings.openai_base_url),
                                      model=settings.openai_model)
        else:
            provider = GeminiProvider(http, api_key=key.get_secret_value(), base_url=str(settings.gemini_base_url),
                                      model=settings.gemini_model, thinking_budget=settings.gemini_thinking_budget)
        breakers[name] = CircuitBreaker(name, config, on_transition=on_transition)
        metrics.breaker_state.labels(name).set(0)
        links.append(Link(provider, breakers[name]))
    shared = SharedBreakerStore(redis) if redis is not None else None
    hedge = HedgeConfig(
        enabled=settings.ivy_hedge_enabled, percentile=settings.ivy_hedge_percentile,
        min_delay=settings.ivy_hedge_min_delay_ms / 1000, max_delay=settings.ivy_hedge_max_delay_ms / 1000,
        initial_delay=settings.ivy_hedge_initial_delay_ms / 1000, budget_ratio=settings.ivy_hedge_budget_ratio,
        budget_floor=settings.ivy_hedge_budget_floor,
        budget_window_seconds=settings.ivy_hedge_budget_window_seconds,
    )
    chain = ProviderChain(links, metrics, shared=shared, deadline=settings.ivy_request_deadline_seconds,
                          hedge=hedge)
    return chain, breakers


async def _latency_summaries(state: State) -> None:
    """Keep the latency window's snapshots fresh, and log a `p95`/`p99` line per interval while
    traffic flows, with a WARNING when an intent's p95 breaks its SLO."""
    interval = state.settings.ivy_latency_summary_seconds
    tick = min(interval, LatencyView.SNAPSHOT_SECONDS)
    next_summary, last_total = time.monotonic() + interval, -1
    while True:
        await asyncio.sleep(tick)
        if time.monotonic() < next_summary:
            state.latency.sample()
            continue
        next_summary += interval
        snap = state.latency.snapshot()
        total = snap["requests"]
        if total == last_total or not snap["intents"]:
            continue
        last_total = int(str(total))
        intents = snap["intents"]
        assert isinstance(intents, dict)
        log.info("latency_summary", window_seconds=snap["window_seconds"], error_rate=snap["error_rate"],
                 scope=snap["scope"],
                 **{f"{i}_{k}": v for i, d in intents.items() for k, v in d.items() if k.startswith("p")})
        for intent, slo in SLO_P95_MS.items():
            p95 = intents.get(intent, {}).get("p95_ms")
            if p95 is not None and p95 > slo:
                log.warning("latency_slo_breach", intent=intent, p95_ms=p95, slo_p95_ms=slo,
                            p99_ms=intents[intent]["p99_ms"])


async def _warm_limiter(state: State) -> None:
    """Load the Lua script and open a connection before traffic; a Redis that is down is not fatal."""
    up = state.metrics.limiter_up.labels(state.limiter.backend)
    try:
        await state.limiter.warm()
        up.set(1)
    except Exception as exc:
        up.set(0)
        log.warning("rate_limiter_unavailable", backend=state.limiter.backend, at="startup",
                    fail_open=state.settings.ai_rate_limit_fail_open,
                    error=redact(f"{type(exc).__name__}: {exc}")[:200])


def _watch_server(state: State) -> ServerWatch | None:
    """The slow-client and shutdown watchdog over uvicorn's connections, and the start-up warning
    when anyone who reaches the port may name themselves (IVY_AUTH_MODE=off on a public address)."""
    s = state.settings
    server = find_server()
    if server is None:
        log.info("server_watch_unavailable", auth_mode=s.ivy_auth_mode,
                 message="not under uvicorn's own Server: read timeouts, the bounded shutdown and the "
                         "bind-address check are left to the server")
        return None
    loopback = bind_is_loopback(server)
    if s.ivy_auth_mode == "off" and loopback is not True:
        log.warning("auth_off_on_public_address", host=str(server.config.host), auth_mode="off",
                    message="IVY_AUTH_MODE=off and listening beyond loopback: any client can name any "
                            "user with X-User-ID; set IVY_AUTH_MODE=jwt (README: Identity)")
    return ServerWatch(server, state.drain, header_timeout=s.ivy_header_timeout_seconds,
                       body_timeout=s.ivy_body_timeout_seconds, shutdown_timeout=s.ivy_shutdown_timeout_seconds)


def tune_gc(gen0_threshold: int) -> Callable[[], None]:
    """Freeze what start-up built out of the cyclic GC and collect the young generation every
    ``gen0_threshold`` allocations instead of 700; returns the function that undoes both.

    Why: requests in flight are thousands of container objects that live for the provider's
    latency, so at 700 they survive young collections, are promoted, and trigger full collections
    that free nothing. With 500 requests waiting on a 300 ms provider (connections paced by think
    times) the router ran a 45-55 ms full collection every ~2.5 s (150,000 objects traversed, 0
    collected) and gen-1 collections of 5-12 ms several times a second; the requests caught behind
    them made p99 373 ms against p50 302. At 50,000, with start-up frozen: no full collection in
    the run, p99 310 ms. Garbage without cycles is freed by reference counting as before; only
    cycles wait longer.
    """
    before = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(gen0_threshold, *before[1:])

    def restore() -> None:
        gc.set_threshold(*before)
        gc.unfreeze()

    return restore


def create_app(settings: Settings | None = None) -> IvyAPI:
    if settings is None:
        try:
            settings = load_settings()
        except ConfigError as exc:
            print(str(exc), file=sys.stderr, flush=True)
            raise SystemExit(2) from None
    resolved = settings
    register_secrets(*resolved.secret_values())

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[dict[str, State]]:
        configure_logging(resolved.ivy_log_file, level=resolved.ivy_log_level,
                          max_bytes=resolved.ivy_log_max_bytes, backups=resolved.ivy_log_backups)
        if (folder := multiproc_dir()) is not None:
            clean_dead_process_files(folder)
        metrics = Metrics(eval_reports_dir=resolved.ivy_eval_reports_dir)
        http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1000, ttl_dns_cache=300, enable_cleanup_closed=True),
            json_serialize=lambda obj: orjson.dumps(obj).decode(),
        )
        redis = build_redis(resolved)
        chain, breakers = build_chain(resolved, http, metrics, redis)
        state = State(
            settings=resolved, metrics=metrics, latency=LatencyView(metrics, resolved.ivy_latency_window_seconds),
            limiter=build_limiter(resolved, redis), chain=chain, breakers=breakers,
            kb=KnowledgeBase.from_folder(resolved.ivy_knowledge_dir), http=http,
            flags=RuntimeFlags(resolved, redis),
            auth=Authenticator(resolved, http) if resolved.ivy_auth_mode == "jwt" else None,
        )
        log.info("router_started", version=__version__, provider_chain=" -> ".join(chain.names),
                 model_provider=chain.names[0], limiter_backend=state.limiter.backend,
                 modal_heuristics=resolved.ivy_modal_heuristics, organic=resolved.ivy_organic_enabled,
                 rate_limit_per_min=resolved.ai_rate_limit_per_min, knowledge_sections=len(state.kb.sections),
                 gc_gen0_threshold=resolved.ivy_gc_gen0_threshold, auth_mode=resolved.ivy_auth_mode)
        await _warm_limiter(state)
        if state.auth is not None:
            await state.auth.start()
        tasks = [asyncio.create_task(_latency_summaries(state))]
        if (watch := _watch_server(state)) is not None:
            tasks.append(asyncio.create_task(watch.run()))
        if redis is not None:
            with contextlib.suppress(Exception):  # Redis down at start: env flags until it answers
                await state.flags.refresh()
            tasks.append(asyncio.create_task(state.flags.poll()))
        restore_gc = tune_gc(resolved.ivy_gc_gen0_threshold)
        try:
            yield {"ivy": state}
        finally:
            restore_gc()
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await chain.aclose()
            if state.auth is not None:
                await state.auth.aclose()
            await http.close()
            await state.limiter.aclose()
            if redis is not None:
                await redis.aclose()
            metrics.close()
            log.info("router_stopped", uptime_seconds=round(time.time() - state.started_at, 1))
            shutdown_logging()

    app = IvyAPI(
        router_endpoints=RequestContextMiddleware(RouterEndpoints(), max_body_bytes=resolved.ivy_max_body_bytes),
        title="Ivy v2 AI router", version=__version__, lifespan=lifespan,
        description="Rate limiting, intent classification and provider failover for the CRM assistant.",
    )
    install_error_handlers(app)
    app.include_router(router)
    app.include_router(admin_router)
    app.add_middleware(RequestContextMiddleware, max_body_bytes=resolved.ivy_max_body_bytes)
    return app


app = create_app()
