"""One request's race for a first chunk: the attempts in flight, the hedge and failover timers,
and the deadline (the timeline is drawn in chain.py's docstring). The chain owns the policy's
state (norms, budget, breakers); a `Race` lives for one request."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from app.providers.base import GenerationRequest, ProviderError, ProviderMalformedOutput, ProviderUnavailable, Usage

if TYPE_CHECKING:
    from app.providers.chain import Link, ProviderChain, Trace

# The offline provider answers in microseconds; this much of the deadline is kept for it.
LOCAL_RESERVE_SECONDS = 0.05
# At most this many calls of one request in flight at once (the first, a hedge, a failover).
MAX_IN_FLIGHT = 3


@dataclass(slots=True, eq=False)
class Attempt:
    link: Link
    role: str  # first | hedge | failover
    started: float
    delay: float  # the provider's hedge delay when this call started
    usage: Usage
    stream: AsyncIterator[str]
    task: asyncio.Task[str]

    @property
    def name(self) -> str:
        return self.link.provider.name


async def first_chunk(stream: AsyncIterator[str]) -> str:
    try:
        return await anext(stream)
    except StopAsyncIteration:
        raise ProviderMalformedOutput("stream", "stream ended without a chunk") from None


class Race:
    """One request's race for a first chunk (see the module docstring for the timeline)."""

    def __init__(self, chain: ProviderChain, request: GenerationRequest, json_mode: bool, pending: list[Link],
                 deadline: float, trace: Trace, streamed: bool) -> None:
        self.chain, self.request, self.json_mode, self.pending = chain, request, json_mode, pending
        self.calls_end = deadline - LOCAL_RESERVE_SECONDS
        self.trace, self.streamed = trace, streamed
        self.running: dict[asyncio.Task[str], Attempt] = {}
        self.hedge_at: float | None = None  # when to hedge `hedge_for` (once per request)
        self.hedge_for: Attempt | None = None
        self.failover_at: float | None = None  # when to presume the calls in flight hung

    async def start(self, role: str, link: Link | None = None) -> Attempt | None:
        chain = self.chain
        link = link or await chain._next_admitted(self.pending, self.trace)
        if link is None:
            return None
        now = time.monotonic()
        usage = Usage()
        stream = link.provider.stream(self.request, timeout=max(0.01, self.calls_end - now),
                                      json_mode=self.json_mode, usage=usage)
        attempt = Attempt(link, role, now, chain.norms[link.provider.name].hedge_delay(), usage, stream,
                           asyncio.ensure_future(first_chunk(stream)))
        self.running[attempt.task] = attempt
        self.trace.calls += 1
        if chain.hedge.enabled:
            if role != "hedge" and not self.trace.hedged:
                self.hedge_at, self.hedge_for = now + attempt.delay, attempt
            if role != "hedge":
                self.failover_at = now + chain.hedge.max_delay
        return attempt

    async def run(self) -> tuple[Attempt, str] | None:
        chain, running = self.chain, self.running
        if await self.start("first") is None:
            return None
        while running:
            now = time.monotonic()
            if now >= self.calls_end:
                for attempt in list(running.values()):
                    chain._cancel(attempt)
                    await chain._failed(attempt, chain._deadline_error(attempt), self.trace)
                running.clear()
                return None
            wake = min(t for t in (self.calls_end, self.hedge_at, self.failover_at) if t is not None)
            done, _ = await asyncio.wait(running, timeout=max(0.0, wake - now), return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                attempt = running.pop(task)
                exc = task.exception()
                if exc is None:
                    await chain._won(attempt, running, self.trace)
                    return attempt, task.result()
                await chain._failed(attempt, as_provider_error(attempt.name, exc), self.trace)
            if not running:
                await self.start("failover")  # an error fails over at once, budget or not
                continue
            now = time.monotonic()
            if self.hedge_at is not None and now >= self.hedge_at:
                self.hedge_at = None
                if self.hedge_for is not None and self.hedge_for in running.values():
                    await self.hedge(self.hedge_for)
            elif self.failover_at is not None and now >= self.failover_at:
                self.failover_at = None
                if len(running) < MAX_IN_FLIGHT:
                    await self.start("failover")
        return None

    async def hedge(self, slow: Attempt) -> bool:
        """Hedge ``slow``: one more call, onto its provider or the next link, within the budget."""
        chain = self.chain
        target = chain._hedge_target(slow.link, self.pending, self.streamed)
        if target is None or not chain.budget.try_spend():
            return False
        if target is not slow.link:
            self.pending.remove(target)
            if not await chain._admit(target, self.trace):
                return False
        attempt = await self.start("hedge", target)
        if attempt is None:
            return False
        self.trace.hedged = True
        chain.metrics.hedges.labels(attempt.name, "fired").inc()
        if target is slow.link and self.failover_at is not None:
            # Two calls to one provider with no token (a hang starting, or a double stall): fail over
            # once the hedge has waited twice its delay (about p99.99 of a healthy first token, so
            # only stalled hedges trigger it), not at the max hedge delay.
            self.failover_at = min(self.failover_at, attempt.started + 2 * attempt.delay)
        return True


def as_provider_error(name: str, exc: BaseException) -> ProviderError:
    if isinstance(exc, ProviderMalformedOutput) and exc.provider == "stream":
        return ProviderMalformedOutput(name, exc.message)
    if isinstance(exc, ProviderError):
        return exc
    return ProviderUnavailable(name, f"{type(exc).__name__}: {exc}")
