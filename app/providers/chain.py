"""The provider chain: ACTIVE_MODEL first, the other provider second, the offline provider last.

The chain is the one place that decides retries (adapters never retry). Its time policy, for
one request with one hard deadline::

    t = 0                 call the first link; every remote call is streamed, and what the
                          links race for is the first chunk of the answer
    an error              (5xx, reset, 429, 401, malformed) fail over at once to the next link
    + hedge delay         no first chunk yet: hedge, one more call within the hedge budget, to
                          the same provider when it is the faster and not suspect, else the next
                          link (the delay is that provider's own first-token percentile)
    + max hedge delay     still nothing: the call is presumed hung, fail over to the next untried
                          link whatever the budget (the budget caps hedges, never a failover);
                          sooner (twice the hedge's delay) when the hedge went to the same provider
    a first chunk         that call wins; the others are cancelled and their connections closed
    deadline              the calls still running are cancelled (a failure for their breakers)
                          and the offline provider answers

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
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from app.observability.logging import get_logger
from app.observability.metrics import Metrics
from app.providers.base import (
    Generation,
    GenerationRequest,
    Provider,
    ProviderAuthError,
    ProviderError,
    ProviderName,
    ProviderRateLimited,
    ProviderTimeout,
)
from app.providers.hedging import HedgeBudget, HedgeConfig, LatencyNorm
from app.providers.local import LocalProvider
from app.providers.prompts import PROMPT_VERSION
from app.providers.race import LOCAL_RESERVE_SECONDS, Attempt, Race
from app.resilience.breaker import CircuitBreaker
from app.resilience.breaker_store import SharedBreakerStore

log = get_logger()



@dataclass(slots=True)
class Link:
    provider: Provider
    breaker: CircuitBreaker


@dataclass(frozen=True, slots=True)
class LinkFailure:
    provider: str
    reason: str


@dataclass(slots=True)
class Trace:
    """What the chain did for one request, for the response, the log line and the metrics."""

    failures: list[LinkFailure] = field(default_factory=list)
    calls: int = 0  # remote calls started
    hedged: bool = False  # a hedge was started
    provider: str = "local"  # who answered (known after the first chunk)
    input_tokens: int | None = None
    output_tokens: int | None = None

    @property
    def degraded_reason(self) -> str | None:
        return self.failures[0].reason if self.failures else None


@dataclass(slots=True)
class ChainResult:
    generation: Generation
    trace: Trace

    @property
    def failures(self) -> list[LinkFailure]:
        return self.trace.failures

    @property
    def degraded_reason(self) -> str | None:
        return self.trace.degraded_reason


NO_PROVIDER = LinkFailure("none", "no_provider_configured")


class ProviderChain:
    def __init__(self, links: list[Link], metrics: Metrics, *, shared: SharedBreakerStore | None = None,
                 local: LocalProvider | None = None, deadline: float = 8.0,
                 hedge: HedgeConfig | None = None) -> None:
        self.links = links
        self.metrics = metrics
        self.shared = shared
        self.local = local or LocalProvider()
        self.deadline = deadline
        self.hedge = hedge or HedgeConfig()
        self.norms: dict[str, LatencyNorm] = {link.provider.name: LatencyNorm(self.hedge) for link in links}
        self.budget = HedgeBudget(self.hedge)
        self._background: set[asyncio.Task[object]] = set()

    @property
    def names(self) -> list[ProviderName]:
        return [link.provider.name for link in self.links] + [self.local.name]

    def ordered(self, first: str | None) -> list[Link]:
        """The links with ``first`` leading (a runtime ACTIVE_MODEL flip), else as configured."""
        if first is None or not self.links or self.links[0].provider.name == first:
            return self.links
        return sorted(self.links, key=lambda link: link.provider.name != first)

    # --- the two entry points ----------------------------------------------------------------

    async def generate(self, request: GenerationRequest, *, json_mode: bool = False,
                       first: str | None = None) -> ChainResult:
        """The whole answer. Until it is complete nothing reached the client, so a stream that
        breaks after its first chunk still fails over to the next link."""
        deadline = time.monotonic() + self.deadline
        trace = Trace()
        self.budget.request()
        pending = list(self.ordered(first))
        while (won := await self._race(request, json_mode, pending, deadline, trace, streamed=False)) is not None:
            attempt, chunk = won
            parts = [chunk]
            try:
                async with asyncio.timeout(max(0.0, deadline - LOCAL_RESERVE_SECONDS - time.monotonic())):
                    parts.extend([piece async for piece in attempt.stream])
            except ProviderError as exc:
                await self._failed(attempt, exc, trace)
                continue
            except TimeoutError:
                await self._failed(attempt, self._deadline_error(attempt), trace)
                break
            await self._answered(attempt, request, trace)
            generation = Generation("".join(parts), attempt.link.provider.name, attempt.link.provider.model,
                                    trace.input_tokens, trace.output_tokens)
            return ChainResult(generation, trace)
        local = self.local
        generation = await (local.generate_json(request, timeout=1.0) if json_mode
                            else local.generate(request, timeout=1.0))
        self._exhausted(trace)
        return ChainResult(generation, trace)

    async def stream(self, request: GenerationRequest, *, trace: Trace,
                     first: str | None = None) -> AsyncIterator[tuple[str, str]]:
        """Yield (provider, chunk). Races and fails over only before the first chunk; after it,
        the client has seen text, so an error propagates."""
        deadline = time.monotonic() + self.deadline
        self.budget.request()
        won = await self._race(request, False, list(self.ordered(first)), deadline, trace, streamed=True)
        if won is None:
            self._exhausted(trace)
            async for chunk in self.local.stream(request, timeout=1.0):
                yield self.local.name, chunk
            return
        attempt, chunk = won
        name = attempt.link.provider.name
        yield name, chunk
        try:
            async for piece in attempt.stream:
                yield name, piece
        except ProviderError as exc:
            await self._failed(attempt, exc, trace)
            raise
        await self._answered(attempt, request, trace)

    # --- the race ------------------------------------------------------------------------------

    async def _race(self, request: GenerationRequest, json_mode: bool, pending: list[Link], deadline: float,
                    trace: Trace, *, streamed: bool) -> tuple[Attempt, str] | None:
        """Start links from ``pending`` (consumed) until one yields a first chunk, or none can."""
        race = Race(self, request, json_mode, pending, deadline, trace, streamed)
        return await race.run()

    def _hedge_target(self, slow: Link, pending: list[Link], streamed: bool) -> Link | None:
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

    async def _won(self, winner: Attempt, running: dict[asyncio.Task[str], Attempt], trace: Trace) -> None:
        now = time.monotonic()
        first_token = now - winner.started
        # A call that answered is a success however long it took: slowness is what hedges are
        # for. Judged against an old norm, a provider whose latency shifts (every call 2 s, or
        # 300 ms instead of 3) would open its breaker before the norm caught up.
        self.norms[winner.name].first_token(first_token)
        self.metrics.provider_first_token.labels(winner.name).observe(first_token)
        trace.provider = winner.name
        if winner.role == "hedge":
            self.metrics.hedges.labels(winner.name, "won").inc()
        for loser in list(running.values()):
            self._cancel(loser)
            self.metrics.hedges.labels(loser.name, "cancelled").inc()
            if loser.role == "hedge" or now - loser.started < loser.delay:
                continue  # a cancelled hedge, or a call not yet past its norm: nothing against it
            was = loser.link.breaker.state
            loser.link.breaker.record_slow()
            self.norms[loser.name].troubled()
            self.metrics.provider_latency.labels(loser.name, "outrun").observe(now - loser.started)
            if loser.name != winner.name:
                trace.failures.append(LinkFailure(loser.name, "slow"))
            await self._share(loser.link, was)
        running.clear()

    def _cancel(self, attempt: Attempt) -> None:
        """Stop a call: a pending first chunk is cancelled (the stream closes its connection);
        a stream that already yielded is closed in the background."""
        task = attempt.task
        if not task.done():
            task.cancel()
            return
        if task.cancelled() or task.exception() is not None:
            return
        closer = asyncio.ensure_future(self._close(attempt.stream))
        self._background.add(closer)
        closer.add_done_callback(self._background.discard)

    @staticmethod
    async def _close(stream: AsyncIterator[str]) -> None:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):
                await aclose()

    # --- admission and outcomes ------------------------------------------------------------

    async def _next_admitted(self, pending: list[Link], trace: Trace) -> Link | None:
        while pending:
            link = pending.pop(0)
            if await self._admit(link, trace):
                return link
        return None

    async def _admit(self, link: Link, trace: Trace) -> bool:
        """May ``link`` be called now? A refusal is recorded as `circuit_open`."""
        if self.shared is not None and link.breaker.state == "closed":
            held = await self.shared.remaining_open(link.provider.name)
            if held is not None:
                link.breaker.trip(f"shared: {held[1]}", open_for=held[0])
        if link.breaker.allow():
            return True
        trace.failures.append(LinkFailure(link.provider.name, "circuit_open"))
        return False

    def _deadline_error(self, attempt: Attempt) -> ProviderTimeout:
        return ProviderTimeout(attempt.name, f"no answer within the {self.deadline:g}s request deadline "
                                             f"(call ran {time.monotonic() - attempt.started:.2f}s)")

    def _exhausted(self, trace: Trace) -> None:
        trace.provider = self.local.name
        if not trace.failures:
            trace.failures.append(NO_PROVIDER)
        if self.links:
            log.warning("provider_chain_exhausted", model_provider=self.local.name,
                        failures=[f"{f.provider}:{f.reason}" for f in trace.failures])

    async def _answered(self, attempt: Attempt, request: GenerationRequest, trace: Trace) -> None:
        # The successful call is logged on the request's own line (model_provider, provider_ms):
        # a second INFO line per request cost more than the rest of the logging.
        seconds = time.monotonic() - attempt.started
        name, model = attempt.name, attempt.link.provider.model
        self.norms[name].answered(seconds)
        self.metrics.provider_latency.labels(name, "ok").observe(seconds)
        trace.input_tokens, trace.output_tokens = attempt.usage.input_tokens, attempt.usage.output_tokens
        for direction, count in (("input", trace.input_tokens), ("output", trace.output_tokens)):
            if count:
                self.metrics.provider_tokens.labels(name, model, request.intent, direction).inc(count)
        breaker = attempt.link.breaker
        was = breaker.state
        breaker.record_success()
        await self._share(attempt.link, was)

    async def _failed(self, attempt: Attempt, exc: ProviderError, trace: Trace) -> None:
        name, breaker, was = attempt.name, attempt.link.breaker, attempt.link.breaker.state
        seconds = time.monotonic() - attempt.started
        trace.failures.append(LinkFailure(name, exc.reason))
        self.norms[name].troubled()
        self.metrics.provider_latency.labels(name, exc.reason).observe(seconds)
        if isinstance(exc, ProviderRateLimited):
            breaker.record_failure(exc.reason, open_for=exc.retry_after)
        elif isinstance(exc, ProviderAuthError):
            log.error("provider_auth_rejected", model_provider=name,
                      message=f"{name} rejected its API key; provider skipped until the breaker half-opens")
            breaker.record_failure(exc.reason, open_for=breaker.config.open_seconds)
        elif exc.counts_as_failure:
            breaker.record_failure(exc.reason)
        log.warning("provider_call", model_provider=name, model=attempt.link.provider.model, outcome=exc.reason,
                    role=attempt.role, latency_ms=round(seconds * 1000, 1), error=exc.message[:300],
                    prompt_version=PROMPT_VERSION)
        await self._share(attempt.link, was)

    async def _share(self, link: Link, was: str) -> None:
        """Tell the other workers when this one opened or closed the provider's breaker."""
        now = link.breaker.state
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
            "deadline_seconds": self.deadline,
            "percentile": self.hedge.percentile,
            "providers": {name: norm.snapshot() for name, norm in self.norms.items()},
            "budget": self.budget.snapshot(),
        }
