"""The provider chain: ACTIVE_MODEL first, the other provider second, the offline provider last.

One retry policy, here: a failed or skipped link moves to the next one. Each remote link
sits behind its own circuit breaker and gets a slice of the request's deadline, so a slow
primary is abandoned in time for the next link to answer within the SLO.
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

log = get_logger()

# The smallest slice worth giving a remote provider; below it we go straight to the next link.
MIN_CALL_SECONDS = 0.15


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


class ProviderChain:
    def __init__(self, links: list[Link], metrics: Metrics, local: LocalProvider | None = None) -> None:
        self.links = links
        self.local = local or LocalProvider()
        self.metrics = metrics

    @property
    def names(self) -> list[ProviderName]:
        return [link.provider.name for link in self.links] + [self.local.name]

    def _slice(self, index: int, deadline: float) -> float:
        """Time for link ``index``: all that is left if it is the last remote link, else 60%."""
        remaining = deadline - time.monotonic()
        later_remote = len(self.links) - index - 1
        return remaining if later_remote == 0 else remaining * 0.6

    async def generate(self, request: GenerationRequest, *, budget: float, json_mode: bool = False) -> ChainResult:
        deadline = time.monotonic() + budget
        failures: list[LinkFailure] = []
        for index, link in enumerate(self.links):
            name = link.provider.name
            timeout = self._slice(index, deadline)
            if timeout < MIN_CALL_SECONDS:
                failures.append(LinkFailure(name, "deadline"))
                continue
            if not link.breaker.allow():
                failures.append(LinkFailure(name, "circuit_open"))
                continue
            started = time.monotonic()
            try:
                if json_mode:
                    generation = await link.provider.generate_json(request, timeout=timeout)
                else:
                    generation = await link.provider.generate(request, timeout=timeout)
            except ProviderError as exc:
                self._record_failure(link, exc, time.monotonic() - started)
                failures.append(LinkFailure(name, exc.reason))
                continue
            self._record_success(link, generation, time.monotonic() - started)
            return ChainResult(generation, failures)
        if json_mode:
            generation = await self.local.generate_json(request, timeout=budget)
        else:
            generation = await self.local.generate(request, timeout=budget)
        if self.links:
            log.warning("provider_chain_exhausted", model_provider="local",
                        failures=[f"{f.provider}:{f.reason}" for f in failures])
        return ChainResult(generation, failures or [LinkFailure("none", "no_provider_configured")])

    async def stream(self, request: GenerationRequest, *, budget: float, failures: list[LinkFailure]
                     ) -> AsyncIterator[tuple[str, str]]:
        """Yield (provider, chunk). Fails over only before the first chunk; after it, errors propagate."""
        deadline = time.monotonic() + budget
        for index, link in enumerate(self.links):
            name = link.provider.name
            timeout = self._slice(index, deadline)
            if timeout < MIN_CALL_SECONDS or not link.breaker.allow():
                failures.append(LinkFailure(name, "deadline" if timeout < MIN_CALL_SECONDS else "circuit_open"))
                continue
            started = time.monotonic()
            first = True
            try:
                async for chunk in link.provider.stream(request, timeout=timeout):
                    first = False
                    yield name, chunk
            except ProviderError as exc:
                self._record_failure(link, exc, time.monotonic() - started)
                if not first:
                    raise
                failures.append(LinkFailure(name, exc.reason))
                continue
            self._record_success(link, Generation("", name, link.provider.model), time.monotonic() - started)
            return
        if not failures:
            failures.append(LinkFailure("none", "no_provider_configured"))
        async for chunk in self.local.stream(request, timeout=budget):
            yield self.local.name, chunk

    def _record_success(self, link: Link, generation: Generation, seconds: float) -> None:
        link.breaker.record_success(seconds)
        self.metrics.provider_latency.labels(link.provider.name, "ok").observe(seconds)
        log.info("provider_call", model_provider=link.provider.name, model=generation.model, outcome="ok",
                 latency_ms=round(seconds * 1000, 1), prompt_version=PROMPT_VERSION)

    def _record_failure(self, link: Link, exc: ProviderError, seconds: float) -> None:
        name = link.provider.name
        self.metrics.provider_latency.labels(name, exc.reason).observe(seconds)
        if isinstance(exc, ProviderRateLimited):
            link.breaker.record_failure(exc.reason, open_for=exc.retry_after)
        elif isinstance(exc, ProviderAuthError):
            log.error("provider_auth_rejected", model_provider=name,
                      message="the API key was rejected; provider taken out until the breaker half-opens")
            link.breaker.record_failure(exc.reason, open_for=link.breaker.config.open_seconds)
        elif exc.counts_as_failure:
            link.breaker.record_failure(exc.reason)
        log.warning("provider_call", model_provider=name, model=link.provider.model, outcome=exc.reason,
                    latency_ms=round(seconds * 1000, 1), error=exc.message[:300])
