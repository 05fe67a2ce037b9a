"""Group commit in the Redis limiter: concurrent checks share one EVALSHA, and each still gets its own,
exact decision. Round trips are counted by the Redis server itself (INFO commandstats), never by us."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Coroutine, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from app.resilience.ratelimit import MAX_IN_FLIGHT, Decision, Limits, RedisRateLimiter
from tests.support import RedisProcess

# The single-request script as it was before batching (one EVALSHA per check), kept here verbatim
# as the reference the batched script must agree with.
REFERENCE_LUA = """
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


async def reference_check(client: aioredis.Redis, lim: Limits, keys: list[str]) -> Decision:
    """One check the way RedisRateLimiter.check did it before batching (script and decoding)."""
    allowed, refused, user_milli, org_milli = (int(x) for x in await client.eval(
        REFERENCE_LUA, len(keys), *keys, lim.user_rate, lim.user_capacity, lim.org_rate, lim.org_capacity,
        lim.burst_window))
    user = user_milli / 1000
    reset_after = (lim.user_capacity - user) / lim.user_rate
    if allowed:
        return Decision(True, lim.user_capacity, int(user), reset_after)
    if refused == 2:
        return Decision(False, lim.user_capacity, int(user), reset_after, (1 - org_milli / 1000) / lim.org_rate, "org")
    bucket = "burst" if refused == 3 else "user"
    return Decision(False, lim.user_capacity, int(user), reset_after, (1 - user) / lim.user_rate, bucket)


async def evalsha_calls(client: aioredis.Redis) -> int:
    """EVALSHA commands the server has executed so far (its own count, across all clients)."""
    stats = await client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def together(checks: Iterable[Coroutine[Any, Any, Decision]], timeout: float = 10) -> list[Decision]:
    """Run checks concurrently; a dispatcher that leaves a waiter stuck fails the test instead of hanging it."""
    return await asyncio.wait_for(asyncio.gather(*checks), timeout)


def approx_decision(d: Decision, abs_s: float = 0.5) -> tuple[object, ...]:
    """Exact on what a caller sees as integers and labels; the seconds may differ by refill in between."""
    return (d.allowed, d.limit, d.remaining, d.bucket,
            pytest.approx(d.reset_after, abs=abs_s), pytest.approx(d.retry_after, abs=abs_s))


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    c = aioredis.Redis.from_url(redis_url)
    yield c
    await c.aclose()


# One token a minute: the few seconds a test takes refill a small fraction of a token.
SLOW = Limits(user_per_min=1, user_capacity=20, org_per_min=100_000, org_capacity=100_000)


@dataclass
class OwnRedis:
    """A redis-server of the test's own (to stall, kill and restart), a client, and a warm limiter."""

    server: RedisProcess
    client: aioredis.Redis
    limiter: RedisRateLimiter


@pytest.fixture
async def own() -> AsyncIterator[OwnRedis]:
    with RedisProcess() as server:
        client = aioredis.Redis.from_url(server.url)
        limiter = RedisRateLimiter(client, SLOW)
        await limiter.warm()
        yield OwnRedis(server, client, limiter)
        await limiter.aclose()
        await client.aclose()


async def test_concurrent_checks_on_one_user_admit_exactly_capacity_in_a_few_round_trips(
        client: aioredis.Redis) -> None:
    limiter = RedisRateLimiter(client, SLOW)
    await limiter.warm()
    before = await evalsha_calls(client)
    decisions = await together(limiter.check("u:hot", "o:x") for _ in range(200))
    round_trips = await evalsha_calls(client) - before
    assert sum(d.allowed for d in decisions) == 20
    assert sorted(d.remaining for d in decisions if d.allowed) == list(range(20))  # each token handed out once
    assert {d.bucket for d in decisions if not d.allowed} == {"burst"}
    assert 1 <= round_trips <= 10, f"{round_trips} EVALSHA for 200 concurrent checks"


async def test_sequential_checks_each_go_out_at_once_unbatched(client: aioredis.Redis) -> None:
    # At one request at a time there is nothing to wait for: one check, one EVALSHA, no hold-back.
    limiter = RedisRateLimiter(client, SLOW)
    await limiter.warm()
    before = await evalsha_calls(client)
    for i in range(5):
        assert (await asyncio.wait_for(limiter.check(f"u:{i}", None), 5)).allowed
        assert await evalsha_calls(client) - before == i + 1


async def test_a_single_check_returns_the_same_decision_as_before(client: aioredis.Redis) -> None:
    lim = Limits(user_per_min=60, user_capacity=5, org_per_min=6000, org_capacity=6000)  # 1 token/s
    limiter = RedisRateLimiter(client, lim)
    assert await limiter.check("u:a", "o:x") == Decision(True, 5, 4, 1.0)  # new bucket: no refill yet
    for _ in range(4):
        await limiter.check("u:a", "o:x")
    refusal = await limiter.check("u:a", "o:x")
    assert approx_decision(refusal) == (False, 5, 0, "burst", 5.0, 1.0)

    short_window = Limits(user_per_min=60, user_capacity=1, org_per_min=6000, org_capacity=6000, burst_window=0.2)
    limiter = RedisRateLimiter(client, short_window)
    assert (await limiter.check("u:b", None)).allowed
    await asyncio.sleep(0.25)  # the bucket emptied longer than a burst window ago: sustained use
    assert approx_decision(await limiter.check("u:b", None)) == (False, 1, 0, "user", 0.75, 0.75)


async def test_batched_decisions_match_the_single_request_script(client: aioredis.Redis) -> None:
    # The same checks through the old script one at a time and through the limiter all at once (so
    # in batches, some sharing buckets): every caller must get the same decision. Twice: within the
    # burst window (refusals are bursts), then after it (sustained use). One batch in flight at a
    # time, so that batches also run in arrival order: two in flight go over two connections and
    # the second sent may run first, as two concurrent requests could before batching.
    lim = Limits(user_per_min=1, user_capacity=3, org_per_min=2, org_capacity=3, burst_window=1.0)
    calls = [(f"u:{'abcd'[i % 4]}", [None, "o:x", "o:y"][i % 3]) for i in range(60)]
    reference = RedisRateLimiter(client, lim, prefix="ref")  # used only for its keys
    limiter = RedisRateLimiter(client, lim, prefix="new", max_in_flight=1)
    for phase in ("burst", "user"):
        if phase == "user":
            await asyncio.sleep(1.1)
        expected = [await reference_check(client, lim, reference.keys_for(u, o)) for u, o in calls]
        got = await together(limiter.check(u, o) for u, o in calls)
        assert [approx_decision(d) for d in got] == [approx_decision(d) for d in expected]
        # Every outcome appears: admitted, org and burst refusals, then sustained use once all is spent.
        assert {d.bucket for d in got} == ({None, "org", "burst"} if phase == "burst" else {"user"})


async def test_one_batch_gives_each_caller_its_own_decision(client: aioredis.Redis) -> None:
    lim = Limits(user_per_min=1, user_capacity=2, org_per_min=2, org_capacity=3, burst_window=0.5)
    limiter = RedisRateLimiter(client, lim)
    for _ in range(2):
        await limiter.check("u:slow", None)
    await asyncio.sleep(0.6)  # emptied more than a burst window ago: refused as sustained use
    for _ in range(2):
        await limiter.check("u:fast", None)  # emptied just now: a burst
    for i in range(3):
        await limiter.check(f"u:org-filler-{i}", "o:full")
    # The first MAX_IN_FLIGHT checks go out alone, each as its own batch; everything after them waits
    # and goes as one batch.
    fillers = [(f"u:slot-{i}", None) for i in range(MAX_IN_FLIGHT)]
    batch = [
        ("u:fast", None),  # user bucket empty, burst
        ("u:slow", None),  # user bucket empty, sustained
        ("u:c", "o:full"),  # org empty
        ("u:d", "o:ok"),
        ("u:d", "o:ok"),  # the same bucket twice in one batch: sees the first one's token gone
        ("u:d", "o:ok"),  # and a third time: refused
        ("u:e", None),
        ("u:g", "o:ok"),
        ("u:f", "o:ok"),  # o:ok's 3 tokens went to u:d, u:d and u:g
        ("u:c", "o:full"),  # refused again, its 2 tokens still there: the refusal above took none
    ]
    before = await evalsha_calls(client)
    decisions = await together(limiter.check(u, o) for u, o in fillers + batch)
    assert await evalsha_calls(client) - before == MAX_IN_FLIGHT + 1
    # u:slow's bucket refilled for the 0.6 s above (1/100 of a token): seconds within 1.5 s.
    assert [approx_decision(d, abs_s=1.5) for d in decisions[MAX_IN_FLIGHT:]] == [
        (False, 2, 0, "burst", 120.0, 60.0),
        (False, 2, 0, "user", 120.0, 60.0),
        (False, 2, 2, "org", 0.0, 30.0),
        (True, 2, 1, None, 60.0, 0.0),
        (True, 2, 0, None, 120.0, 0.0),
        (False, 2, 0, "burst", 120.0, 60.0),
        (True, 2, 1, None, 60.0, 0.0),
        (True, 2, 1, None, 60.0, 0.0),
        (False, 2, 2, "org", 0.0, 30.0),
        (False, 2, 2, "org", 0.0, 30.0),
    ]


async def test_a_batch_after_script_flush_reloads_the_script_and_stays_exact(client: aioredis.Redis) -> None:
    limiter = RedisRateLimiter(client, SLOW)
    await limiter.warm()
    await client.script_flush()
    decisions = await together(limiter.check("u:a", "o:x") for _ in range(50))
    assert sum(d.allowed for d in decisions) == 20
    assert limiter._sha is not None and await client.script_exists(limiter._sha) == [True]


@contextlib.contextmanager
def server_stalled(server: RedisProcess, seconds: float) -> Iterator[None]:
    """DEBUG SLEEP in a thread: the whole server stops answering, as a stalled Redis would."""
    def sleep() -> None:
        with contextlib.suppress(redis.RedisError):  # killed while asleep
            redis.Redis(port=server.port).execute_command("DEBUG", "SLEEP", seconds)

    blocker = threading.Thread(target=sleep)
    blocker.start()
    try:
        yield
    finally:
        blocker.join()


async def started_and_stuck(tasks: list[asyncio.Task[Decision]]) -> None:
    await asyncio.sleep(0.3)
    assert not any(t.done() for t in tasks)


async def test_redis_killed_mid_batch_fails_every_waiter_then_recovers_after_restart(own: OwnRedis) -> None:
    server, limiter = own.server, own.limiter
    with server_stalled(server, 5):
        await asyncio.sleep(0.1)
        tasks = [asyncio.create_task(limiter.check("u:a", "o:x")) for _ in range(50)]
        await started_and_stuck(tasks)  # MAX_IN_FLIGHT batches sent, the rest queued behind them
        server.stop()  # SIGKILL while the batches are in flight
        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
    assert all(isinstance(r, redis.ConnectionError) for r in results), results

    server.start()  # same port, empty: the script is gone too
    decisions = await together((limiter.check("u:a", "o:x") for _ in range(50)), timeout=30)
    assert sum(d.allowed for d in decisions) == 20


async def test_cancelled_callers_take_no_token_unless_already_sent_and_others_proceed(own: OwnRedis) -> None:
    server, client, limiter = own.server, own.client, own.limiter
    before = await evalsha_calls(client)
    with server_stalled(server, 0.5):
        await asyncio.sleep(0.1)
        tasks = [asyncio.create_task(limiter.check("u:a", "o:x")) for _ in range(30)]
        await started_and_stuck(tasks)
        # tasks[0] and tasks[1] each sent their own check (free slots), now stuck on the server;
        # the rest are queued behind them.
        cancelled = [tasks[0], *tasks[2:7]]
        for t in cancelled:
            t.cancel()
        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
    assert all(isinstance(results[tasks.index(t)], asyncio.CancelledError) for t in cancelled)
    others = [r for t, r in zip(tasks, results, strict=True) if t not in cancelled]
    assert all(isinstance(r, Decision) for r in others), others
    # tasks[0]'s EVALSHA was already on the wire: redis-py drops the connection when cancelled
    # mid-command, and whether the server still ran it shows in its count (2 or 3 EVALSHA:
    # tasks[1], the queued batch, and maybe tasks[0]). The queued cancelled ones never went out
    # and took no token: the other 24 get all 20 tokens but the one tasks[0] may have taken.
    evalsha = await evalsha_calls(client) - before
    assert evalsha in (2, 3)
    assert sum(isinstance(r, Decision) and r.allowed for r in others) == 20 - (evalsha - 2)
    # And the dispatcher is not stuck: later checks, alone and together, still go through.
    assert (await limiter.check("u:b", None)).allowed
    assert all(d.allowed for d in await together(limiter.check(f"u:{i}", None) for i in range(10)))


async def test_a_cancelled_caller_does_not_break_the_batch_for_the_others(client: aioredis.Redis) -> None:
    # Hold back batches of more than one check just before they are sent (the dispatcher has taken
    # them: they are in flight), cancel a caller in the middle of one, then let it go.
    limiter = RedisRateLimiter(client, SLOW)
    held, release = asyncio.Event(), asyncio.Event()
    sizes: list[int] = []
    send = limiter._evalsha

    async def gated_send(keys: list[str], args: list[float | int]) -> list[int]:
        sizes.append(len(keys) // 2)
        if len(keys) > 2:
            held.set()
            await release.wait()
        return await send(keys, args)

    limiter._evalsha = gated_send  # type: ignore[method-assign]
    tasks = [asyncio.create_task(limiter.check("u:a", "o:x")) for _ in range(30)]
    await asyncio.wait_for(held.wait(), 5)
    assert sizes == [1] * MAX_IN_FLIGHT + [30 - MAX_IN_FLIGHT]  # the first went alone; the rest are one batch
    tasks[10].cancel()
    await asyncio.sleep(0)
    release.set()
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
    assert isinstance(results[10], asyncio.CancelledError)
    others = results[:10] + results[11:]
    assert all(isinstance(r, Decision) for r in others), others
    # The cancelled check was sent with its batch and took a token: 19 for the other 29.
    assert sum(isinstance(r, Decision) and r.allowed for r in others) == 19
    assert (await limiter.check("u:b", None)).allowed  # nothing stuck


async def connected_clients(port: int) -> int:
    """Connections the server holds, by its own count (this query's connection included)."""
    probe = aioredis.Redis(port=port)
    try:
        return int((await probe.info("clients"))["connected_clients"])
    finally:
        await probe.aclose()


async def test_the_limiter_holds_max_in_flight_connections_whatever_the_load(own: OwnRedis) -> None:
    # The shared pool grows to the highest concurrency it ever served and keeps those connections;
    # the limiter must not: a connection per batch slot, opened at warm-up, and never more.
    server, limiter = own.server, own.limiter
    assert await connected_clients(server.port) == MAX_IN_FLIGHT + 1
    for _ in range(3):
        decisions = await together(limiter.check(f"u:{i}", "o:x") for i in range(500))
        assert all(d.allowed for d in decisions)
    assert await connected_clients(server.port) == MAX_IN_FLIGHT + 1
    await limiter.aclose()
    assert await connected_clients(server.port) == 1


async def test_a_redis_restart_while_the_limiter_was_idle_costs_no_check(own: OwnRedis) -> None:
    # Its connections saw the old server go away while nobody used them: the first checks after the
    # restart reconnect (and load the script again) instead of failing open on a dead socket.
    server, limiter = own.server, own.limiter
    assert (await limiter.check("u:a", None)).allowed
    server.stop()
    await asyncio.sleep(0.2)  # the loop reads the EOF
    server.start()
    alone = [await limiter.check("u:a", None) for _ in range(3)]
    together_ = await together(limiter.check("u:a", None) for _ in range(30))
    assert sum(d.allowed for d in alone + together_) == 20  # a fresh server: a full bucket, exactly
