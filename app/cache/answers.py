"""The answer cache the pipeline calls: `lookup` before generating, `store` after.

It fails open: a backend error is "no cache" for that request (the answer is generated as if the
cache were off), one WARNING per 10 s with the count, as the rate limiter does.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import orjson

from app.cache.backends import CacheBackend
from app.cache.keys import CacheKey
from app.observability.logging import get_logger
from app.observability.metrics import Metrics
from app.observability.redaction import redact
from app.observability.throttle import STORM_WARNING_SECONDS, Throttle
from app.vocabulary import CacheStatus, ProviderName

log = get_logger()

WINDOW_SECONDS = 300.0
_SLOT = 10.0


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    provider: ProviderName
    model: str
    answer: str
    input_tokens: int = 0
    output_tokens: int = 0
    stored_at: float = 0.0

    def dumps(self) -> bytes:
        return orjson.dumps([self.provider, self.model, self.answer, self.input_tokens, self.output_tokens,
                             self.stored_at])

    @classmethod
    def loads(cls, raw: bytes) -> CachedAnswer:
        provider, model, answer, tokens_in, tokens_out, stored_at = orjson.loads(raw)
        return cls(provider, model, answer, tokens_in, tokens_out, stored_at)


@dataclass(slots=True)
class HitWindow:
    """Hits and lookups over the last 5 minutes, in 10 s slots (this worker)."""

    slots: deque[list[float]] = field(default_factory=deque)  # [slot start, hits, lookups]

    def add(self, hit: bool, now: float) -> None:
        start = now - now % _SLOT
        if not self.slots or self.slots[-1][0] != start:
            self.slots.append([start, 0, 0])
        slot = self.slots[-1]
        slot[1] += hit
        slot[2] += 1
        while self.slots and self.slots[0][0] <= now - WINDOW_SECONDS:
            self.slots.popleft()

    def ratio(self, now: float) -> tuple[float | None, int]:
        live = [s for s in self.slots if s[0] > now - WINDOW_SECONDS]
        lookups = int(sum(s[2] for s in live))
        return (round(sum(s[1] for s in live) / lookups, 3) if lookups else None), lookups


@dataclass(slots=True)
class CacheHealth:
    failures: int = 0
    last_error: str | None = None
    last_error_at: float | None = None
    warnings: Throttle = field(default_factory=lambda: Throttle(STORM_WARNING_SECONDS))


class AnswerCache:
    def __init__(self, backend: CacheBackend, metrics: Metrics, *, ttl: int, enabled: bool = True) -> None:
        self.backend = backend
        self.metrics = metrics
        self.ttl = ttl
        self.enabled = enabled
        self.window = HitWindow()
        self.health = CacheHealth()
        self._evictions_seen = 0

    async def lookup(self, key: CacheKey) -> tuple[CacheStatus, CachedAnswer | None]:
        """("hit", entry), ("miss", None), or ("bypass", None) when the backend failed (no cache)."""
        try:
            raw = await self.backend.get(key)
        except Exception as exc:
            self._failed(exc, "lookup")
            return "bypass", None
        entry = None
        if raw is not None:
            try:
                entry = CachedAnswer.loads(raw)
            except (ValueError, TypeError):  # an entry of another version's shape: a miss
                entry = None
        self.window.add(entry is not None, time.monotonic())
        return ("hit", entry) if entry is not None else ("miss", None)

    async def store(self, key: CacheKey, entry: CachedAnswer) -> bool:
        try:
            await self.backend.set(key, entry.dumps(), self.ttl)
        except Exception as exc:
            self._failed(exc, "store")
            return False
        if (evicted := self.backend.evictions - self._evictions_seen) > 0:
            self._evictions_seen = self.backend.evictions
            self.metrics.cache_evictions.labels(self.backend.name).inc(evicted)
        return True

    def count(self, status: CacheStatus, entry: CachedAnswer | None = None) -> None:
        self.metrics.cache_request[status].inc()
        if entry is not None:
            self.metrics.cache_saved_input.inc(entry.input_tokens)
            self.metrics.cache_saved_output.inc(entry.output_tokens)

    def _failed(self, exc: Exception, op: str) -> None:
        now = time.monotonic()
        h = self.health
        h.failures += 1
        h.last_error, h.last_error_at = redact(f"{type(exc).__name__}: {exc}")[:200], now
        self.metrics.cache_errors.labels(self.backend.name, op).inc()
        if h.warnings.ready(now):  # one line per 10 s in a storm, with the count
            log.warning("answer_cache_unavailable", backend=self.backend.name, op=op, error=h.last_error,
                        failures_so_far=h.failures)

    async def purge(self, org: str | None) -> int:
        count = await self.backend.purge(org)
        log.info("answer_cache_purged", org_id=org or "*", entries=count)
        return count

    async def snapshot(self) -> dict[str, object]:
        ratio, lookups = self.window.ratio(time.monotonic())
        try:
            entries: int | None = await self.backend.entries()
        except Exception:
            entries = None
        return {"enabled": self.enabled, "backend": self.backend.name, "entries": entries,
                "ttl_seconds": self.ttl, "hit_ratio_5m": ratio, "lookups_5m": lookups,
                "evictions": self.backend.evictions, "backend_errors": self.health.failures,
                "last_error": self.health.last_error}
