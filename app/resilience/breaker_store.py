"""Circuit-breaker state shared by every worker and host through Redis.

Only "open" is shared: one worker that opens a provider's breaker writes a key that lives
exactly as long as the open period (PX), so every other worker skips the provider until it
expires; no clocks are compared, only Redis TTLs. Half-open trials stay per worker. Reads are
cached for a second so the shared state costs no round trip per provider call, and the read that
refreshes the cache is shared: requests that find it stale while one is on the wire wait for that
one. (Before, each of them sent its own; at 50 connections that held ~44 of the pool's connections
open for good, one per request caught at the expiry.) When Redis is unreachable the breakers simply
run on their in-process state.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import redis.asyncio as aioredis

from app.observability.logging import get_logger

log = get_logger()


class SharedBreakerStore:
    def __init__(self, client: aioredis.Redis, *, prefix: str = "ivy:cb", cache_seconds: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.prefix = prefix
        self.cache_seconds = cache_seconds
        self.clock = clock
        self._cache: dict[str, tuple[float, tuple[float, str] | None]] = {}
        self._reads: dict[str, asyncio.Task[tuple[float, str] | None]] = {}  # the refresh on the wire

    def _key(self, provider: str) -> str:
        return f"{self.prefix}:{provider}"

    async def publish_open(self, provider: str, seconds: float, reason: str) -> None:
        if seconds <= 0:
            return
        try:
            await self.client.set(self._key(provider), reason[:200], px=max(1, int(seconds * 1000)))
        except Exception as exc:
            log.warning("circuit_breaker_share_failed", provider=provider, error=type(exc).__name__)
        self._cache.pop(provider, None)

    async def publish_closed(self, provider: str) -> None:
        try:
            await self.client.delete(self._key(provider))
        except Exception as exc:
            log.warning("circuit_breaker_share_failed", provider=provider, error=type(exc).__name__)
        self._cache.pop(provider, None)

    async def remaining_open(self, provider: str) -> tuple[float, str] | None:
        """(seconds left, reason) if another worker holds this provider open, else None."""
        cached = self._cache.get(provider)
        if cached is not None and self.clock() - cached[0] < self.cache_seconds:
            return cached[1]
        read = self._reads.get(provider)
        if read is None or read.get_loop() is not asyncio.get_running_loop():
            # A task, not this caller's own coroutine: a caller cancelled mid-read must not take
            # the answer away from the others waiting on it.
            read = asyncio.ensure_future(self._read(provider))
            self._reads[provider] = read
            read.add_done_callback(lambda done: self._reads.pop(provider, None) if self._reads.get(
                provider) is done else None)
        return await asyncio.shield(read)

    async def _read(self, provider: str) -> tuple[float, str] | None:
        now = self.clock()
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.get(self._key(provider))
                pipe.pttl(self._key(provider))
                reason, ttl_ms = await pipe.execute()
        except Exception:
            cached = self._cache.get(provider)
            return cached[1] if cached is not None else None  # Redis away: in-process state rules
        value = None
        if reason is not None and ttl_ms and ttl_ms > 0:
            text = reason.decode() if isinstance(reason, bytes) else str(reason)
            value = (ttl_ms / 1000, text)
        self._cache[provider] = (now, value)
        return value
