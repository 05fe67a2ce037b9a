"""Builds the resilience layer's clients from Settings: the one Redis client (the limiter, the shared
breaker state and the runtime flags use it) and the rate limiter, warmed before traffic."""

from __future__ import annotations

import redis.asyncio as aioredis

from app.config import Settings
from app.observability.logging import get_logger
from app.observability.metrics import Metrics
from app.observability.redaction import redact
from app.resilience.load import Admission, LoadConfig, LoopLag
from app.resilience.ratelimit import Limits, MemoryRateLimiter, RateLimiter, RedisRateLimiter

log = get_logger()


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


def build_admission(settings: Settings, metrics: Metrics) -> Admission:
    """The loop-lag timer and the admission on the loop's CPU share, its gauges kept by the timer's tick."""
    config = LoadConfig(lag_bound=settings.ivy_loop_lag_bound_ms / 1000,
                        max_in_flight=settings.ivy_admission_max_in_flight, enabled=settings.ivy_admission_enabled,
                        target_cpu=settings.ivy_admission_target_cpu,
                        burst_seconds=settings.ivy_admission_burst_seconds)
    admission = Admission(config, LoopLag(config))

    def gauges(lag: float, _: bool) -> None:
        metrics.loop_lag.set(admission.lag.lag)
        metrics.loop_lag_seconds.observe(lag)
        metrics.admission_rate.set(admission.rate if admission.limiting else 0.0)
        metrics.loop_cpu_busy.set(admission.busy)

    admission.lag.listeners.append(gauges)
    return admission


def build_limiter(settings: Settings, redis: aioredis.Redis | None) -> RateLimiter:
    limits = Limits(
        user_per_min=settings.ai_rate_limit_per_min,
        user_capacity=settings.rate_limit_burst,
        org_per_min=settings.ai_org_rate_limit_per_min,
        org_capacity=settings.ai_org_rate_limit_per_min,
    )
    return MemoryRateLimiter(limits) if redis is None else RedisRateLimiter(redis, limits)


async def warm_limiter(limiter: RateLimiter, metrics: Metrics, *, fail_open: bool) -> None:
    """Load the Lua script and open a connection before traffic; a Redis that is down is not fatal."""
    up = metrics.limiter_up.labels(limiter.backend)
    try:
        await limiter.warm()
        up.set(1)
    except Exception as exc:
        up.set(0)
        log.warning("rate_limiter_unavailable", backend=limiter.backend, at="startup", fail_open=fail_open,
                    error=redact(f"{type(exc).__name__}: {exc}")[:200])
