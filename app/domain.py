"""The core's vocabulary: who asks (`Caller`), what the pipeline answers (`RouterResponse` and
its parts, `Outcome`), and the errors it raises. Nothing here knows HTTP: `app/api/` maps these
to status codes, headers and the wire (see docs/ARCHITECTURE.md).

Errors::

    DomainError            the request cannot be answered as asked (no HTTP status here)
    └── RateLimitExceeded  a token bucket refused (bucket, retry_after, the rate-limit fields)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from app.safety.flags import Flag, SafetyReport

if TYPE_CHECKING:
    from app.providers.chain import Trace


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


class Modal(BaseModel):
    type: Literal["email_composer", "lead_insights"]
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
    intent: Literal["conversational", "rag", "modal"]
    provider: Literal["gemini", "openai", "local"]
    model: str
    answer: str
    modal: Modal | None = None
    citations: list[Citation] = Field(default_factory=list)
    fallback: Fallback
    intent_detail: IntentInfo
    suggestions: list[str] = Field(default_factory=list, description="Organic follow-ups (IVY_ORGANIC_ENABLED).")
    latency_ms: dict[str, float] = Field(description="total and per stage")
    cache: Literal["hit", "miss", "bypass"] = Field(
        default="miss", description="hit: served from the answer cache; miss: generated (and stored if "
        "cacheable); bypass: the cache was not used (Cache-Control: no-cache, an email draft, cache off or down).")
    safety: Safety = Field(default_factory=Safety)



@dataclass(slots=True)
class Outcome:
    """What the API needs to render, log and measure one answered request."""

    response: RouterResponse
    rate_headers: dict[str, str]
    trace: Trace
    safety: SafetyReport
