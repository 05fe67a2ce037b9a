"""The app's typed State: every client and shared object, created in the lifespan and closed there."""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field

import aiohttp

from app.api.auth import Authenticator
from app.api.serving import Drain
from app.config import Settings
from app.config.runtime_flags import RuntimeFlags
from app.observability.latency import LatencyView
from app.observability.metrics import Metrics
from app.providers.chain import ProviderChain
from app.resilience.breaker import CircuitBreaker
from app.resilience.ratelimit import RateLimiter
from app.retrieval.retriever import KnowledgeBase


@dataclass(slots=True)
class LimiterHealth:
    """What the fail-open path knows about the limiter backend, for /health and the warning throttle."""

    last_error: str | None = None
    last_error_at: float | None = None
    last_ok_at: float | None = None
    last_warned_at: float = float("-inf")
    failures: int = 0

    @property
    def degraded(self) -> bool:
        if self.last_error_at is None:
            return False
        return self.last_ok_at is None or self.last_error_at > self.last_ok_at


class WarnOnce:
    """Remembers which keys were warned about in the current window (bounded, oldest first out)."""

    def __init__(self, window_seconds: float, max_keys: int = 10_000) -> None:
        self.window = window_seconds
        self.max_keys = max_keys
        self._seen: OrderedDict[str, float] = OrderedDict()

    def should_warn(self, key: str, now: float) -> bool:
        last = self._seen.get(key)
        if last is not None and now - last < self.window:
            return False
        self._seen[key] = now
        self._seen.move_to_end(key)
        while len(self._seen) > self.max_keys:
            self._seen.popitem(last=False)
        return True


@dataclass(slots=True)
class State:
    settings: Settings
    metrics: Metrics
    latency: LatencyView
    limiter: RateLimiter
    chain: ProviderChain
    breakers: dict[str, CircuitBreaker]
    kb: KnowledgeBase
    http: aiohttp.ClientSession
    flags: RuntimeFlags
    started_at: float = field(default_factory=time.time)
    limiter_health: LimiterHealth = field(default_factory=LimiterHealth)
    missing_user_warned: WarnOnce = field(default_factory=lambda: WarnOnce(60.0))
    auth: Authenticator | None = None  # None: IVY_AUTH_MODE=off (nothing to do per request)
    drain: Drain = field(default_factory=Drain)
