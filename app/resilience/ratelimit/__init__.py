"""Token-bucket rate limiting per user and per org, in Redis (fleet-wide) or in-process.

keys.py normalises the ids from request headers; bucket.py is the bucket arithmetic and its types;
memory.py and redis_batch.py are the two backends (bucket.lua is the Redis side's script);
headers.py formats the RateLimit and Retry-After headers. The names below are the public ones.
"""

from app.resilience.ratelimit.backend import BackendName, RateLimiter
from app.resilience.ratelimit.bucket import Bucket, Decision, Limits
from app.resilience.ratelimit.headers import rate_limit_headers, retry_after_header
from app.resilience.ratelimit.keys import MAX_ID_LENGTH, normalise_id
from app.resilience.ratelimit.memory import MemoryRateLimiter
from app.resilience.ratelimit.redis_batch import MAX_BATCH, MAX_IN_FLIGHT, RedisRateLimiter

__all__ = [
    "MAX_BATCH",
    "MAX_ID_LENGTH",
    "MAX_IN_FLIGHT",
    "BackendName",
    "Bucket",
    "Decision",
    "Limits",
    "MemoryRateLimiter",
    "RateLimiter",
    "RedisRateLimiter",
    "normalise_id",
    "rate_limit_headers",
    "retry_after_header",
]
