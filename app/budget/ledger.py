"""Each provider call's bill, and the per-org budget it is reserved against.

One request opens a `Tab` (its org, its prompt's token estimates, its output cap). Before each
provider call (the first, a hedge, a failover: the race asks through the chain, its Referee) the
tab reserves that call's worst case, its prompt's upper-bound tokens plus its output cap at the
model's price, as a `Hold`; after the call the hold is settled to what the provider reported (or,
for a call stopped before it reported, to an estimate: app/budget/estimate.py). The worst case
bounds the actual by construction, so spend never passes a limit.

What a call is billed::

    the provider reported usage      those counts (OpenAI's usage chunk, Gemini's usageMetadata)
    stopped before it reported       (a hedge outrun, the deadline, a stream the client left) the
                                     prompt's likely tokens plus the characters received / 4
    an error before any text         nothing (providers do not bill a 429, a 5xx or a refusal)

Only the reservation is on the request's path. The bill is computed at once (it goes in the
response), its settlement in Redis is written by a task of `Budgets` (`Budgets.write`), so the
response does not wait a round trip for it: until that write lands the hold still counts as
reserved, which only ever refuses sooner, never overshoots. The writes are kept (strong references)
until done, awaited at shutdown (`Budgets.aclose`) and bounded (`MAX_WRITES`: past it a reservation
waits for the oldest write), and a write that fails leaves the hold to expire (`hold_seconds`).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal

import app.budget.estimate as estimate
from app.budget.store import BudgetStore, Override, Reservation
from app.config.budget_limits import Limit, period_id, seconds_left
from app.config.prices import NANO_PER_USD, Price, PriceTable
from app.observability.logging import get_logger
from app.observability.metrics import Metrics
from app.observability.redaction import redact
from app.observability.throttle import STORM_WARNING_SECONDS, Throttle

log = get_logger()

Exhausted = Literal["refuse", "offline"]
_ids = itertools.count()
_PREFIX = f"{os.getpid():x}-{int(time.time()):x}"  # hold ids unique across workers and restarts


@dataclass(frozen=True, slots=True)
class Bill:
    """One provider call, as billed."""

    provider: str
    model: str
    role: str
    input_tokens: int
    cached_tokens: int
    output_tokens: int
    cost: int | None  # nano-USD; None: the model has no price
    estimated: bool

    @property
    def cost_usd(self) -> float | None:
        return None if self.cost is None else self.cost / NANO_PER_USD


@dataclass(slots=True)
class Hold:
    """One call's reservation (``amount`` 0: nothing reserved, e.g. budgets off)."""

    tab: Tab
    limit: Limit | None = None
    amount: int = 0
    pid: str = ""
    hold_id: str = ""
    settled: bool = False
    any_model: bool = False  # reserved at the dearest link's price (the first call's): any link may use it


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request's budget refused it, for the 429 or the offline answer."""

    reason: Literal["budget_exhausted", "budget_unavailable"]
    retry_after: float


class Budgets:
    """The price table, the store and the policy (IVY_BUDGET_*); one per process."""

    # Settlements and releases being written at once. Each is bounded by REDIS_TIMEOUT_MS, so this
    # is reached only when Redis is slow at a high rate; past it a reservation waits for a slot
    # (the writes are never dropped: a dropped settle would hold its reservation until it expired).
    MAX_WRITES = 10_000

    def __init__(self, prices: PriceTable, store: BudgetStore | None, metrics: Metrics, *, default: Limit | None,
                 enabled: bool, exhausted: Exhausted, soft_threshold: float, fail_open: bool,
                 hold_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.prices, self.store, self.metrics = prices, store, metrics
        self.default, self.enabled, self.exhausted = default, enabled and store is not None, exhausted
        self.soft_permille = round(soft_threshold * 1000)
        self.fail_open = fail_open
        self.hold_ms = int(hold_seconds * 1000)
        self.clock = clock
        self.store_warnings = Throttle(STORM_WARNING_SECONDS)
        self.store_failures = 0
        self.store_ok: bool | None = None  # the last reservation or settlement reached the store (None: none yet)
        self._unknown: set[str] = set()
        self._writes: set[asyncio.Task[Any]] = set()

    # --- the settlements, off the request's path ----------------------------------------------------

    def write(self, work: Coroutine[Any, Any, None]) -> None:
        """Run a settlement or a release as a task of its own: the request does not wait for it, a
        cancelled request (the client left) does not cancel it."""
        task = asyncio.ensure_future(work)
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    @property
    def writing(self) -> int:
        return len(self._writes)

    async def room(self) -> None:
        """Wait while MAX_WRITES writes are in flight (Redis slow at a high rate)."""
        while len(self._writes) >= self.MAX_WRITES:
            await asyncio.wait(set(self._writes), return_when=asyncio.FIRST_COMPLETED)

    async def drain(self) -> None:
        """Wait for this process's writes so far (before a snapshot, at shutdown)."""
        while self._writes:
            await asyncio.sleep(0)  # the writes just started queue their calls first
            if self.store is not None:
                self.store.hurry()
            await asyncio.gather(*self._writes, return_exceptions=True)

    async def aclose(self) -> None:
        """At shutdown: every settlement written, then the top-spenders index flushed."""
        await self.drain()
        if self.store is not None:
            try:
                await self.store.flush()
            except Exception as exc:
                self.store_failed(exc, "flush")
            await self.store.aclose()

    @classmethod
    def off(cls, metrics: Metrics) -> Budgets:
        """Costs counted, nothing budgeted (a chain built without budgets, e.g. in a test)."""
        return cls(PriceTable.load(), None, metrics, default=None, enabled=False, exhausted="refuse",
                   soft_threshold=0.8, fail_open=True, hold_seconds=60)

    def price(self, model: str) -> Price | None:
        found = self.prices.get(model)
        if found is None:
            self.metrics.price_unknown.labels(model[:64]).inc()
            if model not in self._unknown and len(self._unknown) < 100:
                self._unknown.add(model)
                log.warning("price_unknown", model=model[:64],
                            message="no price for this model: its calls are counted in tokens, cost unknown "
                                    "(add it to IVY_PRICE_FILE)")
        return found

    def tab(self, org: str | None, system: str, prompt: str, cap: int, intent: str) -> Tab:
        return Tab(self, org if self.enabled else None, estimate.upper_bound(system, prompt),
                   estimate.likely(system, prompt), cap, intent)

    # --- what on-call and finance see, and the per-org overrides (app/api/admin.py) ------------------

    async def set_override(self, org: str, org_id: str, limit: Limit, set_by: str) -> dict[str, object]:
        assert self.store is not None
        await self.store.set_override(org, Override(org_id, limit, set_by, time.time()))
        log.warning("budget_changed", org_id=org_id, set_by=set_by, **limit.describe())
        return await self.org_row(org, Override(org_id, limit, set_by, time.time()))

    async def delete_override(self, org: str, org_id: str, set_by: str) -> bool:
        assert self.store is not None
        deleted = await self.store.delete_override(org)
        log.warning("budget_reset", org_id=org_id, set_by=set_by, deleted=deleted,
                    default=self.default.describe() if self.default else None)
        return deleted

    async def org_row(self, org: str, override: Override | None) -> dict[str, object]:
        """One org's limit, spend and reservations in its current period."""
        assert self.store is not None
        limit = override.limit if override is not None else self.default
        if limit is None:
            return {"org_key": org, "limit": None}
        pid = period_id(limit.period)
        spent, reserved = await self.store.spend(org, limit, pid)
        return {"org_key": org, "org_id": override.org_id if override else None, **limit.describe(),
                "period_id": pid, "spent": limit.shown(spent), "reserved": limit.shown(reserved),
                "used": round(spent / limit.amount, 4), "resets_in_seconds": round(seconds_left(limit.period)),
                "set_by": override.set_by if override else None,
                "set_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(override.set_at)) if override else None}

    async def run(self, every: float = 1.0) -> None:
        """The background loop: this process's settled spend into the top-spenders index."""
        while self.store is not None:
            await asyncio.sleep(every)
            try:
                await self.store.flush()
            except Exception as exc:
                self.store_failed(exc, "flush")

    async def snapshot(self, top: int = 10) -> dict[str, object]:
        """GET /admin/budgets: the policy, every override with its spend, and the top spenders
        (another process's last second of spend may not be in them yet)."""
        info: dict[str, object] = {
            "enabled": self.enabled, "backend": self.store.backend if self.store else None,
            "default": self.default.describe() if self.default else None, "exhausted": self.exhausted,
            "soft_threshold": self.soft_permille / 1000, "fail_open": self.fail_open,
            "store_failures": self.store_failures}
        if self.store is None:
            return info
        await self.drain()
        await self.store.flush()
        overrides = await self.store.overrides()
        info["orgs"] = [await self.org_row(org, o) for org, o in overrides.items()]
        kinds = {(o.limit.unit, o.limit.period) for o in overrides.values()}
        if self.default is not None:
            kinds.add((self.default.unit, self.default.period))
        spenders = []
        for unit, period in sorted(kinds):
            pid = period_id(period)
            for org, amount in await self.store.top(unit, period, pid, top):
                limit = overrides[org].limit if org in overrides else self.default
                row: dict[str, object] = {"org_key": org, "unit": unit, "period": period, "period_id": pid,
                                          "spent": Limit(1, unit, period).shown(amount)}
                if limit is not None and (limit.unit, limit.period) == (unit, period):
                    row["used"] = round(amount / limit.amount, 4)
                spenders.append(row)
        info["top_spenders"] = spenders
        return info

    async def health(self) -> dict[str, object]:
        """For /ai/router/health: configured or not, where, whether the store answers now and did at
        the last reservation or settlement, what a Redis outage does (the limiter's choice)."""
        return {"enabled": self.enabled, "backend": self.store.backend if self.store is not None else None,
                "default": self.default.describe() if self.default else None, "exhausted": self.exhausted,
                "fail_mode": "open" if self.fail_open else "closed",
                "store_reachable": await self.store.reachable() if self.store is not None else None,
                "last_call_ok": self.store_ok, "store_failures": self.store_failures,
                "settlements_in_flight": len(self._writes),
                "store_traffic": self.store.traffic() if self.store is not None else None}

    def store_failed(self, exc: Exception, op: str) -> None:
        self.store_ok = False
        self.store_failures += 1
        self.metrics.budget_store_errors.labels(op, "fail_open" if self.fail_open else "fail_closed").inc()
        if self.store_warnings.ready(self.clock()):
            log.warning("budget_store_unavailable", op=op, fail_open=self.fail_open,
                        action="admit without a reservation" if self.fail_open else "refuse the call",
                        error=redact(f"{type(exc).__name__}: {exc}")[:200], failures_so_far=self.store_failures)


@dataclass(slots=True)
class Tab:
    """One request's calls: their reservations and bills."""

    budgets: Budgets
    org: str | None
    prompt_upper: int
    prompt_likely: int
    cap: int
    intent: str
    prepaid: Hold | None = None
    refusal: Refusal | None = None  # set once the budget refused: no more calls for this request
    holds: list[Hold] = field(default_factory=list)

    def _worst(self, prices: list[Price | None]) -> tuple[int, int]:
        """The worst case of one call, in nano-USD (-1: a price is unknown) and in tokens."""
        tokens = self.prompt_upper + self.cap
        known = [p for p in prices if p is not None]
        if not known:  # a model without a price: its calls are counted in tokens, not against a USD budget
            return -1, tokens
        return max(p.input * self.prompt_upper + p.output * self.cap for p in known), tokens

    async def prepay(self, models: list[str]) -> Refusal | None:
        """Reserve the first call before anything is sent (at the dearest of ``models``, whichever
        link goes first); a refusal here is the request's 429 or offline answer."""
        if self.org is None:
            return None
        hold = await self._reserve(models)
        if hold is None:
            return self.refusal
        hold.any_model = True
        self.prepaid = hold
        return None

    async def reserve(self, model: str) -> Hold | None:
        """A call's hold, or None when the budget refuses it."""
        if self.prepaid is not None:
            hold, self.prepaid = self.prepaid, None
            return hold
        if self.org is None:
            return Hold(self)
        if self.refusal is not None:
            return None
        return await self._reserve([model])

    async def _reserve(self, models: list[str]) -> Hold | None:
        budgets = self.budgets
        assert self.org is not None and budgets.store is not None
        usd, tokens = self._worst([budgets.price(m) for m in models])
        hold_id = f"{_PREFIX}-{next(_ids):x}"
        if budgets.writing >= budgets.MAX_WRITES:
            await budgets.room()
        try:
            got: Reservation = await budgets.store.reserve(self.org, budgets.default, usd, tokens, hold_id,
                                                           budgets.hold_ms)
        except Exception as exc:  # Redis down or slow: the limiter's choice, said once per 10 s
            budgets.store_failed(exc, "reserve")
            if budgets.fail_open:
                return Hold(self)
            self.refusal = Refusal("budget_unavailable", 1.0)
            budgets.metrics.budget_refusals.labels("budget_unavailable").inc()
            return None
        budgets.store_ok = True
        if got.verdict == "refused" and got.limit is not None:
            self.refusal = Refusal("budget_exhausted", seconds_left(got.limit.period))
            budgets.metrics.budget_refusals.labels("budget_exhausted").inc()
            if got.first_refusal:
                budgets.metrics.budget_crossings.labels("exhausted").inc()
                log.warning("budget_exhausted", org_key=self.org, spent=got.limit.shown(got.spent),
                            reserved=got.limit.shown(got.reserved), **got.limit.describe(),
                            action=budgets.exhausted)
            return None
        if got.verdict == "none":
            self.org = None  # no budget for this org: its other calls need not ask again
        if got.verdict != "reserved":
            return Hold(self, got.limit)
        hold = Hold(self, got.limit, got.amount, got.period_id, hold_id)
        self.holds.append(hold)
        return hold

    def give_back(self, hold: Hold) -> bool:
        """A hold whose call was not made after all (its breaker was open): the first call's is kept
        for the next link (True); any other must be released (`unused`)."""
        if hold.any_model and self.prepaid is None and not hold.settled:
            self.prepaid = hold
            return True
        return hold.amount == 0

    def unused(self, hold: Hold) -> None:
        """Release a hold no call used (in the background: `Budgets.write`)."""
        if not hold.settled:
            hold.settled = True
            self._write(hold, 0)

    def close(self) -> None:
        """Release what no call used (the request ended before its first call, or was answered
        from the cache). Idempotent."""
        if self.prepaid is not None:
            hold, self.prepaid = self.prepaid, None
            self.unused(hold)

    def settle(self, hold: Hold, *, provider: str, model: str, role: str, input_tokens: int | None,
                     cached_tokens: int | None, output_tokens: int | None, received_chars: int, stopped: bool
                     ) -> Bill | None:
        """Settle ``hold`` to the call's usage (see the module docstring); the bill, None when nothing
        is billed. Idempotent: a hold is settled once. The store is written in the background."""
        if hold.settled:
            return None
        hold.settled = True
        estimated = input_tokens is None
        if estimated and not stopped and not received_chars:
            bill = None
        else:
            inp = input_tokens if input_tokens is not None else self.prompt_likely
            out = output_tokens if output_tokens is not None else (received_chars + 3) // 4
            cached = cached_tokens or 0
            price = self.budgets.price(model)
            cost = None if price is None else price.cost(inp, out, cached)
            bill = Bill(provider, model, role, inp, cached, out, cost, estimated)
            self._count(bill)
        actual = 0
        if bill is not None and hold.limit is not None:
            actual = bill.input_tokens + bill.output_tokens if hold.limit.unit == "tokens" else bill.cost or 0
        self._write(hold, actual)
        return bill

    def _write(self, hold: Hold, actual: int) -> None:
        budgets, limit = self.budgets, hold.limit
        if self.org is None or limit is None or budgets.store is None or (not hold.amount and not actual):
            return
        if actual > hold.amount:  # never by construction (estimate.upper_bound); counted if a provider disagrees
            budgets.metrics.budget_overshoot.inc()
        budgets.write(self._settle_store(self.org, hold, limit, actual))

    async def _settle_store(self, org: str, hold: Hold, limit: Limit, actual: int) -> None:
        budgets = self.budgets
        assert budgets.store is not None
        try:
            settled = await budgets.store.settle(org, limit, hold.pid or "", hold.hold_id, hold.amount,
                                                 actual, budgets.soft_permille)
        except Exception as exc:
            budgets.store_failed(exc, "settle")  # its reservation expires by itself; this spend is lost
            return
        budgets.store_ok = True
        if settled.crossed_soft:
            budgets.metrics.budget_crossings.labels("soft").inc()
            log.warning("budget_soft_threshold", org_key=org, spent=limit.shown(settled.spent),
                        threshold=budgets.soft_permille / 1000, **limit.describe())

    def _count(self, bill: Bill) -> None:
        metrics = self.budgets.metrics
        for direction, count in (("input", bill.input_tokens), ("output", bill.output_tokens)):
            if count:
                metrics.provider_tokens.labels(bill.provider, bill.model, self.intent, direction).inc(count)
        if bill.cost:
            metrics.cost_usd.labels(bill.provider, bill.model, self.intent).inc(bill.cost / NANO_PER_USD)
        if bill.estimated:
            metrics.estimated_calls.labels(bill.provider).inc()
