"""The Redis limiter: fleet-wide buckets, checked in batches by one Lua script (bucket.lua).

The script runs the rules of bucket.py atomically, with the clock of the Redis server (so app hosts'
clocks do not matter); the token counts it returns become a Decision through ``bucket.decision``.

Why batches: one EVALSHA per request cost too much at load. A profile at 1,700 req/s put
redis-py's per-call path (pool checkout under its asyncio.Condition, pack_command, encode,
parse) at ~12% of the router's CPU, and with 500 concurrent requests hundreds of them queued on
the 64-connection pool's Condition. So checks use group commit, one in flight and the rest
accumulate: while fewer than ``MAX_IN_FLIGHT`` batches are in flight a check goes out at once
(alone: at one request at a time nothing waits, and nothing is added but a counter), otherwise
it queues, and each batch that returns sends everything queued (up to ``MAX_BATCH``) as the next
batch. The script runs a batch's checks in order, each with the same arithmetic as a lone check,
so two checks on one bucket in one batch see each other's decrement and admission stays exact
across workers and hosts. A failed EVALSHA fails every check of its batch with its exception.

Each batch slot owns one connection, outside the client's shared pool: the in-flight bound already
serialises a slot's batches, so a pool checkout (an asyncio.Condition under the lock) and the
client's retry and parse wrappers bought nothing but ~30 us per round trip, the largest single
cost of a request at one connection. It also fixes the limiter's share of Redis connections at
``MAX_IN_FLIGHT`` per worker, whatever the load. Before each use, a slot's connection gets the
check the pool would make (unread data or EOF, e.g. Redis restarted: reconnect); nothing is
retried, so a timeout costs one ``socket_timeout`` and fails its checks, as it did before.

Redis Cluster is not supported: a batch's keys (and a check's user and org buckets) span hash
slots. The client is a plain ``redis.asyncio.Redis`` on one server (or a primary with replicas);
a Cluster would need the script split per slot, which the exact user+org decision cannot be.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import deque
from importlib import resources
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from app.resilience.ratelimit.backend import BackendName
from app.resilience.ratelimit.bucket import Bucket, Decision, Limits, decision
from app.resilience.redis_conn import drop_if_stale

# The token-bucket script (its calling convention is at its top), read once at import.
BUCKET_LUA = resources.files(__package__).joinpath("bucket.lua").read_text(encoding="utf-8")
# The script's refusing-bucket codes, in order.
_REFUSED_BY: tuple[Bucket | None, ...] = (None, "user", "org", "burst")

# Batches in flight at once. One would leave the wire idle while a reply is parsed and its waiters
# are woken (every request arriving then waits a whole extra round trip); two keep one batch on the
# wire while the next is sent. More buy nothing: Redis runs scripts one at a time anyway, and each
# extra batch is another pool checkout and EVALSHA — the per-call cost batching exists to remove.
# It also bounds the limiter to two of the shared pool's connections. Measured at 50 connections:
# 2 gave 3,000 req/s, 8 gave 2,520 and 32 gave 2,360 (checks spread over more, smaller batches).
MAX_IN_FLIGHT = 2
# Checks per batch. A batch's callers are all released at the same instant and reach the provider
# together: with 256, the bench's 300 ms-upstream / 500-connection case turned that into bursts
# that fed themselves (p50 335 -> 425 ms); 32 keeps the throughput gain at 50 connections
# (2,500 -> 3,000 req/s) and the bursts small (that case's p99 525 -> 472 ms). A check is up to 6
# Redis calls inside the script (~8 us with an org bucket): a full batch runs well under 1 ms.
MAX_BATCH = 32

_Pending = tuple[list[str], asyncio.Future[list[int]]]  # a check's keys, and its caller's future


class RedisRateLimiter:
    """Fleet-wide buckets in one Redis; every app host and worker shares them.

    Concurrent checks are coalesced (see the module docstring). With a batch slot free, ``check``
    sends its own check at once, from the caller's task, on that slot's connection. Otherwise it
    queues its keys and a future; when a batch finishes, it starts a task that sends up to
    ``max_batch`` queued checks as one EVALSHA and resolves their futures, and so on while checks
    are queued. No task outlives its batch; batches in flight at once use different connections and
    may run on the server in either order, as concurrent requests could before. ``aclose`` closes
    the slots' connections; the client (and its pool, used for ``ping``) stays the caller's.
    """

    backend: BackendName = "redis"

    def __init__(self, client: aioredis.Redis, limits: Limits, *, prefix: str = "ivy:rl",
                 max_in_flight: int = MAX_IN_FLIGHT, max_batch: int = MAX_BATCH) -> None:
        self.client = client
        self.limits = limits
        self.prefix = prefix
        self.max_in_flight = max(1, max_in_flight)
        self.max_batch = max(1, max_batch)
        self._sha: str | None = None
        # Dispatcher state, for the event loop in use (see _loop_state).
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: deque[_Pending] = deque()
        self._in_flight = 0
        self._batches: set[asyncio.Task[None]] = set()  # strong references until each batch is done
        self._idle: list[aioredis.Connection] = []  # the free slots' connections (one per slot)

    def keys_for(self, user_key: str, org_key: str | None) -> list[str]:
        # One bucket per user whatever org header comes with it (a key that varied with the org
        # would let a user multiply their limit by sending several X-Org-ID values).
        keys = [f"{self.prefix}:{user_key}"]
        if org_key is not None:
            keys.append(f"{self.prefix}:{org_key}")
        return keys

    async def warm(self) -> None:
        """Open every slot's connection and load the script, so the first requests pay neither."""
        self._loop_state()
        for conn in self._idle:
            await drop_if_stale(conn)
            await conn.connect()  # type: ignore[no-untyped-call]
        await self._load(self._idle[0])

    async def aclose(self) -> None:
        if self._loop is asyncio.get_running_loop():
            for conn in self._idle:
                await conn.disconnect()

    async def _load(self, conn: aioredis.Connection) -> str:
        sha = await self._call(conn, "SCRIPT", "LOAD", BUCKET_LUA)
        self._sha = sha.decode() if isinstance(sha, bytes) else str(sha)
        return self._sha

    @staticmethod
    async def _call(conn: aioredis.Connection, *command: str | float | int) -> Any:
        # send_command connects if needed; both halves drop the connection on any failure or
        # cancellation, so a reply is never left unread for the next batch to take as its own.
        await conn.send_command(*command)
        return await conn.read_response()

    async def _evalsha(self, keys: list[str], args: list[float | int]) -> list[int]:
        """One EVALSHA on a free slot's connection (the caller holds the slot)."""
        idle = self._idle  # the list it goes back to, even if another loop has replaced it meanwhile
        conn = idle.pop()
        try:
            await drop_if_stale(conn)
            sha = self._sha or await self._load(conn)
            try:
                result = await self._call(conn, "EVALSHA", sha, len(keys), *keys, *args)
            except NoScriptError:
                # Redis restarted or SCRIPT FLUSH: load again, once.
                result = await self._call(conn, "EVALSHA", await self._load(conn), len(keys), *keys, *args)
            return [int(x) for x in result]
        finally:
            idle.append(conn)

    async def _send(self, checks: list[list[str]]) -> list[int]:
        """One EVALSHA for a batch (each check's keys, in order); 4 integers per check."""
        lim = self.limits
        args: list[float | int] = [lim.user_rate, lim.user_capacity, lim.org_rate, lim.org_capacity,
                                   lim.burst_window]
        args.extend(len(keys) for keys in checks)
        result = await self._evalsha([key for keys in checks for key in keys], args)
        if len(result) != 4 * len(checks):
            raise RuntimeError(f"rate-limit script returned {len(result)} values for {len(checks)} checks")
        return result

    async def check(self, user_key: str, org_key: str | None) -> Decision:
        keys = self.keys_for(user_key, org_key)
        loop = self._loop_state()
        if self._in_flight < self.max_in_flight:
            # A free slot means nothing is queued (a finishing batch sends whatever queued while a
            # slot was free), so the batch to start now is this check alone: send it at once, from
            # the caller's own task — no task, no future, no loop iteration in between. Cancelling
            # this caller cancels only its own batch, as before batching.
            self._in_flight += 1
            try:
                _, refused, user_milli, org_milli = await self._send([keys])
                return decision(user_milli / 1000, org_milli / 1000, _REFUSED_BY[refused], self.limits)
            finally:
                self._release(loop)
        future: asyncio.Future[list[int]] = loop.create_future()
        self._pending.append((keys, future))
        try:
            _, refused, user_milli, org_milli = await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                future.exception()  # answered as we were cancelled: mark it seen, no "never retrieved" log
            raise
        return decision(user_milli / 1000, org_milli / 1000, _REFUSED_BY[refused], self.limits)

    def _loop_state(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            # First use, or the previous loop is gone (tests, a restarted lifespan): whatever was
            # queued or in flight there can never complete here, so start clean rather than count
            # dead batches against MAX_IN_FLIGHT forever. Connections opened on that loop cannot be
            # used on this one either: each slot gets a new one (connected on first use).
            self._loop, self._pending, self._in_flight, self._batches = loop, deque(), 0, set()
            pool = self.client.connection_pool
            self._idle = [pool.make_connection() for _ in range(self.max_in_flight)]  # type: ignore[no-untyped-call]
        return loop

    def _release(self, loop: asyncio.AbstractEventLoop) -> None:
        """A batch is over: free its slot and send what queued meanwhile (keeps: queued => no free slot)."""
        if loop is not self._loop:
            return  # _loop_state started afresh for another loop: this batch's slot is not counted there
        self._in_flight -= 1
        while self._pending and self._in_flight < self.max_in_flight:
            self._start_batch(loop)

    def _start_batch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Send up to max_batch queued checks as one batch (callers ensure a slot is free)."""
        batch: list[_Pending] = []
        while self._pending and len(batch) < self.max_batch:
            item = self._pending.popleft()
            if not item[1].done():  # its caller was cancelled while it waited: nothing to ask
                batch.append(item)
        if not batch:
            return
        self._in_flight += 1
        # A task of its own, not one caller's: a caller cancelled mid-flight must not cancel the
        # EVALSHA that answers the others. Its first step runs on the next loop iteration.
        task = loop.create_task(self._run_batch(batch))
        self._batches.add(task)
        task.add_done_callback(functools.partial(self._batch_done, batch))

    async def _run_batch(self, batch: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        try:
            # Callers cancelled between _start_batch and this first step take no token either.
            batch[:] = [item for item in batch if not item[1].done()]
            if not batch:
                return
            try:
                result = await self._send([keys for keys, _ in batch])
            except asyncio.CancelledError:
                # Only at shutdown: the waiters get an error they handle (fail open/closed).
                self._fail(batch, RuntimeError("rate-limit batch cancelled"))
                raise
            except Exception as exc:  # Redis down, timeout, anything: every check in the batch fails with it
                self._fail(batch, exc)
                return
            for i, (_, future) in enumerate(batch):
                if not future.done():  # a caller cancelled meanwhile is skipped; the others get theirs
                    future.set_result(result[4 * i: 4 * i + 4])
        finally:
            batch.clear()  # settled: _batch_done must not settle it again
            self._release(loop)

    def _batch_done(self, batch: list[_Pending], task: asyncio.Task[None]) -> None:
        self._batches.discard(task)
        if batch:  # cancelled before its first step, so _run_batch never ran: settle it here
            self._fail(batch, RuntimeError("rate-limit batch cancelled"))
            batch.clear()
            self._release(task.get_loop())

    @staticmethod
    def _fail(batch: list[_Pending], exc: BaseException) -> None:
        for _, future in batch:
            if not future.done():
                future.set_exception(exc)

    async def ping(self) -> float:
        started = time.perf_counter()
        await self.client.ping()
        return (time.perf_counter() - started) * 1000

