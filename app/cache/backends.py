"""Where cached answers live: a bounded in-process LRU, or Redis (shared by every worker and host).

Both store opaque bytes under a `CacheKey` with a TTL. Redis layout (no identifier in clear):

    ivy:cache:a:<org hash>:<sha256>   the entry (bytes, EX ttl)
    ivy:cache:o:<org hash>            set of that org's entry digests (purge by org)

A lookup is one GET. A store is one pipelined SET + SADD + EXPIRE, after the provider answered.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Protocol

import redis.asyncio as aioredis

from app.cache.keys import CacheKey, org_namespace

PREFIX = "ivy:cache:"


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class CacheBackend(Protocol):
    name: str
    evictions: int

    async def get(self, key: CacheKey) -> bytes | None: ...
    async def set(self, key: CacheKey, value: bytes, ttl: int) -> None: ...
    async def ttl(self, key: CacheKey) -> float | None: ...
    async def purge(self, org: str | None) -> int: ...
    async def entries(self) -> int: ...


class MemoryBackend:
    """An LRU of at most ``max_entries``; an expired entry is dropped when met."""

    name = "memory"

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self.evictions = 0
        self._data: OrderedDict[CacheKey, tuple[float, bytes]] = OrderedDict()

    async def get(self, key: CacheKey) -> bytes | None:
        item = self._data.get(key)
        if item is None:
            return None
        if item[0] <= time.monotonic():
            del self._data[key]
            return None
        self._data.move_to_end(key)
        return item[1]

    async def set(self, key: CacheKey, value: bytes, ttl: int) -> None:
        self._data[key] = (time.monotonic() + ttl, value)
        self._data.move_to_end(key)
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)
            self.evictions += 1

    async def ttl(self, key: CacheKey) -> float | None:
        item = self._data.get(key)
        left = item[0] - time.monotonic() if item else 0.0
        return left if left > 0 else None

    async def purge(self, org: str | None) -> int:
        if org is None:
            count = len(self._data)
            self._data.clear()
            return count
        namespace = org_namespace(org)
        gone = [k for k in self._data if k.org == namespace]
        for k in gone:
            del self._data[k]
        return len(gone)

    async def entries(self) -> int:
        return len(self._data)


class RedisBackend:
    """Entries in Redis with their TTL; Redis's own eviction policy bounds memory (evictions: 0 here)."""

    name = "redis"

    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self.evictions = 0

    @staticmethod
    def entry(key: CacheKey) -> str:
        return f"{PREFIX}a:{key.org}:{key.digest}"

    async def get(self, key: CacheKey) -> bytes | None:
        value = await self.redis.get(self.entry(key))
        return value.encode() if isinstance(value, str) else value

    async def set(self, key: CacheKey, value: bytes, ttl: int) -> None:
        members = f"{PREFIX}o:{key.org}"
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(self.entry(key), value, ex=ttl)
            pipe.sadd(members, key.digest)
            pipe.expire(members, ttl)
            await pipe.execute()

    async def ttl(self, key: CacheKey) -> float | None:
        left = int(await self.redis.ttl(self.entry(key)))
        return float(left) if left > 0 else None

    async def purge(self, org: str | None) -> int:
        if org is not None:
            namespace = org_namespace(org)
            return await self._purge_namespace(namespace)
        count = 0
        async for members in self.redis.scan_iter(match=f"{PREFIX}o:*", count=500):
            count += await self._purge_namespace(text(members).rsplit(":", 1)[-1])
        async for stray in self.redis.scan_iter(match=f"{PREFIX}a:*", count=500):  # entries whose set expired
            count += int(await self.redis.delete(stray))
        return count

    async def _purge_namespace(self, namespace: str) -> int:
        members = f"{PREFIX}o:{namespace}"
        digests = [text(d) for d in await self.redis.smembers(members)]
        count = 0
        for start in range(0, len(digests), 500):
            batch = [f"{PREFIX}a:{namespace}:{d}" for d in digests[start:start + 500]]
            count += int(await self.redis.delete(*batch))
        await self.redis.delete(members)
        return count

    async def entries(self) -> int:
        """Entries now (a bounded SCAN: health only, never per request)."""
        count = 0
        async for _ in self.redis.scan_iter(match=f"{PREFIX}a:*", count=1000):
            count += 1
            if count >= 100_000:
                break
        return count
