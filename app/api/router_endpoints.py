"""POST /ai/router/v2 and POST /ai/router/ (v1): every question a rep asks, served as plain ASGI.

Why not FastAPI routes like the rest of the API: see app/api/asgi.py. What this module does is
what a FastAPI route would: check the caller (token or trusted address), read the body (bounded,
JSON only), validate it with the pydantic model, call the pipeline's one `answer`, and encode its
events: folded into one JSON document, or as server-sent events (app/api/sse.py); every error is
rendered through `errors.render` (the one error shape). Each event is recorded on the request's
`RequestContext` (its log line) as it passes.
"""

from __future__ import annotations

import asyncio

from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.types import Receive, Scope, Send

from app import pipeline
from app.api import sse
from app.api.context import RequestContext, context_of
from app.api.deps import caller_from
from app.api.errors import (
    IvyError,
    MethodNotAllowed,
    ShuttingDown,
    UnsupportedMediaType,
    from_validation_errors,
    render,
)
from app.api.responses import send_json
from app.api.schemas import RouterRequest, V1Response
from app.api.services import services_of
from app.api.serving import Guarded
from app.config.runtime_flags import Flags
from app.domain import DomainError, Event, Meta
from app.observability.logging import get_logger
from app.state import State

log = get_logger()

# "/ai/router" too: a POST there would otherwise get a 307 to "/ai/router/", which not every client follows.
ENDPOINTS = {"/ai/router/v2": "v2", "/ai/router/": "v1", "/ai/router": "v1"}


_SSE_HEADERS = ((b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"))


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


async def _until_gone(receive: Receive, guarded: Guarded) -> None:
    """Waits for `http.disconnect` (the request's body is all read by now), then ends the stream."""
    while (await receive())["type"] != "http.disconnect":
        pass
    guarded.leave()


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


def wants_fresh(scope: Scope) -> bool:
    """`Cache-Control: no-cache` (or no-store) on the request: answer afresh, not from the answer cache."""
    for key, value in scope["headers"]:
        if key == b"cache-control":
            directives = {d.strip().partition(b"=")[0] for d in value.lower().split(b",")}
            if b"no-cache" in directives or b"no-store" in directives:
                return True
    return False


def parse(body: bytes) -> RouterRequest:
    try:
        return RouterRequest.model_validate_json(body)
    except ValidationError as exc:
        raise from_validation_errors(exc.errors()) from None


class RouterEndpoints:
    """The ASGI app behind ENDPOINTS; runs inside RequestContextMiddleware."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ctx = context_of(scope)
        try:
            if scope["method"] != "POST":
                raise MethodNotAllowed("use POST", headers={"Allow": "POST"})
            await self._answer(scope, receive, send, ENDPOINTS[scope["path"]], ctx)
        except ClientGone:
            ctx.client_gone = True
        except (IvyError, DomainError, HTTPException) as exc:  # HTTPException: the body limit, while reading
            await self._error(send, ctx, exc)
        except asyncio.CancelledError:
            if not services_of(scope).drain.cutting:
                raise
            # Still running at the shutdown bound: said as such (a 503 line), not as an unhandled exception.
            if (task := asyncio.current_task()) is not None:
                task.uncancel()
            ctx.outcome = "shutting_down"
            if ctx.status is None:
                await self._error(send, ctx, ShuttingDown("the server is restarting; ask again",
                                                          headers={"Retry-After": "5"}))
        except Exception as exc:
            log.error("unhandled_exception", request_id=ctx.request_id, path=scope["path"],
                      error=type(exc).__name__, exc_info=exc)
            if ctx.status is not None:  # a stream already under way: nothing more can be said on this response
                raise
            await self._error(send, ctx, exc)

    async def _answer(self, scope: Scope, receive: Receive, send: Send, version: str, ctx: RequestContext) -> None:
        services = services_of(scope)
        state: State = scope["state"]["ivy"]
        identity = await services.auth.identify(scope) if services.auth is not None else None
        require_json(scope)
        body = parse(await read_body(receive))
        caller = caller_from(scope, state, identity)
        flags = state.flags.current
        if version == "v1":
            flags = Flags(modal_heuristics=False, organic=False, active_model=flags.active_model)
        use_cache = not wants_fresh(scope)
        streamed = version == "v2" and body.stream
        answer = pipeline.answer(state, caller, body.query, body.context, flags, stream=streamed, use_cache=use_cache)
        if streamed:  # the drain ends an open stream at shutdown; a JSON answer just finishes
            guarded = services.drain.guard(answer, caller.request_id)
            meta = await guarded.first()  # admit, plan, cache lookup: a refusal is still a real 429
            ctx.record(meta)
            await self._stream(receive, send, meta, guarded, ctx)
            return
        meta, done = await pipeline.fold(ctx.recorded(answer))
        r = done.response
        if version == "v1":
            v1 = V1Response(request_id=r.request_id, response=r.answer, provider=r.provider, model=r.model,
                            intent="rag" if r.intent == "rag" else "conversational")
            await send_json(send, 200, v1.__pydantic_serializer__.to_json(v1), meta.rate_headers)
        else:
            await send_json(send, 200, r.__pydantic_serializer__.to_json(r), meta.rate_headers)

    @staticmethod
    async def _stream(receive: Receive, send: Send, meta: Event, guarded: Guarded, ctx: RequestContext) -> None:
        """The events as server-sent events, one body message each, straight on ASGI's `send`: no
        StreamingResponse, whose task group and disconnect task per response were the largest items
        of the profile. One plain task waits for the client to leave and ends the stream then."""
        raw = [*_SSE_HEADERS, *((k.lower().encode("latin-1"), v.encode("latin-1"))
                                for k, v in (meta.rate_headers if isinstance(meta, Meta) else {}).items())]
        watcher = asyncio.ensure_future(_until_gone(receive, guarded))
        try:
            await send({"type": "http.response.start", "status": 200, "headers": raw})
            await send({"type": "http.response.body", "body": sse.encode(meta), "more_body": True})
            async for frame in guarded.frames(sse.encode, ctx.record):
                if guarded.last:  # `done` or `error` ends the response in the same write
                    watcher.cancel()  # the response's end is not the client leaving
                    await send({"type": "http.response.body", "body": frame, "more_body": False})
                else:
                    await send({"type": "http.response.body", "body": frame, "more_body": True})
            if guarded.gone:
                ctx.client_gone = True
            elif not guarded.last:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            watcher.cancel()

    @staticmethod
    async def _error(send: Send, ctx: RequestContext, exc: BaseException) -> None:
        error, body = render(exc, ctx)
        await send_json(send, error.status_code, body, error.headers)
