"""What the chain is made of and what it tells about one request: its `Link`s (a provider and its
breaker) and the `Trace` of their calls (failures, hedges, who answered, tokens)."""

from __future__ import annotations

from dataclasses import dataclass, field

from app.budget import Bill
from app.providers.base import Provider
from app.resilience.breaker import CircuitBreaker
from app.vocabulary import ProviderName


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
    provider: ProviderName = "local"  # who answered (known after the first chunk)
    model: str = ""
    input_tokens: int | None = None  # the answering call's (what a cache entry saves)
    output_tokens: int | None = None
    bills: list[Bill] = field(default_factory=list)  # every call the providers bill: hedges, failovers

    @property
    def degraded_reason(self) -> str | None:
        return self.failures[0].reason if self.failures else None
