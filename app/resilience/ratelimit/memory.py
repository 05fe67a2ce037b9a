"""The in-process limiter: one dict of buckets, run with the arithmetic in bucket.py."""

from __future__ import annotations

import time
from collections.abc import Callable

from app.resilience.ratelimit.backend import BackendName
from app.resilience.ratelimit.bucket import Decision, Limits, decision, refill, refusing_bucket


class MemoryRateLimiter:
    """In-process buckets: the embedded default when REDIS_URL is unset (one process only)."""

    backend: BackendName = "memory"
    MAX_KEYS = 100_000

    def __init__(self, limits: Limits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.clock = clock
        self._buckets: dict[str, tuple[float, float, float]] = {}  # tokens, updated at, last full at

    def _load(self, key: str, now: float, rate: float, capacity: float) -> tuple[float, float]:
        tokens, at, full_at = self._buckets.get(key, (capacity, now, now))
        return refill(tokens, at, full_at, now, rate, capacity)

    async def check(self, user_key: str, org_key: str | None) -> Decision:
        now = self.clock()
        lim = self.limits
        user, user_full_at = self._load(user_key, now, lim.user_rate, lim.user_capacity)
        org, org_full_at = (None, now) if org_key is None else self._load(org_key, now, lim.org_rate, lim.org_capacity)
        refused = refusing_bucket(user, user_full_at, org, now, lim)
        if refused is None:
            if len(self._buckets) >= self.MAX_KEYS:
                self._evict_full(now)
            user -= 1
            self._buckets[user_key] = (user, now, user_full_at)
            if org_key is not None and org is not None:
                org -= 1
                self._buckets[org_key] = (org, now, org_full_at)
        return decision(user, org, refused, lim)

    def _evict_full(self, now: float) -> None:
        # A bucket that has refilled completely carries no information: drop it (as Redis TTLs do).
        horizon = max(self.limits.user_capacity / self.limits.user_rate,
                      self.limits.org_capacity / self.limits.org_rate)
        stale = [k for k, (_, at, _) in self._buckets.items() if now - at >= horizon]
        for key in stale:
            del self._buckets[key]
        if len(self._buckets) >= self.MAX_KEYS:  # all hot: forget the oldest rather than grow
            oldest = sorted(self._buckets, key=lambda k: self._buckets[k][1])[: self.MAX_KEYS // 10]
            for key in oldest:
                del self._buckets[key]

    async def ping(self) -> float:
        return 0.0

    async def warm(self) -> None:
        return None

    async def aclose(self) -> None:
        return None
