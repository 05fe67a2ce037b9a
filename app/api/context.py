"""What one request carries from the middleware, through the endpoint, back to its log line.

`RequestContextMiddleware` creates a `RequestContext` per HTTP request and puts it in the ASGI
scope's state (`scope["state"]["ctx"]`, which FastAPI routes see as `request.state.ctx`); the
endpoint and the error renderer fill it in; the middleware writes the request's log line and
metrics from it. One typed object instead of loose string keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.types import Scope

from app.domain import RouterResponse
from app.providers.chain import Trace

CTX = "ctx"

# Fields that go on the request's log line when set (after the ones every line has).
_OPTIONAL = ("model", "provider_ms", "fallback", "hedged", "provider_calls", "usage", "bucket", "code",
             "retry_after", "outcome", "cache")


@dataclass(slots=True)
class RequestContext:
    request_id: str
    user_id: str | None = None
    org_id: str | None = None
    intent: str | None = None
    provider: str | None = None
    model: str | None = None
    fallback: str | None = None
    provider_ms: float | None = None
    overhead_ms: float | None = None  # sent back as x-ivy-overhead-ms
    hedged: bool | None = None
    provider_calls: int | None = None
    usage: dict[str, int | None] | None = None  # not "*_tokens": the log redactor blanks names with "token"
    bucket: str | None = None
    code: str | None = None  # error.code of the response; not "error_code": `grep -i error` is for errors
    retry_after: int | None = None
    cache: str | None = None  # hit | miss | bypass (the answer cache)
    outcome: str | None = None  # a stream that began as a 200 and ended otherwise
    client_gone: bool = False  # logged as 499

    def chain_did(self, trace: Trace) -> None:
        """Who answered, whether a hedge was fired, how many calls and tokens."""
        self.provider = trace.provider
        self.hedged = trace.hedged
        self.provider_calls = trace.calls
        if trace.input_tokens is not None or trace.output_tokens is not None:
            self.usage = {"input": trace.input_tokens, "output": trace.output_tokens}

    def answered(self, response: RouterResponse, trace: Trace) -> None:
        self.chain_did(trace)
        self.intent = response.intent
        self.provider = response.provider
        self.fallback = response.fallback.reason
        self.model = response.model
        self.cache = response.cache
        generate = response.latency_ms.get("generate")
        self.provider_ms = generate
        self.overhead_ms = response.latency_ms["total"] - (generate or 0.0)

    def log_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"user_id": self.user_id, "org_id": self.org_id,
                                  "intent": self.intent or "none", "model_provider": self.provider or "none"}
        for key in _OPTIONAL:
            value = getattr(self, key)
            if value is not None:
                fields[key] = value
        return fields


def context_of(scope: Scope) -> RequestContext:
    ctx: RequestContext = scope["state"][CTX]
    return ctx
