"""The core's vocabulary: who asks (`Caller`), what the pipeline answers (`RouterResponse` and
its parts), the events it yields on the way (`Meta`, `Delta`, `Done`, `Failed`), and the errors
it raises. Nothing here knows HTTP: `app/api/` maps these to status codes, headers and the wire
(JSON, or server-sent events: app/api/sse.py; see docs/ARCHITECTURE.md).

Events, in order, for every answer (JSON, stream, modal, cache hit, the warm-up)::

    Meta     once, after admit, plan and the cache lookup: nothing has been generated yet
    Delta    a piece of the answer's text (one piece unless a plain answer is streamed)
    Done     the whole answer (the same `RouterResponse` a JSON request gets), last
    Failed   instead of Done: the answer broke off after its first piece, or the server is
             shutting down

Errors::

    DomainError            the request cannot be answered as asked (no HTTP status here)
    ├── RateLimitExceeded  a token bucket refused (bucket, retry_after, the rate-limit fields)
    └── BudgetExhausted    the org's budget refused (IVY_BUDGET_EXHAUSTED=refuse; retry_after: the period's end)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from app.safety.flags import Flag, SafetyReport
from app.vocabulary import CacheStatus, Intent, ModalType, ProviderName

if TYPE_CHECKING:
    from app.providers.links import Trace


@dataclass(frozen=True, slots=True)
class Caller:
    request_id: str
    user_key: str  # normalised rate-limit key (user id, or the client address if X-User-ID is missing)
    org_key: str | None
    user_id: str | None  # as sent (or verified), for logs
    org_id: str | None


class DomainError(Exception):
    """A request the core refuses; ``code`` is the stable tag clients and logs see."""

    code = "error"
    refusal = True  # the request's outcome, not the server's failure: no ERROR status on its span

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class RateLimitExceeded(DomainError):
    code = "rate_limited"

    def __init__(self, message: str, *, bucket: str | None, retry_after: int, fields: dict[str, str]) -> None:
        super().__init__(message, bucket=bucket, retry_after=retry_after)
        self.bucket = bucket
        self.retry_after = retry_after
        self.fields = fields  # RateLimit / X-RateLimit-* values, for the response's headers


class BudgetExhausted(DomainError):
    code = "budget_exhausted"

    def __init__(self, message: str, *, reason: str, retry_after: int, fields: dict[str, str]) -> None:
        super().__init__(message, retry_after=retry_after)
        self.code = reason  # budget_exhausted, or budget_unavailable (the store failed closed)
        self.retry_after = retry_after
        self.fields = fields


class CallUsage(BaseModel):
    provider: str
    model: str
    role: str = Field(description="first, hedge or failover")
    input_tokens: int
    cached_input_tokens: int = 0
    output_tokens: int
    cost_usd: float | None = Field(description="null: the model has no price (README 'Cost and budgets')")
    estimated: bool = Field(description="the call stopped before the provider reported its usage: estimated "
                            "(prompt ~4 characters a token, output by the characters received)")


class Saved(BaseModel):
    input_tokens: int
    output_tokens: int
    cost_usd: float | None


class UsageInfo(BaseModel):
    """What the answer cost: every call the providers bill (hedges and failovers included)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = Field(default=0.0, description="null when a call's model has no price")
    calls: list[CallUsage] = Field(default_factory=list)
    saved: Saved | None = Field(default=None, description="a cache hit: what the cached answer cost when made")


class Modal(BaseModel):
    type: ModalType
    payload: dict[str, Any]


class Citation(BaseModel):
    source: str = Field(description="A lead field (lead.budget), a context item (emails[0]) or a doc section.")
    snippet: str


class Fallback(BaseModel):
    used: bool
    reason: str | None = None
    failures: list[str] = Field(default_factory=list, description="provider:reason for each link that failed.")


class IntentInfo(BaseModel):
    confidence: float
    reasons: list[str]


class Safety(BaseModel):
    flags: list[Flag] = Field(
        default_factory=list, description="What the output checks did (README 'Safety'): recipient_replaced, "
        "link_removed, markup_removed, prompt_leak (the answer was replaced by a refusal), untrusted_instructions "
        "(outside text tried to instruct the model; never cached), secret_masked.")


class RouterResponse(BaseModel):
    request_id: str
    intent: Intent
    provider: ProviderName
    model: str
    answer: str
    modal: Modal | None = None
    citations: list[Citation] = Field(default_factory=list)
    fallback: Fallback
    intent_detail: IntentInfo
    suggestions: list[str] = Field(default_factory=list, description="Organic follow-ups (IVY_ORGANIC_ENABLED).")
    latency_ms: dict[str, float] = Field(description="total and per stage")
    cache: CacheStatus = Field(
        default="miss", description="hit: served from the answer cache; miss: generated (and stored if "
        "cacheable); bypass: the cache was not used (Cache-Control: no-cache, an email draft, cache off or down).")
    safety: Safety = Field(default_factory=Safety)
    usage: UsageInfo = Field(default_factory=UsageInfo)



# --- the events of one answer (see the module docstring) --------------------------------------

@dataclass(frozen=True, slots=True)
class Meta:
    request_id: str
    intent: Intent
    modal_type: ModalType | None
    cache: CacheStatus
    rate_headers: dict[str, str]  # RateLimit / X-RateLimit-* values, for the response's headers
    overhead_ms: float  # the router's own time so far: admit, plan, cache lookup


@dataclass(frozen=True, slots=True)
class Delta:
    text: str


@dataclass(frozen=True, slots=True)
class Done:
    response: RouterResponse
    trace: Trace  # what the chain did, for the log line and the metrics
    stored: bool = False  # the answer went into the answer cache
    safety: SafetyReport | None = None  # what the output checks did (counts for the log line)


@dataclass(frozen=True, slots=True)
class Failed:
    code: Literal["provider_stream_interrupted", "shutting_down"]
    request_id: str
    provider: str | None = None
    reason: str | None = None
    message: str | None = None
    trace: Trace | None = None


Event = Meta | Delta | Done | Failed
