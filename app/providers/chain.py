"""The provider chain: ACTIVE_MODEL first, the other provider second, the offline provider last.

One entry point, `stream`, consumed two ways (httpx's `send(stream=True)`): ``buffered`` collects
each answer whole before yielding it, so a stream that breaks after its first chunk still fails
over (nothing reached the client); unbuffered yields chunks as they come, and after the first one
an error propagates. The race itself is app/providers/race.py, behind the `Referee` seam this
class implements.

The chain is the one place that decides retries (adapters never retry). Its time policy, for
one request with one hard deadline::

    t = 0                 call the first link; every remote call is streamed, and what the
                          links race for is the first chunk of the answer
    an error              (5xx, reset, 429, 401, malformed) fail over at once to the next link
    + hedge delay         no first chunk yet: hedge, one more call within the hedge budget, to
                          the same provider when it is the faster and not suspect, else the next
                          link (the delay is that provider's own first-token percentile)
    + presumed hung       still nothing (4 x the provider's hedge delay, 3 s at least, at most
                          IVY_HEDGE_MAX_DELAY_MS): fail over to the next untried link whatever
                          the budget (the budget caps hedges, never a failover); sooner (twice
                          the hedge's delay) when the hedge went to the same provider
    a first chunk         that call wins; the others are cancelled and their connections closed
    deadline              the calls still running are cancelled (a failure for their breakers)
                          and the offline provider answers; the deadline follows the first
                          provider's own answer times (twice their p99, within its bounds) and
                          bounds the chunks after the first too, but an answer still flowing
                          at its own pace then (`Pace`) runs on to the ceiling,
                          IVY_REQUEST_DEADLINE_MAX_SECONDS

While the worker's event loop is late (app/resilience/load.py) its timings are about the router,
not the provider: no hedge fires (one due is put off by a hedge delay, so a lag spike does not
cost the request its hedge), no call is judged outrun or presumed hung, no sample enters a
provider's norm, and a deadline reached counts nothing against the provider's breaker.

Why race for the first chunk rather than the whole answer: the length of an answer belongs to
the question (a hedge would write as much), the wait before the first token belongs to the
provider (queues, stalls, hangs). Hedging that wait catches a stalled call after about half a
second instead of after the whole answer's time.

Breakers: a call outrun by a hedge counts as slow, never as failed; a hedge cancelled because
the original answered counts as nothing; an error or the deadline counts as a failure; a call
that answered counts as a success, however long it took against its provider's norm. A
provider whose calls are all outrun (a hang) opens on the slow-call rate and is skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine
from typing import Protocol

from app.budget import Budgets, Hold, Tab
from app.observability import tracing
from app.observability.logging import get_logger
from app.observability.metrics import Metrics
from app.providers.base import (
    GenerationRequest,
    ProviderAuthError,
    ProviderError,
    ProviderRateLimited,
    ProviderTimeout,
)
from app.providers.clock import MONOTONIC, Alarm, Clock, Deadline
from app.providers.hedging import HedgeBudget, HedgeConfig, LatencyNorm
from app.providers.links import Link, LinkFailure, Trace
from app.providers.local import LocalProvider
from app.providers.prompts import PROMPT_VERSION
from app.providers.race import Attempt, Race, deadline_error
from app.resilience.breaker_store import SharedBreakerStore
from app.resilience.load import NEVER_LATE, LagSource
from app.vocabulary import ProviderName

log = get_logger()

NO_PROVIDER = LinkFailure("none", "no_provider_configured")
FLOWING_GAPS = 4  # at the deadline, an answer whose last chunk is within this many of its mean gaps flows


def _track(races: list[Race], race: Race) -> Race:
    races.append(race)
    return race


class Counts(Protocol):
    def inc(self, amount: float = 1) -> None: ...


class Pace:
    """An answer's chunks after its first, as they come, for its deadline: an answer still flowing
    when the deadline comes (it has given a chunk after its first, and its last one within
    FLOWING_GAPS of its own mean gap between chunks) runs on to the deadline's ceiling, once; one
    that has stalled, or has given only its first chunk, is cut at the deadline. A stall after that
    is the adapter's (no byte for STREAM_IDLE_SECONDS). A long answer written at its provider's
    steady pace is the question's length, not the provider's fault: cutting it mid-sentence would
    show the rep half an answer and an error, and count a failure against a healthy provider."""

    __slots__ = ("_ceiling", "_clock", "_counted", "_first", "_gaps", "_last")

    def __init__(self, clock: Clock, deadline: Deadline, counted: Counts) -> None:
        self._clock, self._ceiling, self._counted = clock, deadline.ceiling, counted
        self._first = self._last = clock.now()  # the first chunk's arrival
        self._gaps = 0

    def chunk(self) -> None:
        self._last = self._clock.now()
        self._gaps += 1

    def renew(self) -> float | None:
        """At the deadline: the ceiling, for an answer still flowing; None: cut it now."""
        now, ceiling = self._clock.now(), self._ceiling
        if ceiling is None or now >= ceiling or self._gaps == 0:
            return None
        if now - self._last > FLOWING_GAPS * (self._last - self._first) / self._gaps:
            return None
        self._counted.inc()
        self._ceiling = None  # once: at the ceiling it is cut whatever its pace
        return ceiling


class ProviderChain:
    """The links, their norms and the hedge budget; the `Referee` of every race (race.py)."""

    def __init__(self, links: list[Link], metrics: Metrics, *, shared: SharedBreakerStore | None = None,
                 local: LocalProvider | None = None, deadline: float = 8.0,
                 hedge: HedgeConfig | None = None, clock: Clock = MONOTONIC, budgets: Budgets | None = None,
                 deadline_max: float | None = None, lag: LagSource = NEVER_LATE) -> None:
        self.links = links
        self.metrics = metrics
        self.shared = shared
        self.local = local or LocalProvider()
        self.deadline_seconds = deadline  # the least deadline; the norm's, up to deadline_max
        self.deadline_max = deadline if deadline_max is None else max(deadline, deadline_max)
        self.lag = lag
        self.hedge = hedge or HedgeConfig()
        self.clock = clock
        self.budgets = budgets or Budgets.off(metrics)  # a request without a tab is billed, not budgeted
        self.norms: dict[str, LatencyNorm] = {link.provider.name: LatencyNorm(self.hedge) for link in links}
        self.budget = HedgeBudget(self.hedge, clock.now)
        # Each winning call's series, bound once per provider (a labels() call per request costs).
        names = [link.provider.name for link in links]
        self._first_token = {name: metrics.provider_first_token.labels(name) for name in names}
        self._answered_in = {name: metrics.provider_latency.labels(name, "ok") for name in names}
        self._overtime = {name: metrics.overtime.labels(name) for name in names}
        self._background: set[asyncio.Task[object]] = set()

    @property
    def names(self) -> list[ProviderName]:
        return [link.provider.name for link in self.links] + [self.local.name]

    def ordered(self, first: str | None) -> list[Link]:
        """The links with ``first`` leading (a runtime ACTIVE_MODEL flip), else as configured."""
        if first is None or not self.links or self.links[0].provider.name == first:
            return self.links
        return sorted(self.links, key=lambda link: link.provider.name != first)

    def deadline(self, first: str | None = None) -> Deadline:
        """A request's deadline, from now, on the chain's clock: twice the p99 of the first
        provider's answers, within IVY_REQUEST_DEADLINE_SECONDS .. _MAX_SECONDS; before that norm
        is known (256 answers), twice the least (a thinking model's first answers are not cut at 8 s).
        Its ceiling, for an answer still flowing at the deadline (`Pace`), is the MAX."""
        return Deadline.after(self.deadline_for(first), self.clock, ceiling=self.deadline_max)

    def deadline_for(self, first: str | None = None) -> float:
        least, most = self.deadline_seconds, self.deadline_max
        if least >= most or not self.links:
            return least
        lead = self.ordered(first)[0].provider.name
        p99 = self.norms[lead].answer_p99()
        return min(most, 2 * least if p99 is None else max(least, 2 * p99))

    # --- the one entry point -------------------------------------------------------------------

    async def stream(self, request: GenerationRequest, *, deadline: Deadline, trace: Trace,
                     first: str | None = None, json_mode: bool = False, buffered: bool = False,
                     tab: Tab | None = None) -> AsyncIterator[str]:
        """The answer's text; ``trace`` says who answered and how. Buffered: one piece, the whole
        answer (a broken stream fails over); unbuffered: chunks as they come (after the first,
        an error or the deadline raises a ProviderError). The offline provider answers when no
        remote call can, in one piece. Every call is settled against ``tab`` at its outcome (a
        request left half-way settles what it started, by estimate). One generator, the rounds
        and the chunks after the first: each layer more is two resumes per chunk."""
        tab = tab or self.budgets.tab(None, request.system, request.prompt, request.max_output_tokens,
                                      request.intent)
        races: list[Race] = []  # this request's rounds (at most one per link)
        try:
            self.budget.request()
            pending = list(self.ordered(first))
            while (won := await _track(races, Race(self, request, pending, deadline, trace, tab, json_mode=json_mode,
                                                   streamed=not buffered)).run()) is not None:
                attempt, chunk = won
                pace = Pace(self.clock, deadline, self._overtime[attempt.name])
                stream, alarm = attempt.stream, Alarm(deadline, pace.renew)
                if buffered:
                    parts = [chunk]
                    try:
                        while True:
                            try:
                                parts.append(await alarm.wait(anext(stream)))
                            except StopAsyncIteration:
                                break
                            pace.chunk()
                    except ProviderError as exc:
                        await self.failed(attempt, exc, trace)
                        continue
                    except TimeoutError:
                        await self.failed(attempt, deadline_error(attempt, self.clock.now()), trace)
                        break
                    except asyncio.CancelledError:
                        attempt.end("cancelled")  # the request was cancelled mid-answer
                        raise
                    finally:
                        alarm.close()
                    await self.answered(attempt, request, trace)
                    yield "".join(parts)
                    return
                yield chunk
                whole = False
                try:  # the chunks after the first, each within the deadline (or its overtime)
                    while True:
                        try:
                            piece = await alarm.wait(anext(stream))
                        except StopAsyncIteration:
                            whole = True  # `answered` records it
                            break
                        except TimeoutError:
                            late = deadline_error(attempt, self.clock.now())
                            await self.failed(attempt, late, trace)
                            raise late from None
                        except ProviderError as error:
                            await self.failed(attempt, error, trace)
                            raise
                        pace.chunk()
                        yield piece
                finally:
                    alarm.close()
                    await self._close(stream)  # the client went away mid-answer: close the connection now
                    if not whole:
                        attempt.end("cancelled")  # nothing if `failed` ended it first
                    with contextlib.suppress(Exception):
                        self.settle(attempt, trace, stopped=True)  # a no-op once answered or failed settled it
                await self.answered(attempt, request, trace)
                return
            self.exhausted(trace)
            yield self.local.answer(request, json_mode=json_mode)
        finally:
            self._settle_left(races[-1] if races else None, trace, tab)

    def _settle_left(self, race: Race | None, trace: Trace, tab: Tab) -> None:
        """The request went away mid-race or mid-answer: bill what its calls consumed and release
        what they did not. No await: a request cancelled by its client's leaving (anyio cancels
        every await of a cancelled scope) still settles, at once (the writes are Budgets' tasks)."""
        with contextlib.suppress(Exception):
            for attempt in list(race.running.values()) if race is not None else []:
                attempt.task.cancel()
                self.settle(attempt, trace, stopped=True)
            if race is not None and race.winner is not None:
                self.settle(race.winner, trace, stopped=True)
        tab.close()

    # --- the Referee (app/providers/race.py) ---------------------------------------------------

    @property
    def hedging(self) -> bool:
        return self.hedge.enabled

    @property
    def late(self) -> bool:
        """The event loop is late now: timings are the router's, not the providers'."""
        return self.lag.late_since(self.clock.now())

    def presumed_hung(self, link: Link) -> float:
        return self.norms[link.provider.name].presumed_hung()

    async def reserve(self, link: Link, tab: Tab | None, trace: Trace) -> Hold | None:
        tab = tab or self.budgets.tab(None, "", "", 0, "none")  # a race run on its own (tests)
        hold = await tab.reserve(link.provider.model)
        if hold is None:
            reason = tab.refusal.reason if tab.refusal is not None else "budget_exhausted"
            trace.failures.append(LinkFailure(link.provider.name, reason))
        return hold

    def release(self, hold: Hold) -> None:
        if not hold.tab.give_back(hold):
            hold.tab.unused(hold)

    def settle(self, attempt: Attempt, trace: Trace, *, stopped: bool) -> None:
        """Settle a call's reservation to its usage; its bill goes on the trace at once, the store
        is written in the background (app/budget/ledger.py)."""
        usage, link = attempt.usage, attempt.link
        bill = attempt.hold.tab.settle(
            attempt.hold, provider=attempt.name, model=link.provider.model, role=attempt.role,
            input_tokens=usage.input_tokens, cached_tokens=usage.cached_input_tokens,
            output_tokens=usage.output_tokens, received_chars=usage.received_chars, stopped=stopped)
        if bill is not None:
            trace.bills.append(bill)

    def hedge_delay(self, link: Link) -> float:
        return self.norms[link.provider.name].hedge_delay()

    def may_hedge(self) -> bool:
        return self.budget.allows()

    def spend_hedge(self) -> bool:
        return self.budget.try_spend()

    def hedged(self, attempt: Attempt) -> None:
        self.metrics.hedges.labels(attempt.name, "fired").inc()

    def deferred(self, slow: Attempt) -> None:
        self.metrics.hedges.labels(slow.name, "deferred").inc()

    def hedge_target(self, slow: Link, pending: list[Link], streamed: bool) -> Link | None:
        """The same provider when its norm is known, it is not suspect and it is the faster;
        else the next link."""
        norm = self.norms[slow.provider.name]
        other = next((link for link in pending if link.breaker.current_state() != "open"), None)
        same_ok = norm.known and not norm.suspect and slow.breaker.current_state() == "closed"
        if not same_ok:
            return other
        if other is None:
            return slow
        mine, theirs = norm.expected(streamed), self.norms[other.provider.name].expected(streamed)
        return other if theirs is not None and mine is not None and theirs < mine else slow

    async def admit(self, link: Link, trace: Trace) -> int | None:
        """May ``link`` be called now? Its breaker generation, or None, recorded as `circuit_open`."""
        if self.shared is not None and link.breaker.state == "closed":
            held = await self.shared.remaining_open(link.provider.name)
            if held is not None:
                link.breaker.trip(f"shared: {held[1]}", open_for=held[0])
        generation = link.breaker.allow()
        if generation is None:
            trace.failures.append(LinkFailure(link.provider.name, "circuit_open"))
            tracing.add_event("ivy.provider_skipped", **{"ivy.provider": link.provider.name,
                                                         "ivy.reason": "circuit_open"})
        return generation

    async def won(self, winner: Attempt, losers: list[Attempt], trace: Trace) -> None:
        now = self.clock.now()
        first_token = now - winner.started
        # A call that answered is a success however long it took: slowness is what hedges are
        # for. Judged against an old norm, a provider whose latency shifts (every call 2 s, or
        # 300 ms instead of 3) would open its breaker before the norm caught up.
        if not self.lag.late_since(winner.started):  # a late loop's first token says nothing of the provider
            self.norms[winner.name].first_token(first_token)
        winner.span.add_event("ivy.first_token", {"ivy.first_token_ms": round(first_token * 1000, 3)})
        self._first_token[winner.name].observe(first_token)
        trace.provider, trace.model = winner.name, winner.link.provider.model
        if winner.role == "hedge":
            self.metrics.hedges.labels(winner.name, "won").inc()
        for loser in losers:
            self.metrics.hedges.labels(loser.name, "cancelled").inc()
            self.settle(loser, trace, stopped=True)
            breaker = loser.link.breaker
            if loser.role == "hedge" or now - loser.started < loser.delay or self.lag.late_since(loser.started):
                # A cancelled hedge, a call not yet past its norm, or one timed by a late loop.
                breaker.release(loser.generation)
                loser.end("cancelled")
                continue
            loser.end("outrun")
            was = breaker.state
            if self.norms[loser.name].known:
                breaker.record_slow(loser.generation)
                self.norms[loser.name].troubled()
            else:  # slow for this request, but no norm yet to be slow against (a thinking model's cold start)
                breaker.release(loser.generation)
            self.metrics.provider_latency.labels(loser.name, "outrun").observe(now - loser.started)
            if loser.name != winner.name:
                trace.failures.append(LinkFailure(loser.name, "slow"))
            await self._share(loser.link, was)

    async def failed(self, attempt: Attempt, exc: ProviderError, trace: Trace) -> None:
        name, breaker, was = attempt.name, attempt.link.breaker, attempt.link.breaker.state
        seconds = self.clock.now() - attempt.started
        self.settle(attempt, trace, stopped=isinstance(exc, ProviderTimeout))
        trace.failures.append(LinkFailure(name, exc.reason))
        attempt.end("failed", exc)
        self.metrics.provider_latency.labels(name, exc.reason).observe(seconds)
        # Out of time on a late loop: no evidence about the provider.
        excused = isinstance(exc, ProviderTimeout) and self.lag.late_since(attempt.started)
        if excused:
            breaker.release(attempt.generation)
        elif isinstance(exc, ProviderRateLimited):
            breaker.record_failure(attempt.generation, exc.reason, open_for=exc.retry_after)
        elif isinstance(exc, ProviderAuthError):
            log.error("provider_auth_rejected", model_provider=name,
                      message=f"{name} rejected its API key; provider skipped until the breaker half-opens")
            breaker.record_failure(attempt.generation, exc.reason, open_for=breaker.config.open_seconds)
        elif exc.counts_as_failure:
            breaker.record_failure(attempt.generation, exc.reason)
        else:
            breaker.release(attempt.generation)
        if not excused:
            self.norms[name].troubled()
        log.warning("provider_call", model_provider=name, model=attempt.link.provider.model, outcome=exc.reason,
                    role=attempt.role, latency_ms=round(seconds * 1000, 1), error=exc.message[:300],
                    prompt_version=PROMPT_VERSION)
        await self._share(attempt.link, was)

    def discard(self, stream: AsyncIterator[str]) -> None:
        self._in_background(self._close(stream))

    def _in_background(self, work: Coroutine[object, object, None]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- outcomes after the race ---------------------------------------------------------------

    async def answered(self, attempt: Attempt, request: GenerationRequest, trace: Trace) -> None:
        # The successful call is logged on the request's own line (model_provider, provider_ms):
        # a second INFO line per request cost more than the rest of the logging.
        seconds = self.clock.now() - attempt.started
        name = attempt.name
        if not self.lag.late_since(attempt.started):
            self.norms[name].answered(seconds)
        self._answered_in[name].observe(seconds)
        trace.input_tokens, trace.output_tokens = attempt.usage.input_tokens, attempt.usage.output_tokens
        self.settle(attempt, trace, stopped=False)  # its tokens and cost are counted there, per call
        attempt.end("won")
        breaker = attempt.link.breaker
        was = breaker.state
        breaker.record_success(attempt.generation)
        await self._share(attempt.link, was)

    def exhausted(self, trace: Trace) -> None:
        """No remote call answered: the offline provider does, the explicit last resort."""
        trace.provider, trace.model = self.local.name, self.local.model
        if not trace.failures:
            trace.failures.append(NO_PROVIDER)
        tracing.add_event("ivy.fallback", **{"ivy.provider": self.local.name, "ivy.reason": trace.failures[0].reason})
        if self.links:
            log.warning("provider_chain_exhausted", model_provider=self.local.name,
                        failures=[f"{f.provider}:{f.reason}" for f in trace.failures])

    @staticmethod
    async def _close(stream: AsyncIterator[str]) -> None:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):
                await aclose()

    async def _share(self, link: Link, was: str) -> None:
        """Tell the other workers when this one opened or closed the provider's breaker."""
        now = link.breaker.state
        if now != was:
            tracing.add_event("ivy.breaker", **{"ivy.provider": link.provider.name, "ivy.breaker.from": was,
                                                "ivy.breaker.to": now})
        if self.shared is None or now == was:
            return
        if now == "open":
            await self.shared.publish_open(link.provider.name, link.breaker.seconds_until_retry(),
                                           link.breaker.reason or "")
        elif now == "closed":
            await self.shared.publish_closed(link.provider.name)

    async def aclose(self) -> None:
        """Wait for the streams being closed in the background (at shutdown)."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    def snapshot(self) -> dict[str, object]:
        """Each provider's norm and hedge delay, and the hedge budget, for /ai/router/health."""
        return {
            "enabled": self.hedge.enabled,
            "deadline_seconds": round(self.deadline_for(), 2),
            "deadline_bounds_seconds": [self.deadline_seconds, self.deadline_max],
            "percentile": self.hedge.percentile,
            "providers": {name: norm.snapshot() for name, norm in self.norms.items()},
            "budget": self.budget.snapshot(),
        }
