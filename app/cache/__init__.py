"""The answer cache: exact, tenant-scoped, never a degraded answer (README "Answer cache").

keys.py (the hash of everything an answer depends on), backends.py (in-process LRU, Redis),
answers.py (lookup / store, failing open), warmup.py (the most asked questions answered again).
"""

from __future__ import annotations

import redis.asyncio as aioredis

from app.cache.answers import AnswerCache, CachedAnswer
from app.cache.backends import CacheBackend, MemoryBackend, RedisBackend
from app.cache.keys import CacheKey, answer_key, org_namespace
from app.cache.warmup import Recipe, Warmer
from app.config import Settings
from app.observability.metrics import Metrics

__all__ = ["AnswerCache", "CacheBackend", "CacheKey", "CachedAnswer", "MemoryBackend", "Recipe",
           "RedisBackend", "Warmer", "answer_key", "build_cache", "org_namespace"]


def build_cache(settings: Settings, redis: aioredis.Redis | None, metrics: Metrics) -> tuple[AnswerCache, Warmer]:
    """Redis when REDIS_URL is set (shared by every worker), a bounded LRU otherwise; and its warmer."""
    backend: CacheBackend = (MemoryBackend(settings.ivy_cache_max_entries) if redis is None
                             else RedisBackend(redis))
    cache = AnswerCache(backend, metrics, ttl=settings.ivy_cache_ttl_seconds, enabled=settings.ivy_cache_enabled)
    return cache, Warmer(cache, redis, per_minute=settings.ivy_cache_warmup_per_min)
