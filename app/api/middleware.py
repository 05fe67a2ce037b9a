"""Request context for every HTTP request: id, body-size limit, the request log line, metrics, and
the door first: a router request that finds this worker full is shed there (app/api/door.py: 503
`overloaded` before anything else is done for it). Only the router endpoints are ever shed:
/health, /ai/router/health and /metrics always answer.

A plain ASGI middleware (not BaseHTTPMiddleware): it wraps receive/send without copying
bodies or spawning tasks, so it stays cheap on the hot path and works for streamed answers.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.context import CTX, RequestContext
from app.api.door import header, request_id_of
from app.api.errors import PayloadTooLarge, render
from app.api.responses import send_json
from app.api.router_endpoints import ENDPOINTS
from app.api.services import SERVICES, ApiServices
from app.observability.logging import write_line
from app.observability.tracing import RequestSpan
from app.state import State

ROUTER_PATHS = frozenset(ENDPOINTS)
ROUTES = {path: "/ai/router/v2" if version == "v2" else "/ai/router/" for path, version in ENDPOINTS.items()}


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state_dict: dict[str, Any] = scope.setdefault("state", {})
        services: ApiServices | None = state_dict.get(SERVICES)
        is_router = scope["path"] in ROUTER_PATHS
        door = services.door if services is not None and is_router else None
        if door is not None and not door.enter():
            await door.shed(scope, send)
            return
        started = time.perf_counter()
        request_id = request_id_of(scope)
        ctx = state_dict[CTX] = RequestContext(request_id)
        ivy: State | None = state_dict.get("ivy")
        path = scope["path"]
        tracing = services.tracing if services is not None and is_router else None
        span = None if tracing is None else tracing.start_request(scope["method"], ROUTES[path], scope["headers"])

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                ctx.status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                if is_router:
                    overhead = ctx.overhead_ms
                    if overhead is not None:
                        headers.append((b"x-ivy-overhead-ms", f"{overhead:.3f}".encode()))
                message["headers"] = headers
            await send(message)

        length = header(scope, b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            await self._reject_too_large(send_with_id, ctx)
            self._finish(ivy, scope, ctx, ctx.status or 500, started, is_router)
            if span is not None:
                _end_span(span, ctx, ctx.status or 500)
            return

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    # HTTPException, because FastAPI turns other errors raised while reading into a 400.
                    raise HTTPException(413, f"request body over {self.max_body} bytes")
            return message

        try:
            await self.app(scope, limited_receive, send_with_id)
        finally:
            if door is not None:
                door.leave()
            # 499 (nginx's "client closed request"): not our error, so not a 5xx for the alerts.
            status = 499 if ctx.client_gone else ctx.status or 500  # never started: it failed
            self._finish(ivy, scope, ctx, status, started, is_router)  # inside the span: the line has its ids
            if span is not None:
                _end_span(span, ctx, status)

    async def _reject_too_large(self, send: Send, ctx: RequestContext) -> None:
        error, body = render(PayloadTooLarge(f"request body over {self.max_body} bytes"), ctx)
        await send_json(send, error.status_code, body, error.headers)

    def _finish(self, ivy: State | None, scope: Scope, ctx: RequestContext, status: int, started: float,
                is_router: bool) -> None:
        if scope["path"] == "/metrics":
            return
        latency_ms = (time.perf_counter() - started) * 1000
        fields = ctx.log_fields({"request_id": ctx.request_id, "method": scope["method"], "path": scope["path"],
                                 "status": status, "latency_ms": round(latency_ms, 2)})
        intent, provider = fields["intent"], fields["model_provider"]
        outcome = ctx.outcome  # a stream that began as a 200 and ended with `event: error`
        if status == 429:
            write_line("warning", "rate_limited", fields)
        elif status >= 500:
            write_line("error", "request", fields)
        elif outcome is not None:
            write_line("warning", "request", fields)
        else:
            write_line("info", "request", fields)
        if ivy is None or not is_router:
            return
        served = ivy.metrics.served("v2" if scope["path"].endswith("v2") else "v1", intent, provider)
        served.count(status)
        if status == 429:
            return
        served.latency.observe(latency_ms / 1000)
        if status >= 400 or outcome is not None:
            ivy.metrics.errors.labels(str(outcome or ctx.code or status)).inc()


def _end_span(span: RequestSpan, ctx: RequestContext, status: int) -> None:
    """The request's outcome on its server span, as its log line says it; no query or answer text. Few
    attributes: each is encoded in every export (the model, hedges and calls go on the attempt
    spans; the request id is on the log line, which names the trace)."""
    span.end(status, {
        "ivy.intent": ctx.intent, "ivy.provider": ctx.provider, "ivy.cache": ctx.cache, "ivy.user_id": ctx.user_id,
        "ivy.org_id": ctx.org_id, "ivy.fallback": ctx.fallback, "ivy.bucket": ctx.bucket, "ivy.code": ctx.code,
        "ivy.outcome": ctx.outcome})
