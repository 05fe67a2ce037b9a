"""Where budgets are kept: Redis (every worker and host; budget.lua does each step atomically) or
this process (without REDIS_URL; a start-up WARNING says it is not shared). Both run the same
rules: reserve the worst case if spent + reserved + it fits the limit, settle to the actual."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal, Protocol

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, ResponseError

from app.config.budget_limits import Limit, Period, Unit, period_id
from app.resilience.redis_conn import drop_if_stale

BUDGET_LUA = resources.files(__package__).joinpath("budget.lua").read_text(encoding="utf-8")
ORGS_KEY = "ivy:budget:orgs"  # org keys with an override (no hash tag: an index, not budget state)
KEY_TTL_SECONDS = 40 * 86_400  # a month's spend stays readable well into the next month

Verdict = Literal["reserved", "refused", "none", "uncounted"]
_VERDICTS: tuple[Verdict, ...] = ("refused", "reserved", "none", "uncounted")


@dataclass(frozen=True, slots=True)
class Reservation:
    verdict: Verdict
    limit: Limit | None = None
    spent: int = 0
    reserved: int = 0  # after this reservation
    amount: int = 0  # what this reservation took, in the limit's unit
    first_refusal: bool = False  # the period's first refusal (said once, fleet-wide)
    period_id: str = ""


@dataclass(frozen=True, slots=True)
class Settled:
    spent: int
    reserved: int
    crossed_soft: bool  # this settlement took the period past the soft threshold (said once)


@dataclass(frozen=True, slots=True)
class Override:
    org_id: str
    limit: Limit
    set_by: str
    set_at: float


class BudgetStore(Protocol):
    backend: Literal["redis", "memory"]

    async def reserve(self, org: str, default: Limit | None, usd: int, tokens: int, hold_id: str,
                      ttl_ms: int) -> Reservation: ...

    async def settle(self, org: str, limit: Limit, pid: str, hold_id: str, reserved: int, actual: int,
                     soft_permille: int) -> Settled: ...

    async def set_override(self, org: str, override: Override) -> None: ...

    async def delete_override(self, org: str) -> bool: ...

    async def overrides(self) -> dict[str, Override]: ...

    async def spend(self, org: str, limit: Limit, pid: str) -> tuple[int, int]:
        """(spent, reserved) of one org's period."""
        ...

    async def top(self, unit: Unit, period: Period, pid: str, n: int) -> list[tuple[str, int]]:
        """The ``n`` orgs that spent most in a period, most first."""
        ...

    async def flush(self) -> None:
        """Write the spend this process settled since the last flush into the top-spenders index."""
        ...

    async def reachable(self) -> bool | None:
        """Does the shared store answer (None: this process's own, nothing to reach)?"""
        ...

    def hurry(self) -> None:
        """Write now what waits to be written with the next reservation (a snapshot, shutdown)."""
        ...

    def traffic(self) -> dict[str, int] | None:
        """Script calls sent and the round trips that carried them (None: nothing sent anywhere)."""
        ...

    async def aclose(self) -> None:
        """Everything written, the store's own connection closed (at shutdown)."""
        ...


def limit_key(org: str) -> str:
    return f"ivy:budget:{{{org}}}:limit"


def period_keys(org: str, pid: str) -> tuple[str, str]:
    """An org's period hash and its holds; the ``{org}`` hash tag puts all of an org's keys in one slot."""
    base = f"ivy:budget:{{{org}}}:{pid}"
    return base, base + ":holds"


def _pack(*args: str | int) -> bytes:
    """One command in RESP, by hand (the client's packer was a third of a reservation's CPU)."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        raw = arg.encode() if isinstance(arg, str) else b"%d" % arg
        parts.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(parts)


_Call = tuple[asyncio.Future[Any], tuple[str | int, ...]]  # a caller's future, its EVALSHA's numkeys, keys, args


class ScriptWire:
    """budget.lua's calls on one connection of their own, in group commits.

    Why: a reservation is on every budgeted request's path and a settlement follows each call, and
    each was a round trip through the client's pool (checkout, retry wrapper, packer, parser),
    about 2.5 PINGs of CPU (scripts/bench_budget.py). Here a call is queued; a reservation
    (``urgent``) sends everything queued at once, as one write of pipelined EVALSHAs, unless a
    round trip is in flight (then it goes with the next, sent as that one returns). A settlement
    waits up to ``SETTLE_DELAY`` for a reservation to carry it, so at any steady rate a request
    costs one round trip, not two; until it is written its hold still counts as reserved, which
    can only refuse sooner, never overshoot. Replies are read in order; an error reply fails only
    its call, NOSCRIPT (Redis restarted, SCRIPT FLUSH) loads the script and resends those calls
    once, and a lost connection fails the round trip's calls (the next one reconnects). The sends
    run in tasks of their own: a caller that is cancelled never leaves a reply unread.
    """

    SETTLE_DELAY = 0.02  # seconds a settlement may wait for a reservation to ride with
    MAX_BATCH = 128  # calls per round trip

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self._loop: asyncio.AbstractEventLoop | None = None
        self._conn: Any = None
        self._sha: str | None = None
        self._queue: list[_Call] = []
        self._urgent = False
        self._sending = False
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.calls = 0  # EVALSHAs sent, and the round trips that carried them (their ratio: the group commit's gain)
        self.round_trips = 0

    def _state(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # first use, or a new event loop (tests): start clean
            self._loop, self._queue, self._urgent, self._sending, self._timer = loop, [], False, False, None
            self._conn = self.client.connection_pool.make_connection()  # type: ignore[no-untyped-call]
        return loop

    def call(self, keys: list[str], args: list[str | int], *, urgent: bool) -> asyncio.Future[Any]:
        loop = self._state()
        future: asyncio.Future[Any] = loop.create_future()
        command = (len(keys), *keys, *args)
        self._queue.append((future, command))
        if urgent:
            self._urgent = True
            self._kick()
        elif self._timer is None and not self._sending:
            self._timer = loop.call_later(self.SETTLE_DELAY, self._kick)
        return future

    def hurry(self) -> None:
        """Send what waits now (a snapshot, shutdown)."""
        self._state()
        self._urgent = bool(self._queue)
        self._kick()

    def _kick(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._sending or not self._queue or self._loop is None:
            return
        batch, self._queue = self._queue[:self.MAX_BATCH], self._queue[self.MAX_BATCH:]
        self._urgent = bool(self._queue) and self._urgent
        self._sending = True
        task = self._loop.create_task(self._send(batch, self._loop))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[_Call],
                    loop: asyncio.AbstractEventLoop) -> None:
        try:
            await self._round_trip(batch)
        except BaseException as exc:
            error = exc if isinstance(exc, Exception) else RuntimeError("budget round trip cancelled")
            for future, _ in batch:
                if not future.done():
                    future.set_exception(error)
            if not isinstance(exc, Exception):
                raise
        finally:
            if loop is self._loop:
                self._sending = False
                if self._urgent:
                    self._kick()
                elif self._queue and self._timer is None:
                    self._timer = loop.call_later(self.SETTLE_DELAY, self._kick)

    async def _round_trip(self, batch: list[_Call]) -> None:
        conn = self._conn
        await drop_if_stale(conn)
        if not conn.is_connected:
            self._sha = None  # a new connection may be a restarted Redis: load the script again
        todo = batch
        for _ in range(2):  # the second pass: the calls NOSCRIPT refused, after loading the script
            if self._sha is None:
                await conn.send_command("SCRIPT", "LOAD", BUDGET_LUA)
                sha = await conn.read_response()
                self._sha = sha.decode() if isinstance(sha, bytes) else str(sha)
            await conn.send_packed_command([_pack("EVALSHA", self._sha, *command) for _, command in todo])
            self.calls, self.round_trips = self.calls + len(todo), self.round_trips + 1
            refused = []
            for item in todo:
                future = item[0]
                try:
                    reply = await conn.read_response()
                except NoScriptError:
                    refused.append(item)
                    continue
                except ResponseError as exc:
                    if not future.done():
                        future.set_exception(exc)
                    continue
                if not future.done():
                    future.set_result(reply)
            if not refused:
                return
            self._sha, todo = None, refused
        for future, _ in todo:
            if not future.done():
                future.set_exception(NoScriptError("budget.lua not loaded after SCRIPT LOAD"))

    async def aclose(self) -> None:
        if self._loop is asyncio.get_running_loop():
            self.hurry()
            while self._tasks or self._queue:
                if self._tasks:
                    await asyncio.gather(*self._tasks, return_exceptions=True)
                else:
                    self.hurry()
            await self._conn.disconnect()


def _top_key(unit: Unit, period: Period, pid: str) -> str:
    return f"ivy:budget:top:{unit}:{period}:{pid}"


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisBudgetStore:
    backend: Literal["redis", "memory"] = "redis"

    MAX_PENDING = 10_000  # orgs whose spend waits for the next flush; past it the flush comes early

    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self.wire = ScriptWire(redis)
        # The top-spenders index is one key (one hash slot), so it cannot be in the script's call on
        # Redis Cluster, and a second command per settlement doubled its cost (bench_budget.py): each
        # process adds its settled spend to it about once a second instead (Budgets.run).
        self._pending: dict[str, int] = {}

    async def reserve(self, org: str, default: Limit | None, usd: int, tokens: int, hold_id: str,
                      ttl_ms: int) -> Reservation:
        now = time.time()
        day, month = period_id("day", now), period_id("month", now)
        keys = [limit_key(org), *period_keys(org, day), *period_keys(org, month)]
        args: list[str | int] = ["reserve", default.amount if default else -1, default.unit if default else "",
                default.period if default else "", usd, tokens, hold_id, ttl_ms, KEY_TTL_SECONDS]
        sent = self.wire.call(keys, args, urgent=True)
        try:
            raw = await asyncio.shield(sent)
        except asyncio.CancelledError:  # the caller left: a reservation made anyway goes back at once
            sent.add_done_callback(lambda done: self._orphaned(done, org, hold_id, day, month))
            raise
        verdict = _VERDICTS[int(raw[0])]
        if verdict == "none":
            return Reservation("none")
        unit, period = _text(raw[4]), _text(raw[5])
        limit = Limit(int(raw[3]), "usd" if unit == "usd" else "tokens", "day" if period == "day" else "month")
        return Reservation(verdict, limit, int(raw[1]), int(raw[2]), int(raw[7]), bool(int(raw[6])),
                           day if period == "day" else month)

    def _orphaned(self, done: asyncio.Future[Any], org: str, hold_id: str, day: str, month: str) -> None:
        if done.cancelled() or done.exception() is not None:
            return
        raw = done.result()
        if int(raw[0]) == 1:  # reserved: released, nothing spent
            pid, amount = day if _text(raw[5]) == "day" else month, int(raw[7])
            self.wire.call(list(period_keys(org, pid)), ["settle", f"{hold_id}:{amount}", amount, 0, 0, 0,
                                                          KEY_TTL_SECONDS], urgent=False)

    async def settle(self, org: str, limit: Limit, pid: str, hold_id: str, reserved: int, actual: int,
                     soft_permille: int) -> Settled:
        member = f"{hold_id}:{reserved}"
        spent, left, crossed = await self.wire.call(
            list(period_keys(org, pid)),
            ["settle", member, reserved, actual, limit.amount, soft_permille, KEY_TTL_SECONDS], urgent=False)
        if actual:
            key = f"{_top_key(limit.unit, limit.period, pid)}\n{org}"
            self._pending[key] = self._pending.get(key, 0) + actual
            if len(self._pending) > self.MAX_PENDING:
                await self.flush()
        return Settled(int(spent), int(left), bool(int(crossed)))

    def hurry(self) -> None:
        self.wire.hurry()

    def traffic(self) -> dict[str, int] | None:
        return {"calls": self.wire.calls, "round_trips": self.wire.round_trips}

    async def aclose(self) -> None:
        await self.wire.aclose()

    async def flush(self) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, {}
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for key, amount in pending.items():
                    top, _, org = key.partition("\n")
                    pipe.zincrby(top, amount, org)
                    pipe.expire(top, KEY_TTL_SECONDS)
                await pipe.execute()
        except Exception:
            for key, amount in pending.items():  # kept for the next flush (bounded by MAX_PENDING's flush)
                self._pending[key] = self._pending.get(key, 0) + amount
            raise

    async def set_override(self, org: str, override: Override) -> None:
        limit = override.limit
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(limit_key(org), mapping={
                "amount": limit.amount, "unit": limit.unit, "period": limit.period, "org_id": override.org_id,
                "set_by": override.set_by, "set_at": override.set_at})
            pipe.sadd(ORGS_KEY, org)
            await pipe.execute()

    async def delete_override(self, org: str) -> bool:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.delete(limit_key(org))
            pipe.srem(ORGS_KEY, org)
            replies = await pipe.execute()
        return bool(replies[0])

    async def overrides(self) -> dict[str, Override]:
        orgs = sorted(_text(o) for o in await self.redis.smembers(ORGS_KEY))
        if not orgs:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for org in orgs:
                pipe.hgetall(limit_key(org))
            rows = await pipe.execute()
        found = {}
        for org, row in zip(orgs, rows, strict=True):
            data = {_text(k): _text(v) for k, v in row.items()}
            if data.get("amount"):
                unit: Unit = "usd" if data["unit"] == "usd" else "tokens"
                period: Period = "day" if data["period"] == "day" else "month"
                found[org] = Override(data.get("org_id", org), Limit(int(data["amount"]), unit, period),
                                      data.get("set_by", "unknown"), float(data.get("set_at", 0) or 0))
        return found

    async def reachable(self) -> bool | None:
        try:
            return bool(await self.redis.ping())
        except Exception:
            return False

    async def spend(self, org: str, limit: Limit, pid: str) -> tuple[int, int]:
        values = await self.redis.hmget(period_keys(org, pid)[0], ["spent", "reserved"])
        return int(values[0] or 0), int(values[1] or 0)

    async def top(self, unit: Unit, period: Period, pid: str, n: int) -> list[tuple[str, int]]:
        rows = await self.redis.zrevrange(_top_key(unit, period, pid), 0, n - 1, withscores=True)
        return [(_text(row[0]), int(row[1])) for row in rows if isinstance(row, tuple | list)]


@dataclass(slots=True)
class _Period:
    spent: int = 0
    holds: dict[str, tuple[int, float]] = field(default_factory=dict)  # id -> (amount, expires at)
    soft: bool = False
    exhausted: bool = False

    def reserved(self, now: float) -> int:
        for key in [k for k, (_, at) in self.holds.items() if at <= now]:
            del self.holds[key]
        return sum(amount for amount, _ in self.holds.values())


class MemoryBudgetStore:
    """This process's budgets (no REDIS_URL): the same rules, not shared with other workers."""

    backend: Literal["redis", "memory"] = "memory"
    MAX_PERIODS = 100_000  # org-periods kept; past it the oldest go (a new period starts from zero)

    def __init__(self) -> None:
        self._overrides: dict[str, Override] = {}
        self._periods: dict[tuple[str, str, str], _Period] = {}  # (org, unit, period id)

    def _period(self, org: str, unit: str, pid: str) -> _Period:
        key = (org, unit, pid)
        found = self._periods.get(key)
        if found is None:
            if len(self._periods) >= self.MAX_PERIODS:
                del self._periods[next(iter(self._periods))]
            found = self._periods[key] = _Period()
        return found

    async def reserve(self, org: str, default: Limit | None, usd: int, tokens: int, hold_id: str,
                      ttl_ms: int) -> Reservation:
        override = self._overrides.get(org)
        limit = override.limit if override is not None else default
        if limit is None:
            return Reservation("none")
        amount = usd if limit.unit == "usd" else tokens
        if amount < 0:
            return Reservation("uncounted", limit)
        now = time.time()
        pid = period_id(limit.period, now)
        state = self._period(org, limit.unit, pid)
        reserved = state.reserved(now)
        if state.spent + reserved + amount > limit.amount:
            first = not state.exhausted
            state.exhausted = True
            return Reservation("refused", limit, state.spent, reserved, amount, first, pid)
        state.holds[hold_id] = (amount, now + ttl_ms / 1000)
        return Reservation("reserved", limit, state.spent, reserved + amount, amount, False, pid)

    async def settle(self, org: str, limit: Limit, pid: str, hold_id: str, reserved: int, actual: int,
                     soft_permille: int) -> Settled:
        state = self._period(org, limit.unit, pid)
        state.holds.pop(hold_id, None)
        state.spent += actual
        crossed = not state.soft and state.spent * 1000 >= limit.amount * soft_permille
        state.soft = state.soft or crossed
        return Settled(state.spent, state.reserved(time.time()), crossed)

    async def set_override(self, org: str, override: Override) -> None:
        self._overrides[org] = override

    async def delete_override(self, org: str) -> bool:
        return self._overrides.pop(org, None) is not None

    async def overrides(self) -> dict[str, Override]:
        return dict(self._overrides)

    async def spend(self, org: str, limit: Limit, pid: str) -> tuple[int, int]:
        state = self._periods.get((org, limit.unit, pid))
        return (0, 0) if state is None else (state.spent, state.reserved(time.time()))

    async def flush(self) -> None:
        return None

    def hurry(self) -> None:
        return None

    def traffic(self) -> dict[str, int] | None:
        return None

    async def aclose(self) -> None:
        return None

    async def reachable(self) -> bool | None:
        return None

    async def top(self, unit: Unit, period: Period, pid: str, n: int) -> list[tuple[str, int]]:
        rows = [(org, p.spent) for (org, u, i), p in self._periods.items() if u == unit and i == pid and p.spent]
        return sorted(rows, key=lambda row: -row[1])[:n]


