"""POST /ai/router/v2 and POST /ai/router/ (v1): every question a rep asks, served as plain ASGI.

Why not FastAPI routes like the rest of the API: these two carry all the traffic, and FastAPI's
own layers (telemetry check, body limit, exception middleware, routing, dependency solving,
request parsing, response classes) cost more per request than the rate limiter and the
classifier together. Served directly, the router went from 1,550-1,660 to 2,270-2,330
requests/s at 50 connections on one core (wrk, same machine, alternating runs). `IvyAPI` hands these paths
to `RouterEndpoints` before any of that; FastAPI still serves every other path and documents
these two (`openapi()` below), and the same `RequestContextMiddleware` wraps both (request id,
body limit, log line, metrics).

What this module does is what the FastAPI route did: read the body (bounded), validate it with
the same pydantic model, call the pipeline, render JSON or server-sent events, and render every
error in the one error shape (`errors.error_payload`).
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import ValidationError
from pydantic.json_schema import models_json_schema
from starlette.exceptions import HTTPException
from starlette.responses import StreamingResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import pipeline
from app.api.deps import caller_from
from app.api.errors import (
    INTERNAL_ERROR_MESSAGE,
    IvyError,
    MethodNotAllowed,
    ShuttingDown,
    UnsupportedMediaType,
    error_payload,
    from_http_exception,
    from_validation_errors,
)
from app.api.schemas import ErrorResponse, RouterRequest, RouterResponse, V1Response
from app.config.runtime_flags import Flags
from app.observability.logging import get_logger
from app.providers.chain import Trace
from app.state import State

log = get_logger()

# "/ai/router" too: a POST there would otherwise get a 307 to "/ai/router/", which not every client follows.
ENDPOINTS = {"/ai/router/v2": "v2", "/ai/router/": "v1", "/ai/router": "v1"}


class ClientGone(Exception):
    """The client disconnected before its request body arrived."""


async def read_body(receive: Receive) -> bytes:
    # The size limit is enforced by RequestContextMiddleware's receive, which raises a 413.
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def require_json(scope: Scope) -> None:
    """415 unless the body is declared JSON (application/json or application/*+json): a cross-site
    form or a text/plain fetch is never served."""
    for key, value in scope["headers"]:
        if key == b"content-type":
            media = value.partition(b";")[0].strip().lower()
            if media == b"application/json" or (media.startswith(b"application/") and media.endswith(b"+json")):
                return
            break
    raise UnsupportedMediaType("the body must be JSON: send 'Content-Type: application/json'",
                               headers={"Accept-Post": "application/json"})


def parse(body: bytes) -> RouterRequest:
    try:
        return RouterRequest.model_validate_json(body)
    except ValidationError as exc:
        raise from_validation_errors(exc.errors()) from None


async def send_json(send: Send, status: int, body: bytes, headers: dict[str, str]) -> None:
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def _remember_trace(request_state: dict[str, Any], trace: Trace) -> None:
    """Who answered, whether a hedge was fired, how many calls and tokens (for the log line)."""
    request_state["provider"] = trace.provider
    request_state["hedged"] = trace.hedged
    request_state["provider_calls"] = trace.calls
    if trace.input_tokens is not None or trace.output_tokens is not None:
        # Not "*_tokens": the log redactor blanks any field whose name says "token".
        request_state["usage"] = {"input": trace.input_tokens, "output": trace.output_tokens}


def _remember(request_state: dict[str, Any], response: RouterResponse, trace: Trace) -> None:
    """What the request log line, the metrics and x-ivy-overhead-ms need (read by the middleware)."""
    _remember_trace(request_state, trace)
    request_state["intent"] = response.intent
    request_state["provider"] = response.provider
    request_state["fallback"] = response.fallback.reason
    request_state["model"] = response.model
    generate = response.latency_ms.get("generate")
    request_state["provider_ms"] = generate
    request_state["overhead_ms"] = response.latency_ms["total"] - (generate or 0.0)


class RouterEndpoints:
    """The ASGI app behind ENDPOINTS; runs inside RequestContextMiddleware."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_state: dict[str, Any] = scope["state"]
        started = False

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            if scope["method"] != "POST":
                raise MethodNotAllowed("use POST", headers={"Allow": "POST"})
            await self._answer(scope, receive, tracked_send, ENDPOINTS[scope["path"]], request_state)
        except ClientGone:
            request_state["client_gone"] = True
        except IvyError as exc:
            await self._error(send, request_state, exc)
        except HTTPException as exc:  # the body limit, raised while reading
            await self._error(send, request_state, from_http_exception(exc))
        except asyncio.CancelledError:
            drain = getattr(request_state.get("ivy"), "drain", None)
            if drain is None or not drain.cutting:
                raise
            # Still running at the shutdown bound: said as such (a 503 line), not as an unhandled exception.
            if (task := asyncio.current_task()) is not None:
                task.uncancel()
            request_state["outcome"] = "shutting_down"
            if not started:
                await self._error(send, request_state, ShuttingDown("the server is restarting; ask again",
                                                                    headers={"Retry-After": "5"}))
        except Exception as exc:
            log.error("unhandled_exception", request_id=request_state.get("request_id"), path=scope["path"],
                      error=type(exc).__name__, exc_info=exc)
            if started:  # a stream already under way: nothing more can be said on this response
                raise
            await self._error(send, request_state, IvyError(INTERNAL_ERROR_MESSAGE))

    async def _answer(self, scope: Scope, receive: Receive, send: Send, version: str,
                      request_state: dict[str, Any]) -> None:
        state: State = request_state["ivy"]
        identity = await state.auth.identify(scope) if state.auth is not None else None
        require_json(scope)
        body = parse(await read_body(receive))
        caller = caller_from(scope, state, identity)
        flags = state.flags.current
        if version == "v1":
            flags = Flags(modal_heuristics=False, organic=False, active_model=flags.active_model)
        if version == "v2" and body.stream:
            events, headers, c = await pipeline.answer_stream(
                state, caller, body.query, body.context, flags,
                on_trace=lambda trace: _remember_trace(request_state, trace))
            request_state["intent"] = c.intent
            response = StreamingResponse(state.drain.guard(events, request_state), media_type="text/event-stream",
                                         headers={**headers, "Cache-Control": "no-cache"})
            await response(scope, receive, send)
            return
        outcome = await pipeline.answer(state, caller, body.query, body.context, flags)
        r = outcome.response
        _remember(request_state, r, outcome.trace)
        if version == "v1":
            v1 = V1Response(request_id=r.request_id, response=r.answer, provider=r.provider, model=r.model,
                            intent="rag" if r.intent == "rag" else "conversational")
            await send_json(send, 200, v1.__pydantic_serializer__.to_json(v1), outcome.rate_headers)
        else:
            await send_json(send, 200, r.__pydantic_serializer__.to_json(r), outcome.rate_headers)

    @staticmethod
    async def _error(send: Send, request_state: dict[str, Any], exc: IvyError) -> None:
        request_state["error_code"] = exc.code
        for key in ("bucket", "retry_after"):
            if key in exc.details:
                request_state[key] = exc.details[key]
        if exc.status_code >= 500:
            log.error("request_failed", code=exc.code, message=exc.message, request_id=request_state.get("request_id"))
        body = orjson.dumps(error_payload(exc, request_state.get("request_id")))
        await send_json(send, exc.status_code, body, exc.headers)


class IvyAPI(FastAPI):
    """FastAPI, with the router endpoints served ahead of its own middleware stack."""

    def __init__(self, *, router_endpoints: ASGIApp, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.router_endpoints = router_endpoints

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] in ENDPOINTS:
            await self.router_endpoints(scope, receive, send)
            return
        await super().__call__(scope, receive, send)

    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema is None:
            spec = get_openapi(title=self.title, version=self.version, description=self.description,
                               routes=self.routes)
            add_router_endpoints(spec)
            document_errors_truthfully(spec)
            self.openapi_schema = spec
        return self.openapi_schema


ROUTER_HEADERS = [
    {"name": "X-User-ID", "in": "header", "required": False, "schema": {"type": "string", "maxLength": 1024},
     "description": "The rep's user id: the rate-limit key (the client address when missing)."},
    {"name": "X-Org-ID", "in": "header", "required": False, "schema": {"type": "string", "maxLength": 1024},
     "description": "The rep's org: the org-level rate limit."},
    {"name": "X-Request-ID", "in": "header", "required": False, "schema": {"type": "string"},
     "description": "Correlation id, echoed back as a header. Any value is accepted: one that is not 1-128 "
                    "characters of `A-Z a-z 0-9 . _ : -` is replaced by a generated id (never refused)."},
]

_ERROR_STATUSES = {
    "400": "Malformed JSON",
    "401": "IVY_AUTH_MODE=jwt: no valid Bearer token (`error.code`: missing_token, invalid_token, expired_token, "
           "token_not_yet_valid, invalid_issuer, invalid_audience, missing_claim); `WWW-Authenticate: Bearer`",
    "403": "IVY_AUTH_MODE=jwt: X-User-ID or X-Org-ID names someone other than the token (identity_mismatch)",
    "405": "Not a POST", "413": "Body over IVY_MAX_BODY_BYTES",
    "415": "The body is not declared JSON (Content-Type application/json or application/*+json)",
    "422": "A field is missing or invalid (the message names it)",
    "429": "Rate limited (Retry-After says when to come back)", "500": "Internal error",
    "503": "IVY_AUTH_MODE=jwt: the token's signing key could not be fetched (auth_unavailable); or the server "
           "was restarting and the request was cut at its shutdown bound (shutting_down)",
}

SSE_DESCRIPTION = (
    "Server-sent events (`text/event-stream`), each `event: <name>` then `data: <JSON>`: `meta` "
    "({request_id, intent, modal_type}) first, `delta` ({text}) for each piece of the answer, then exactly one of "
    "`done` (the whole answer: request_id, intent, provider, answer, citations, fallback, suggestions, latency_ms) "
    "or `error` ({code, request_id, ...}: `provider_stream_interrupted` when the provider broke off after the "
    "first piece, `shutting_down` when the server restarted mid-answer)."
)
def _event(name: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"properties": {"event": {"const": name}, "data": {"contentMediaType": "application/json",
                                                               "contentSchema": data}}}


# Before OpenAPI 3.2's itemSchema, a text/event-stream `schema` describes each event (as parsed:
# its `event` and `data` fields, `data` a JSON document).
SSE_EVENT_SCHEMA: dict[str, Any] = {
    "type": "object", "description": SSE_DESCRIPTION, "required": ["event", "data"],
    "properties": {"event": {"type": "string", "enum": ["meta", "delta", "done", "error"]},
                   "data": {"type": "string"}, "id": {"type": "string"}, "retry": {"type": "integer"}},
    "oneOf": [
        _event("meta", {"type": "object", "required": ["request_id", "intent"]}),
        _event("delta", {"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}}),
        _event("done", {"type": "object", "required": ["request_id", "intent", "provider", "answer"]}),
        _event("error", {"type": "object", "required": ["code", "request_id"], "properties": {"code": {
            "type": "string", "enum": ["provider_stream_interrupted", "shutting_down"]}}}),
    ],
}
SSE_EXAMPLE = (
    'event: meta\ndata: {"request_id":"5f0c...","intent":"conversational","modal_type":null}\n\n'
    'event: delta\ndata: {"text":"Hello"}\n\n'
    'event: done\ndata: {"request_id":"5f0c...","intent":"conversational","provider":"gemini","answer":"Hello",'
    '"citations":[],"fallback":{"used":false,"reason":null,"failures":[]},"suggestions":[],"latency_ms":{}}\n\n'
)


def add_router_endpoints(spec: dict[str, Any]) -> None:
    """Describe ENDPOINTS in an OpenAPI document, from the same pydantic models they validate with."""
    _, defs = models_json_schema(
        [(RouterRequest, "validation"), (RouterResponse, "serialization"), (V1Response, "serialization"),
         (ErrorResponse, "serialization")],
        ref_template="#/components/schemas/{model}",
    )
    spec.setdefault("components", {}).setdefault("schemas", {}).update(defs["$defs"])

    def ref(name: str) -> dict[str, Any]:
        return {"schema": {"$ref": f"#/components/schemas/{name}"}}

    def operation(summary: str, answer: str, answer_description: str, streams: bool) -> dict[str, Any]:
        content: dict[str, Any] = {"application/json": ref(answer)}
        if streams:
            content["text/event-stream"] = {"schema": SSE_EVENT_SCHEMA, "example": SSE_EXAMPLE}
        responses: dict[str, Any] = {"200": {"description": answer_description, "content": content}}
        responses.update({code: {"description": text, "content": {"application/json": ref("ErrorResponse")}}
                          for code, text in _ERROR_STATUSES.items()})
        return {"post": {"summary": summary, "parameters": ROUTER_HEADERS,
                         "requestBody": {"required": True, "content": {"application/json": ref("RouterRequest")}},
                         "responses": responses}}

    spec.setdefault("paths", {}).update({
        "/ai/router/v2": operation(
            "Answer a rep's question (v2: intents, modals, citations, failover)", "RouterResponse",
            "The answer; with `stream: true`, server-sent events: meta, delta..., then done or error", True),
        "/ai/router/": operation(
            "v1 contract (rollback target): never opens a modal, ignores v2 flags", "V1Response",
            "The answer in the v1 shape", False),
    })


def document_errors_truthfully(spec: dict[str, Any]) -> None:
    """Every 4xx/5xx FastAPI documents with its own HTTPValidationError shape is, in fact, the one
    error shape (`ErrorResponse`, see errors.py)."""
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
    for operations in spec.get("paths", {}).values():
        for operation in operations.values():
            for status, response in operation.get("responses", {}).items():
                if status[0] in "45":
                    response["content"] = error
    for unused in ("HTTPValidationError", "ValidationError"):
        spec.get("components", {}).get("schemas", {}).pop(unused, None)
