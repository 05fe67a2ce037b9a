"""The provider chain: ACTIVE_MODEL first, the other provider second, the offline provider last.

One retry policy, here: a failed or skipped link moves to the next one (adapters never retry).
Each remote link sits behind its own circuit breaker and gets a slice of the request's
deadline, so a slow primary is abandoned in time for the next link to answer within the SLO.
The offline provider cannot fail, so a request never fails because providers did.
"""

from __future__ import annotations

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
)
from app.providers.local import LocalProvider
from app.providers.prompts import PROMPT_VERSION
from app.resilience.breaker import CircuitBreaker
from app.resilience.breaker_store import SharedBreakerStore

log = get_logger()

# The smallest slice worth giving a remote provider; below it we go straight to the next link.
MIN_CALL_SECONDS = 0.15
# A primary that has not answered by this share of the budget is abandoned for the next link.
PRIMARY_SHARE = 0.6


@dataclass(slots=True)
class Link:
    provider: Provider
    breaker: CircuitBreaker


@dataclass(frozen=True, slots=True)
class LinkFailure:
    provider: str
    reason: str


@dataclass(slots=True)
class ChainResult:
    generation: Generation
    failures: list[LinkFailure] = field(default_factory=list)

    @property
    def degraded_reason(self) -> str | None:
        return self.failures[0].reason if self.failures else None


NO_PROVIDER = LinkFailure("none", "no_provider_configured")


class ProviderChain:
    def __init__(self, links: list[Link], metrics: Metrics, *, shared: SharedBreakerStore | None = None,
                 local: LocalProvider | None = None) -> None:
        self.links = links
        self.metrics = metrics
        self.shared = shared
        self.local = local or LocalProvider()

    @property
    def names(self) -> list[ProviderName]:
        return [link.provider.name for link in self.links] + [self.local.name]

    def ordered(self, first: str | None) -> list[Link]:
        """The links with ``first`` leading (a runtime ACTIVE_MODEL flip), else as configured."""
        if first is None or not self.links or self.links[0].provider.name == first:
            return self.links
        return sorted(self.links, key=lambda link: link.provider.name != first)

    async def _admit(self, link: Link, last: bool, deadline: float) -> tuple[float, str | None]:
        """The time slice for ``link``, or the reason to skip it."""
        remaining = deadline - time.monotonic()
        timeout = remaining if last else remaining * PRIMARY_SHARE
        if timeout < MIN_CALL_SECONDS:
            return timeout, "deadline"
        if self.shared is not None and link.breaker.state == "closed":
            held = await self.shared.remaining_open(link.provider.name)
            if held is not None:
                link.breaker.trip(f"shared: {held[1]}", open_for=held[0])
        return timeout, None if link.breaker.allow() else "circuit_open"

    async def generate(self, request: GenerationRequest, *, budget: float, json_mode: bool = False,
                       first: str | None = None) -> ChainResult:
        deadline = time.monotonic() + budget
        failures: list[LinkFailure] = []
        links = self.ordered(first)
        for index, link in enumerate(links):
            timeout, skip = await self._admit(link, index == len(links) - 1, deadline)
            if skip:
                failures.append(LinkFailure(link.provider.name, skip))
                continue
            started = time.monotonic()
            try:
                if json_mode:
                    generation = await link.provider.generate_json(request, timeout=timeout)
                else:
                    generation = await link.provider.generate(request, timeout=timeout)
            except ProviderError as exc:
                await self._failed(link, exc, time.monotonic() - started)
                failures.append(LinkFailure(link.provider.name, exc.reason))
                continue
            await self._succeeded(link, generation.model, time.monotonic() - started)
            return ChainResult(generation, failures)
        if json_mode:
            generation = await self.local.generate_json(request, timeout=budget)
        else:
            generation = await self.local.generate(request, timeout=budget)
        self._exhausted(failures)
        return ChainResult(generation, failures or [NO_PROVIDER])

    async def stream(self, request: GenerationRequest, *, budget: float, failures: list[LinkFailure],
                     first: str | None = None) -> AsyncIterator[tuple[str, str]]:
        """Yield (provider, chunk). Fails over only before the first chunk; after it, the error propagates."""
        deadline = time.monotonic() + budget
        links = self.ordered(first)
        for index, link in enumerate(links):
            timeout, skip = await self._admit(link, index == len(links) - 1, deadline)
            if skip:
                failures.append(LinkFailure(link.provider.name, skip))
                continue
            started = time.monotonic()
            sent_any = False
            try:
                async for chunk in link.provider.stream(request, timeout=timeout):
                    sent_any = True
                    yield link.provider.name, chunk
            except ProviderError as exc:
                await self._failed(link, exc, time.monotonic() - started)
                if sent_any:
                    raise
                failures.append(LinkFailure(link.provider.name, exc.reason))
                continue
            await self._succeeded(link, link.provider.model, time.monotonic() - started)
            return
        self._exhausted(failures)
        if not failures:
            failures.append(NO_PROVIDER)
        async for chunk in self.local.stream(request, timeout=budget):
            yield self.local.name, chunk

    def _exhausted(self, failures: list[LinkFailure]) -> None:
        if self.links:
            log.warning("provider_chain_exhausted", model_provider=self.local.name,
                        failures=[f"{f.provider}:{f.reason}" for f in failures])

    async def _succeeded(self, link: Link, model: str, seconds: float) -> None:
        # The successful call is logged on the request's own line (model_provider, provider_ms):
        # a second INFO line per request cost more than the rest of the logging.
        was = link.breaker.state
        link.breaker.record_success(seconds)
        self.metrics.provider_latency.labels(link.provider.name, "ok").observe(seconds)
        await self._share(link, was)

    async def _failed(self, link: Link, exc: ProviderError, seconds: float) -> None:
        name, breaker, was = link.provider.name, link.breaker, link.breaker.state
        self.metrics.provider_latency.labels(name, exc.reason).observe(seconds)
        if isinstance(exc, ProviderRateLimited):
            breaker.record_failure(exc.reason, open_for=exc.retry_after)
        elif isinstance(exc, ProviderAuthError):
            log.error("provider_auth_rejected", model_provider=name,
                      message=f"{name} rejected its API key; provider skipped until the breaker half-opens")
            breaker.record_failure(exc.reason, open_for=breaker.config.open_seconds)
        elif exc.counts_as_failure:
            breaker.record_failure(exc.reason)
        log.warning("provider_call", model_provider=name, model=link.provider.model, outcome=exc.reason,
                    latency_ms=round(seconds * 1000, 1), error=exc.message[:300], prompt_version=PROMPT_VERSION)
        await self._share(link, was)

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
