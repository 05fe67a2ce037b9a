"""Builds the provider chain from Settings: an adapter and a breaker per provider with a key
(ACTIVE_MODEL first), the shared breaker state when Redis is there, and the hedging policy."""

from __future__ import annotations

import aiohttp
import redis.asyncio as aioredis

from app.budget import Budgets
from app.config import Settings
from app.observability.logging import get_logger
from app.observability.metrics import BREAKER_STATE_VALUE, Metrics
from app.providers.base import Provider
from app.providers.chain import ProviderChain
from app.providers.gemini import GeminiProvider
from app.providers.hedging import HedgeConfig
from app.providers.links import Link
from app.providers.openai import OpenAIProvider
from app.resilience.breaker import BreakerConfig, CircuitBreaker
from app.resilience.breaker import State as BreakerState
from app.resilience.breaker_store import SharedBreakerStore
from app.resilience.load import NEVER_LATE, LagSource

log = get_logger()


def build_chain(settings: Settings, http: aiohttp.ClientSession, metrics: Metrics, redis: aioredis.Redis | None,
                budgets: Budgets | None = None, lag: LagSource = NEVER_LATE
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
                                      model=settings.model_of(name))
        else:
            provider = GeminiProvider(http, api_key=key.get_secret_value(), base_url=str(settings.gemini_base_url),
                                      model=settings.model_of(name), thinking_budget=settings.gemini_thinking_budget)
        breakers[name] = CircuitBreaker(name, config, on_transition=on_transition)
        metrics.breaker_state.labels(name).set(0)
        links.append(Link(provider, breakers[name]))
    shared = SharedBreakerStore(redis) if redis is not None else None
    hedge = HedgeConfig(
        enabled=settings.ivy_hedge_enabled, percentile=settings.ivy_hedge_percentile,
        min_delay=settings.ivy_hedge_min_delay_ms / 1000, max_delay=settings.ivy_hedge_max_delay_ms / 1000,
        initial_delay=settings.ivy_hedge_initial_delay_ms / 1000,
        hung_floor=min(settings.ivy_hedge_max_delay_ms, 3 * settings.ivy_hedge_initial_delay_ms) / 1000,
        budget_ratio=settings.ivy_hedge_budget_ratio,
        budget_floor=settings.ivy_hedge_budget_floor,
        budget_window_seconds=settings.ivy_hedge_budget_window_seconds,
    )
    chain = ProviderChain(links, metrics, shared=shared, deadline=settings.ivy_request_deadline_seconds,
                          deadline_max=settings.ivy_request_deadline_max_seconds, hedge=hedge, budgets=budgets,
                          lag=lag)
    return chain, breakers
