"""Token-bucket rate limiting per user and per org, in Redis (fleet-wide) or in-process.

Both backends implement the same bucket arithmetic: a bucket holds up to ``capacity``
tokens and refills continuously at ``rate`` tokens per second; a request needs one token
from the user bucket and one from the org bucket, and a refused request takes none.
The Redis backend runs it as one Lua script per request (one round trip, atomic, clock
from the Redis server so app hosts' clocks do not matter).
"""

from __future__ import annotations

import hashlib
import math
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

Bucket = Literal["user", "org", "burst"]
BackendName = Literal["redis", "memory"]

MAX_ID_LENGTH = 64
_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._@-+")


def normalise_id(raw: str | None, *, kind: str) -> str | None:
    """Turn a header value into a bounded, collision-free key part.

    Plain ids (short, safe characters) stay readable as ``u:<id>``; anything else — long,
    exotic characters, braces that would hijack a Redis Cluster hash tag — becomes
    ``h:<sha256 prefix>``. The prefixes keep the two spaces apart, so no raw id can
    impersonate a hashed one.
    """
    if raw is None:
        return None
    value = unicodedata.normalize("NFKC", raw).strip()
    if not value:
        return None
    if len(value) <= MAX_ID_LENGTH and all(c in _SAFE for c in value):
        return f"{kind}:{value}"
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return f"{kind}h:{digest}"


@dataclass(frozen=True, slots=True)
class Limits:
    user_per_min: int
    user_capacity: int
    org_per_min: int
    org_capacity: int
    # A user bucket emptied within this long of being full is a burst (a script, a retry loop, a
    # frontend bug) rather than sustained use over the per-minute rate: on-call treats them differently.
    burst_window: float = 10.0

    @property
    def user_rate(self) -> float:
        return self.user_per_min / 60.0

    @property
    def org_rate(self) -> float:
        return self.org_per_min / 60.0


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    limit: int  # the user bucket's capacity
    remaining: int  # whole tokens left in the user bucket after this request
    reset_after: float  # seconds until the user bucket is full again
    retry_after: float = 0.0  # seconds until the refusing bucket holds a token
    bucket: Bucket | None = None  # which bucket refused


class RateLimiter(Protocol):
    backend: BackendName

    async def check(self, user_key: str, org_key: str | None) -> Decision: ...

    async def ping(self) -> float:
        """Round-trip time to the backend in ms; raises if it is unreachable."""
        ...

    async def warm(self) -> None:
        """Prepare for traffic (connect, load scripts); raises if the backend is unreachable."""
        ...


def _refill(tokens: float, elapsed: float, rate: float, capacity: float) -> float:
    return min(capacity, tokens + max(0.0, elapsed) * rate)


def decide(
    user: float, user_full_at: float, org: float | None, now: float, limits: Limits
) -> tuple[Decision, float, float | None]:
    """Shared arithmetic: given refilled token counts, return the decision and the new counts."""
    refused: list[tuple[Bucket, float]] = []
    if user < 1:
        label: Bucket = "burst" if now - user_full_at < limits.burst_window else "user"
        refused.append((label, (1 - user) / limits.user_rate))
    if org is not None and org < 1:
        refused.append(("org", (1 - org) / limits.org_rate))
    if refused:
        bucket, wait = max(refused, key=lambda r: r[1])
        decision = Decision(
            allowed=False, limit=limits.user_capacity, remaining=int(user),
            reset_after=(limits.user_capacity - user) / limits.user_rate, retry_after=wait, bucket=bucket,
        )
        return decision, user, org
    user -= 1
    org = None if org is None else org - 1
    decision = Decision(
        allowed=True, limit=limits.user_capacity, remaining=int(user),
        reset_after=(limits.user_capacity - user) / limits.user_rate,
    )
    return decision, user, org


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
        tokens = _refill(tokens, now - at, rate, capacity)
        return tokens, now if tokens >= capacity else full_at

    async def check(self, user_key: str, org_key: str | None) -> Decision:
        now = self.clock()
        lim = self.limits
        user, user_full_at = self._load(user_key, now, lim.user_rate, lim.user_capacity)
        org, org_full_at = (None, now) if org_key is None else self._load(org_key, now, lim.org_rate, lim.org_capacity)
        decision, user, org = decide(user, user_full_at, org, now, lim)
        if decision.allowed:
            if len(self._buckets) >= self.MAX_KEYS:
                self._evict_full(now)
            self._buckets[user_key] = (user, now, user_full_at)
            if org_key is not None and org is not None:
                self._buckets[org_key] = (org, now, org_full_at)
        return decision

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


# KEYS[1] user bucket, KEYS[2] org bucket (optional).
# ARGV: user_rate, user_capacity, org_rate, org_capacity (tokens per second / tokens), burst window (s).
# Each bucket is a hash: tk tokens, ts last update, fa last time it was full (server clock).
# Returns {allowed, refusing bucket (0 none, 1 user, 2 org, 3 burst), user tokens*1000, org tokens*1000}.
TOKEN_BUCKET_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local function load(key, rate, cap)
  local v = redis.call('HMGET', key, 'tk', 'ts', 'fa')
  local tokens, ts, fa = tonumber(v[1]), tonumber(v[2]), tonumber(v[3])
  if tokens == nil or ts == nil then return cap, now end
  tokens = math.min(cap, tokens + math.max(0, now - ts) * rate)
  if tokens >= cap or fa == nil then fa = now end
  return tokens, fa
end
local function store(key, tokens, fa, rate, cap)
  redis.call('HSET', key, 'tk', tostring(tokens), 'ts', tostring(now), 'fa', tostring(fa))
  redis.call('PEXPIRE', key, math.ceil((cap - tokens) / rate * 1000) + 1000)
end
local ur, uc = tonumber(ARGV[1]), tonumber(ARGV[2])
local user, ufa = load(KEYS[1], ur, uc)
local org, ofa, orr, oc = -1, now, 0, 0
if #KEYS > 1 then
  orr, oc = tonumber(ARGV[3]), tonumber(ARGV[4])
  org, ofa = load(KEYS[2], orr, oc)
end
local refused = 0
if user < 1 then
  if now - ufa < tonumber(ARGV[5]) then refused = 3 else refused = 1 end
end
if #KEYS > 1 and org < 1 then
  if refused == 0 or (1 - org) / orr > (1 - user) / ur then refused = 2 end
end
if refused == 0 then
  user = user - 1
  store(KEYS[1], user, ufa, ur, uc)
  if #KEYS > 1 then
    org = org - 1
    store(KEYS[2], org, ofa, orr, oc)
  end
end
return {refused == 0 and 1 or 0, refused, math.floor(user * 1000), math.floor(org * 1000)}
"""


class RedisRateLimiter:
    """Fleet-wide buckets in one Redis; every app host and worker shares them."""

    backend: BackendName = "redis"

    def __init__(self, client: aioredis.Redis, limits: Limits, *, prefix: str = "ivy:rl") -> None:
        self.client = client
        self.limits = limits
        self.prefix = prefix
        self._sha: str | None = None

    def keys_for(self, user_key: str, org_key: str | None) -> list[str]:
        # One hash tag per request so both keys land in one Redis Cluster slot.
        tag = "{" + (org_key or user_key) + "}"
        keys = [f"{self.prefix}:{tag}:{user_key}"]
        if org_key is not None:
            keys.append(f"{self.prefix}:{tag}:{org_key}")
        return keys

    async def warm(self) -> None:
        await self._load()

    async def _load(self) -> str:
        self._sha = str(await self.client.script_load(TOKEN_BUCKET_LUA))
        return self._sha

    async def _evalsha(self, keys: list[str], args: list[float]) -> list[int]:
        sha = self._sha or await self._load()
        try:
            result = await self.client.evalsha(sha, len(keys), *keys, *args)
        except NoScriptError:
            # Redis restarted or SCRIPT FLUSH: load again, once.
            result = await self.client.evalsha(await self._load(), len(keys), *keys, *args)
        return [int(x) for x in result]

    async def check(self, user_key: str, org_key: str | None) -> Decision:
        lim = self.limits
        keys = self.keys_for(user_key, org_key)
        allowed, refused, user_milli, org_milli = await self._evalsha(
            keys, [lim.user_rate, lim.user_capacity, lim.org_rate, lim.org_capacity, lim.burst_window]
        )
        user = user_milli / 1000
        reset_after = (lim.user_capacity - user) / lim.user_rate
        if allowed:
            return Decision(True, lim.user_capacity, int(user), reset_after)
        if refused == 2:
            bucket: Bucket = "org"
            wait = (1 - org_milli / 1000) / lim.org_rate
        else:
            bucket, wait = ("burst" if refused == 3 else "user"), (1 - user) / lim.user_rate
        return Decision(False, lim.user_capacity, int(user), reset_after, wait, bucket)

    async def ping(self) -> float:
        started = time.perf_counter()
        await self.client.ping()
        return (time.perf_counter() - started) * 1000


def retry_after_header(seconds: float) -> str:
    """Whole seconds, rounded up, never 0 (a client told 0 would hammer us)."""
    return str(max(1, math.ceil(seconds - 1e-9)))
