"""Warm-up, as the runbook means it: the questions each org asks most are answered again before
their entry expires (and at start), within a budget of provider calls per minute, in a background
task, never on the request path.

Counting costs the request nothing but a dict update: asks are gathered in-process and, with Redis,
flushed every few seconds (counts per org and day in sorted sets, so every worker and a restarted
one sees the fleet's last day). What is needed to ask again (the query, its context and flags: the
"recipe") is kept per entry digest next to the counts, for a day:

    ivy:cache:hot:orgs             set of org hashes with counts
    ivy:cache:hot:<org hash>:<day> sorted set: entry digest -> asks that day (2 days)
    ivy:cache:r:<org hash>         hash: entry digest -> recipe (1 day)
    ivy:cache:w:<org hash>:<sha>   a worker's claim on one refresh (60 s)
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import redis.asyncio as aioredis

from app.cache.answers import AnswerCache
from app.cache.backends import PREFIX, text
from app.cache.keys import CacheKey
from app.observability.logging import get_logger
from app.observability.redaction import redact

log = get_logger()

Recipe = dict[str, Any]
Refresh = Callable[[Recipe], Awaitable[bool]]
DAY = 86_400
TOP_PER_ORG = 20
MAX_TRACKED = 5_000  # recipes kept in-process between flushes / without Redis


class Warmer:
    def __init__(self, cache: AnswerCache, redis: aioredis.Redis | None, *, per_minute: int,
                 interval: float = 10.0) -> None:
        self.cache = cache
        self.redis = redis
        self.per_minute = per_minute
        self.interval = interval
        self.state = "off" if per_minute == 0 or not cache.enabled else "starting"
        self.refreshed = 0
        self.failed = 0
        self.last_run_at: float | None = None
        self._calls: deque[float] = deque()  # monotonic times of refresh calls in the last minute
        self._pending: Counter[CacheKey] = Counter()  # asks not yet flushed to Redis
        self._counts: dict[int, Counter[CacheKey]] = {}  # day -> asks (in-process mode)
        self._recipes: dict[CacheKey, Recipe] = {}

    # --- the request path: one dict update --------------------------------------------------

    def asked(self, key: CacheKey, recipe: Recipe) -> None:
        if self.state == "off":
            return
        if key not in self._recipes and len(self._recipes) >= MAX_TRACKED:
            self._recipes.pop(next(iter(self._recipes)))
        self._recipes[key] = recipe
        if self.redis is not None:
            self._pending[key] += 1
        else:
            self._counts.setdefault(_day(), Counter())[key] += 1

    # --- the background task ----------------------------------------------------------------

    async def run(self, refresh: Refresh) -> None:
        """Flush counts and refresh what is due, every ``interval`` seconds, from start."""
        if self.state == "off":
            return
        while True:
            try:
                await self.flush()
                self.state = "refreshing"
                await self.refresh_due(refresh)
                self.state = "idle"
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis down: try again next round; the cache itself fails open
                self.state = "idle"
                log.warning("cache_warmup_failed", error=redact(f"{type(exc).__name__}: {exc}")[:200])
            self.last_run_at = time.time()
            await asyncio.sleep(self.interval)

    async def flush(self) -> None:
        if self.redis is None or not self._pending:
            return
        pending, self._pending = self._pending, Counter()
        day = _day()
        async with self.redis.pipeline(transaction=False) as pipe:
            for key, asks in pending.items():
                counts = f"{PREFIX}hot:{key.org}:{day}"
                recipes = f"{PREFIX}r:{key.org}"
                pipe.zincrby(counts, asks, key.digest)
                pipe.expire(counts, 2 * DAY)
                if (recipe := self._recipes.get(key)) is not None:
                    pipe.hset(recipes, key.digest, orjson.dumps(recipe))
                    pipe.expire(recipes, DAY)
                pipe.sadd(f"{PREFIX}hot:orgs", key.org)
            pipe.expire(f"{PREFIX}hot:orgs", 2 * DAY)
            await pipe.execute()

    async def hottest(self) -> list[tuple[CacheKey, Recipe, float]]:
        """The most asked questions of each org over today and yesterday, most asked first."""
        today = _day()
        if self.redis is None:
            for day in [d for d in self._counts if d < today - 1]:
                del self._counts[day]
            merged: Counter[CacheKey] = Counter()
            for counts in self._counts.values():
                merged.update(counts)
            by_org: dict[str, list[tuple[CacheKey, Recipe, float]]] = {}
            for key, asks in merged.most_common():
                if (recipe := self._recipes.get(key)) is not None and len(by_org.setdefault(key.org, [])) < TOP_PER_ORG:
                    by_org[key.org].append((key, recipe, float(asks)))
            return sorted((x for rows in by_org.values() for x in rows), key=lambda x: -x[2])
        out: list[tuple[CacheKey, Recipe, float]] = []
        for raw_org in await self.redis.smembers(f"{PREFIX}hot:orgs"):
            org = text(raw_org)
            scores: Counter[str] = Counter()
            for day in (today, today - 1):
                rows: list[Any] = await self.redis.zrevrange(f"{PREFIX}hot:{org}:{day}", 0, TOP_PER_ORG - 1,
                                                             withscores=True)
                for digest, asks in rows:
                    scores[text(digest)] += int(asks)
            top = scores.most_common(TOP_PER_ORG)
            if not top:
                continue
            raws = await self.redis.hmget(f"{PREFIX}r:{org}", [d for d, _ in top])
            out += [(CacheKey(org, d), orjson.loads(raw), float(asks)) for (d, asks), raw in zip(top, raws, strict=True)
                    if raw is not None]
        return sorted(out, key=lambda x: -x[2])

    async def refresh_due(self, refresh: Refresh) -> int:
        """Answer again the hottest questions with no entry or one expiring within a fifth of the TTL."""
        ahead = max(self.interval * 3, self.cache.ttl / 5)
        done = 0
        for key, recipe, _ in await self.hottest():
            if not self._budget_left():
                break
            left = await self.cache.backend.ttl(key)
            if left is not None and left > ahead:
                continue
            if not await self._claim(key):
                continue
            self._calls.append(time.monotonic())
            try:
                ok = await refresh(recipe)
            except Exception as exc:
                ok = False
                log.warning("cache_warmup_refresh_failed", error=redact(f"{type(exc).__name__}: {exc}")[:200])
            self.refreshed += ok
            self.failed += not ok
            self.cache.metrics.cache_warmup.labels("refreshed" if ok else "not_cached").inc()
            done += 1
        return done

    def _budget_left(self) -> bool:
        now = time.monotonic()
        while self._calls and self._calls[0] <= now - 60.0:
            self._calls.popleft()
        return len(self._calls) < self.per_minute

    async def _claim(self, key: CacheKey) -> bool:
        """One worker refreshes a given entry (Redis); in-process there is only us."""
        if self.redis is None:
            return True
        return bool(await self.redis.set(f"{PREFIX}w:{key.org}:{key.digest}", b"1", nx=True, ex=60))

    def snapshot(self) -> dict[str, object]:
        now = time.monotonic()
        return {"state": self.state, "budget_per_min": self.per_minute,
                "calls_last_min": sum(1 for t in self._calls if t > now - 60.0),
                "tracked_questions": len(self._recipes), "refreshed": self.refreshed, "not_cached": self.failed,
                "last_run_at": self.last_run_at}


def _day() -> int:
    return int(time.time() // DAY)
