"""One request's race for a first chunk: the attempts in flight, the hedge and failover timers,
and the deadline (the timeline is drawn in chain.py's docstring).

The race decides *when*; its `Referee` (the chain, through this small public seam) decides *who*
may be called and what each outcome means (norms, budget, breakers, metrics). Time is the
referee's `Clock`, so a test drives a race with a scripted provider and a fake clock
(tests/providers/test_race.py). A `Race` lives for one request.

Traced, each attempt is a CLIENT span named and attributed by the OpenTelemetry GenAI semantic
conventions ("chat {model}", gen_ai.*), opened here as the call starts (current in the call's
task, a child of whatever is current: the generate stage) and ended, with its role and outcome,
where the referee learns how it ended (`Attempt.end`); no prompt or answer text, ever.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal, Protocol

from app.budget import Hold, Tab
from app.observability import tracing
from app.providers.base import (
    GenerationRequest,
    ProviderError,
    ProviderMalformedOutput,
    ProviderTimeout,
    ProviderUnavailable,
    Usage,
)
from app.providers.clock import Clock, Deadline
from app.providers.links import Link, Trace
from app.vocabulary import GEN_AI_PROVIDER, ProviderName

# At most this many calls of one request in flight at once (the first, a hedge, a failover).
MAX_IN_FLIGHT = 3

Role = Literal["first", "hedge", "failover"]
# won: answered; outrun: a hedge answered first and this call was slow; cancelled: stopped with
# no fault of its own (the other answered first, the client went away); failed: an error;
# deadline: still running at the request's deadline.
Outcome = Literal["won", "outrun", "cancelled", "failed", "deadline"]


@dataclass(slots=True, eq=False)
class Attempt:
    link: Link
    generation: int  # the breaker's generation when the call was admitted
    role: Role
    started: float
    delay: float  # the provider's hedge delay when this call started
    usage: Usage
    stream: AsyncIterator[str]
    task: asyncio.Task[str]
    hold: Hold  # its budget reservation, settled at its outcome (app/budget/ledger.py)
    span: tracing.AnySpan = tracing.NO_SPAN
    deadline: Deadline | None = None  # the request's: a failure at or past it is the deadline's

    @property
    def name(self) -> ProviderName:
        return self.link.provider.name

    def end(self, outcome: Outcome, error: ProviderError | None = None) -> None:
        """End the attempt's span with its outcome; the first outcome stands (an ended span no
        longer records)."""
        span = self.span
        if not span.is_recording():
            return
        if outcome == "failed" and self.deadline is not None and self.deadline.expired:
            outcome = "deadline"
        usage = self.usage
        attributes: dict[str, tracing.Attribute] = {"ivy.attempt.outcome": outcome}
        if outcome == "won":
            attributes["gen_ai.response.model"] = usage.model or self.link.provider.model
            if usage.finish_reason is not None:
                attributes["gen_ai.response.finish_reasons"] = (usage.finish_reason,)
            for key, count in (("gen_ai.usage.input_tokens", usage.input_tokens),
                               ("gen_ai.usage.output_tokens", usage.output_tokens)):
                if count is not None:
                    attributes[key] = count
        if error is not None:  # its reason tag, never its message (it may quote the answer)
            span.set_error(error.reason)
        span.set_attributes(attributes)
        span.end()


class Referee(Protocol):
    """What a race asks of the chain (ProviderChain implements it)."""

    clock: Clock

    @property
    def hedging(self) -> bool: ...

    @property
    def late(self) -> bool:
        """The event loop is late now (no hedge fires, no call is presumed hung)."""
        ...

    def presumed_hung(self, link: Link) -> float:
        """How long a call to ``link`` may go without a first chunk before it is presumed hung."""
        ...

    async def admit(self, link: Link, trace: Trace) -> int | None:
        """The breaker generation ``link`` is admitted in, or None (recorded as circuit_open)."""
        ...

    async def reserve(self, link: Link, tab: Tab | None, trace: Trace) -> Hold | None:
        """The call's budget reservation (``tab`` None: billed, not budgeted), or None: the org's
        budget refused it (recorded as budget_exhausted)."""
        ...

    def release(self, hold: Hold) -> None:
        """A reservation whose call was not made (its breaker refused)."""
        ...

    def hedge_delay(self, link: Link) -> float: ...

    def hedge_target(self, slow: Link, pending: list[Link], streamed: bool) -> Link | None: ...

    def may_hedge(self) -> bool:
        """Would the hedge budget allow one more hedge now (nothing taken)?"""
        ...

    def spend_hedge(self) -> bool:
        """Take one hedge from the budget, or False."""
        ...

    def hedged(self, attempt: Attempt) -> None: ...

    def deferred(self, slow: Attempt) -> None:
        """``slow``'s hedge was due while the loop was late: it is looked at again one hedge delay later."""
        ...

    async def won(self, winner: Attempt, losers: list[Attempt], trace: Trace) -> None:
        """``winner`` yielded the first chunk; ``losers`` were cancelled."""
        ...

    async def failed(self, attempt: Attempt, exc: ProviderError, trace: Trace) -> None: ...

    def discard(self, stream: AsyncIterator[str]) -> None:
        """Close a stream that already yielded, off the request path."""
        ...


async def first_chunk(stream: AsyncIterator[str]) -> str:
    try:
        return await anext(stream)
    except StopAsyncIteration:
        raise ProviderMalformedOutput("stream", "stream ended without a chunk") from None


def deadline_error(attempt: Attempt, now: float) -> ProviderTimeout:
    return ProviderTimeout(attempt.name,
                           f"no answer within the request deadline (call ran {now - attempt.started:.2f}s)")


class Race:
    """One request's race for a first chunk (see the module docstring)."""

    def __init__(self, referee: Referee, request: GenerationRequest, pending: list[Link], deadline: Deadline,
                 trace: Trace, tab: Tab | None = None, *, json_mode: bool = False, streamed: bool = True) -> None:
        self.referee, self.clock, self.request, self.pending, self.tab = referee, referee.clock, request, pending, tab
        self.deadline, self.trace, self.json_mode, self.streamed = deadline, trace, json_mode, streamed
        self.running: dict[asyncio.Task[str], Attempt] = {}
        self.hedge_at: float | None = None  # when to hedge `hedge_for` (once per request)
        self.hedge_for: Attempt | None = None
        self.failover_at: float | None = None  # when to presume the calls in flight hung
        self.winner: Attempt | None = None

    async def next_admitted(self) -> tuple[Link, int, Hold] | None:
        while self.pending:
            link = self.pending.pop(0)
            if (hold := await self.referee.reserve(link, self.tab, self.trace)) is None:
                continue
            if (generation := await self.referee.admit(link, self.trace)) is not None:
                return link, generation, hold
            self.referee.release(hold)
        return None

    def start(self, role: Role, link: Link, generation: int, hold: Hold) -> Attempt:
        now = self.clock.now()
        usage = Usage()
        model = link.provider.model
        span = tracing.start_span(f"chat {model}", kind=tracing.CLIENT, **{
            "gen_ai.operation.name": "chat", "gen_ai.provider.name": GEN_AI_PROVIDER.get(link.provider.name),
            "gen_ai.request.model": model, "gen_ai.request.max_tokens": self.request.max_output_tokens,
            "ivy.attempt.role": role}) if tracing.on() else tracing.NO_SPAN
        stream = link.provider.stream(self.request, deadline=self.deadline, json_mode=self.json_mode, usage=usage)
        attempt = Attempt(link, generation, role, now, self.referee.hedge_delay(link), usage, stream,
                          tracing.start_task(span, first_chunk(stream)), hold, span, self.deadline)
        self.running[attempt.task] = attempt
        self.trace.calls += 1
        if self.referee.hedging and role != "hedge":
            if not self.trace.hedged:
                self.hedge_at, self.hedge_for = now + attempt.delay, attempt
            self.failover_at = now + self.referee.presumed_hung(link)
        return attempt

    async def start_next(self, role: Role) -> Attempt | None:
        admitted = await self.next_admitted()
        return None if admitted is None else self.start(role, *admitted)

    async def run(self) -> tuple[Attempt, str] | None:
        """The attempt that yielded a first chunk, and the chunk; None when no call can. Cancelled
        (the client went away), it stops the calls still running."""
        try:
            return await self._race()
        except asyncio.CancelledError:
            for attempt in self.running.values():
                self.cancel(attempt)
                attempt.end("cancelled")
            raise

    async def _race(self) -> tuple[Attempt, str] | None:
        referee, running = self.referee, self.running
        if await self.start_next("first") is None:
            return None
        while running:
            if self.deadline.expired:
                now = self.clock.now()
                for attempt in list(running.values()):
                    attempt.task.cancel()
                    await referee.failed(attempt, deadline_error(attempt, now), self.trace)
                running.clear()
                return None
            wake = min(t for t in (self.deadline.at, self.hedge_at, self.failover_at) if t is not None)
            done = await self.clock.wait(list(running), wake)
            for task in done:
                attempt = running.pop(task)
                exc = task.exception()
                if exc is None:
                    losers = list(running.values())
                    for loser in losers:
                        self.cancel(loser)
                    running.clear()
                    self.winner = attempt
                    await referee.won(attempt, losers, self.trace)
                    return attempt, task.result()
                await referee.failed(attempt, as_provider_error(attempt.name, exc), self.trace)
            if not running:
                await self.start_next("failover")  # an error fails over at once, budget or not
                continue
            now = self.clock.now()
            if self.hedge_at is not None and now >= self.hedge_at:
                self.hedge_at = None
                slow = self.hedge_for
                if slow is not None and slow in running.values():
                    if referee.late:  # put off, not dropped: a lag spike must not cost the request its hedge
                        self.hedge_at = now + slow.delay
                        referee.deferred(slow)
                    else:
                        await self.hedge(slow)
            elif self.failover_at is not None and now >= self.failover_at:
                self.failover_at = None
                if referee.late:  # the wait is the router's: look again once it has had as long again
                    self.failover_at = now + referee.presumed_hung(next(iter(running.values())).link)
                elif len(running) < MAX_IN_FLIGHT:
                    await self.start_next("failover")
        return None

    def cancel(self, attempt: Attempt) -> None:
        """Stop a call: a pending first chunk is cancelled (the stream closes its connection);
        a stream that already yielded is closed by the referee, in the background."""
        task = attempt.task
        if not task.done():
            task.cancel()
        elif not task.cancelled() and task.exception() is None:
            self.referee.discard(attempt.stream)

    async def hedge(self, slow: Attempt) -> bool:
        """Hedge ``slow``: one more call, onto its provider or the next link, within the budget."""
        referee = self.referee
        target = referee.hedge_target(slow.link, self.pending, self.streamed)
        if target is None or not referee.may_hedge():
            return False
        # The org's budget before the hedge budget: a hedge the org's budget refuses takes no hedge
        # (another request's), and one the hedge budget refuses meanwhile gives its hold back.
        hold = await referee.reserve(target, self.tab, self.trace)
        if hold is None:
            return False
        if not referee.spend_hedge():
            referee.release(hold)
            return False
        generation = slow.generation  # the same provider: admitted already (its breaker is closed)
        if target is not slow.link:
            self.pending.remove(target)
            admitted = await referee.admit(target, self.trace)
            if admitted is None:
                referee.release(hold)
                return False
            generation = admitted
        attempt = self.start("hedge", target, generation, hold)
        self.trace.hedged = True
        referee.hedged(attempt)
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
