"""What one request carries from the middleware, through the endpoint, back to its log line.

`RequestContextMiddleware` creates a `RequestContext` per HTTP request and puts it in the ASGI
scope's state (`scope["state"]["ctx"]`, which FastAPI routes see as `request.state.ctx`); the
endpoint and the error renderer fill it in; the middleware writes the request's log line and
metrics from it. One typed object instead of loose string keys.
"""

from __future__ import annotations

import operator
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from starlette.types import Scope

from app.domain import Delta, Done, Event, Meta
from app.providers.links import Trace
from app.safety import SafetyReport

CTX = "ctx"

# A stream that began as a 200 and ended with `event: error`: the log line's `outcome` for each code.
_FAILED_OUTCOME = {"provider_stream_interrupted": "stream_interrupted", "shutting_down": "shutting_down"}
# Fields that go on the request's log line when set (after the ones every line has).
_OPTIONAL = ("model", "provider_ms", "fallback", "hedged", "provider_calls", "usage", "bucket", "code",
             "retry_after", "outcome", "cache")
_optional_values = operator.attrgetter(*_OPTIONAL)


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
    overhead_ms: float | None = None  # sent back as x-ivy-overhead-ms (see `record`)
    hedged: bool | None = None
    provider_calls: int | None = None
    # not "*_tokens": the log redactor blanks names with "token"
    usage: dict[str, int | float | None] | None = None
    bucket: str | None = None
    code: str | None = None  # error.code of the response; not "error_code": `grep -i error` is for errors
    retry_after: int | None = None
    cache: str | None = None  # hit | miss | bypass (the answer cache)
    outcome: str | None = None  # a stream that began as a 200 and ended otherwise
    client_gone: bool = False  # logged as 499
    status: int | None = None  # the response's, once it has started (RequestContextMiddleware sets it)
    safety: SafetyReport | None = None  # what the output checks did (filled as a stream goes)

    def record(self, event: Event) -> None:
        """The one place an answer's events land on the request's log line, JSON or stream.

        ``overhead_ms`` is the router's own time: for JSON, the whole answer's less the
        provider's (total - generate); for a stream, whose headers leave before the provider is
        asked, the time until then (admit, plan, cache lookup)."""
        if isinstance(event, Delta):
            return
        if isinstance(event, Meta):
            self.intent, self.cache, self.overhead_ms = event.intent, event.cache, event.overhead_ms
        elif isinstance(event, Done):
            response = event.response
            self._chain_did(event.trace)
            self.safety = event.safety
            self.intent, self.fallback, self.model = response.intent, response.fallback.reason, response.model
            self._billed(response.usage.cost_usd, response.usage.saved.cost_usd if response.usage.saved else None)
            generate = response.latency_ms.get("generate")
            self.provider_ms = generate
            self.overhead_ms = round(response.latency_ms["total"] - (generate or 0.0), 3)
        else:
            self.outcome = _FAILED_OUTCOME[event.code]
            if event.trace is not None:
                self._chain_did(event.trace)

    async def recorded(self, events: AsyncIterator[Event]) -> AsyncIterator[Event]:
        async for event in events:
            self.record(event)
            yield event

    def _chain_did(self, trace: Trace) -> None:
        """Who answered, whether a hedge was fired, how many calls and tokens."""
        self.provider = trace.provider
        self.hedged = trace.hedged
        self.provider_calls = trace.calls
        if trace.bills:  # every billed call: hedges, failovers, a stream cut short
            self.usage = {"input": sum(b.input_tokens for b in trace.bills),
                          "output": sum(b.output_tokens for b in trace.bills), "calls": len(trace.bills),
                          "estimated": sum(b.estimated for b in trace.bills)}
        elif trace.input_tokens is not None or trace.output_tokens is not None:
            self.usage = {"input": trace.input_tokens, "output": trace.output_tokens}

    def _billed(self, cost_usd: float | None, saved_usd: float | None) -> None:
        """The answer's cost on the log line (USD, null: a model without a price), or what a hit saved."""
        if saved_usd is not None:
            self.usage = {**(self.usage or {}), "saved_usd": saved_usd}
        elif self.usage is not None:
            self.usage["cost_usd"] = cost_usd

    def log_fields(self, fields: dict[str, Any] | None = None) -> dict[str, Any]:
        """The request's fields for its log line, added to ``fields`` (the line's first ones) if given."""
        if fields is None:
            fields = {}
        fields["user_id"], fields["org_id"] = self.user_id, self.org_id
        fields["intent"], fields["model_provider"] = self.intent or "none", self.provider or "none"
        for key, value in zip(_OPTIONAL, _optional_values(self), strict=True):  # one C call reads them all
            if value is not None:
                fields[key] = value
        if self.safety is not None:
            if self.safety.flags:
                fields["safety_flags"] = list(self.safety.flags)
            if self.safety.secrets_masked:
                fields["crm_masked"] = self.safety.secrets_masked  # not "secret*": the log redactor blanks such names
            if self.safety.links_removed:
                fields["links_removed"] = self.safety.links_removed
        return fields


def context_of(scope: Scope) -> RequestContext:
    ctx: RequestContext = scope["state"][CTX]
    return ctx
