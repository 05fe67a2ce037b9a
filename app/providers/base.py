"""The provider interface and the error tree every adapter speaks.

Adapters translate their provider's failures into this small tree, so that the
chain, the circuit breaker and the logs reason about one vocabulary::

    ProviderError                 any failure of one provider call
    ├── ProviderTimeout           no complete answer within the deadline      (counts for the breaker)
    ├── ProviderUnavailable       5xx, connection refused/reset, cut stream   (counts)
    ├── ProviderRateLimited       429; carries retry_after seconds if given   (opens the breaker)
    ├── ProviderAuthError         401/403: the key is missing or rejected     (opens the breaker)
    ├── ProviderBadRequest        400 caused by our request                   (does not count)
    └── ProviderMalformedOutput   2xx whose body is not what the format says  (counts)

Adapters never retry: the chain owns the one retry policy (move to the next link).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from app.providers.clock import Deadline
from app.vocabulary import Intent, ModalType, ProviderName


class ProviderError(Exception):
    """A provider call failed. ``reason`` is the short tag used in logs, metrics and `fallback.reason`."""

    reason = "provider_error"
    counts_as_failure = True

    def __init__(self, provider: str, message: str) -> None:
        super().__init__(f"{provider}: {message}")
        self.provider = provider
        self.message = message


class ProviderTimeout(ProviderError):
    reason = "timeout"


class ProviderUnavailable(ProviderError):
    reason = "unavailable"


class ProviderRateLimited(ProviderError):
    reason = "rate_limited"

    def __init__(self, provider: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(provider, message)
        self.retry_after = retry_after


class ProviderAuthError(ProviderError):
    reason = "auth"


class ProviderBadRequest(ProviderError):
    reason = "bad_request"
    counts_as_failure = False


class ProviderMalformedOutput(ProviderError):
    reason = "malformed_output"


@dataclass(frozen=True, slots=True)
class Passage:
    """A retrieved piece of evidence and where it came from (a lead field or a doc section)."""

    source: str
    text: str
    score: float = 0.0


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """Everything a provider needs for one answer.

    Remote providers send ``system`` and ``prompt``; the offline provider builds its answer
    from the structured fields instead, which is why both travel together.
    """

    intent: Intent
    query: str
    system: str
    prompt: str
    lead: dict[str, Any] = field(default_factory=dict)
    passages: tuple[Passage, ...] = ()
    modal_type: ModalType | None = None
    notes: tuple[str, ...] = ()  # facts the router asserts, e.g. "this lead has no score yet"
    json_schema: dict[str, Any] | None = None
    max_output_tokens: int = 512
    temperature: float = 0.3
    prompt_kind: str = "chat"  # which system text (app/providers/prompts.py); keys the answer cache


@dataclass(slots=True)
class Usage:
    """Token counts a stream reports (at its end, or running totals as it goes), and why and which
    model answered; the adapter fills them in as they arrive, and counts the characters it yielded
    (what a call stopped before it reported is billed by: app/budget/ledger.py)."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    cached_input_tokens: int | None = None  # the part of input_tokens the provider's prompt cache served
    received_chars: int = 0
    finish_reason: str | None = None  # as the provider says it ("stop", "STOP", "length", "MAX_TOKENS")
    model: str | None = None  # the model that answered, as the provider names it


class Provider(Protocol):
    """A remote model. It is only ever streamed: the chain races calls for their first chunk,
    and a whole answer is that stream collected (docs/HEDGING.md)."""

    name: ProviderName
    model: str

    def stream(self, request: GenerationRequest, *, deadline: Deadline, json_mode: bool = False,
               usage: Usage | None = None) -> AsyncIterator[str]:
        """Yield text chunks (the raw JSON text in ``json_mode``); raise a ProviderError if the
        stream fails. ``deadline`` bounds the wait for the first bytes (the chain bounds the
        rest); ``usage`` receives the token counts the provider reports."""
        ...
