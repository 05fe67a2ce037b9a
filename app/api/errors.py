"""HTTP errors: one base class that carries its status; one function renders every error.

Every error response is ``{"error": {"code", "message", "request_id", ...}}``, made by `render`,
whether it comes from the router endpoints (plain ASGI), the middleware (413) or a FastAPI
route (the handlers below). The core raises `app.domain.DomainError`s, which know no status
code; `as_ivy_error` maps them (and anything else) to this tree::

    IvyError (500 internal_error)
    ├── BadRequest (400) ── InvalidJSON
    ├── Unauthorized (401), NotFound (404), MethodNotAllowed (405), Conflict (409), PayloadTooLarge (413)
    ├── UnsupportedMediaType (415), ValidationFailed (422), RateLimited (429) <- RateLimitExceeded,
    │                       BudgetExhausted (code budget_exhausted / budget_unavailable)
    ├── ShuttingDown (503), Overloaded (503: this worker is full, shed at the door)
    └── auth errors (app/api/auth.py: 401 / 403 / 503)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from app.api.context import CTX, RequestContext
from app.domain import BudgetExhausted, DomainError, RateLimitExceeded
from app.observability.logging import get_logger
from app.resilience.ratelimit import retry_after_header

log = get_logger()


class IvyError(Exception):
    status_code = 500
    code = "internal_error"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}
        self.details = details


class BadRequest(IvyError):
    status_code = 400
    code = "bad_request"


class InvalidJSON(BadRequest):
    code = "invalid_json"


class ValidationFailed(IvyError):
    status_code = 422
    code = "validation_error"


class PayloadTooLarge(IvyError):
    status_code = 413
    code = "payload_too_large"


class UnsupportedMediaType(IvyError):
    status_code = 415
    code = "unsupported_media_type"


class ShuttingDown(IvyError):
    status_code = 503
    code = "shutting_down"


class Overloaded(IvyError):
    status_code = 503
    code = "overloaded"


class RateLimited(IvyError):
    status_code = 429
    code = "rate_limited"


class Unauthorized(IvyError):
    status_code = 401
    code = "unauthorized"


class NotFound(IvyError):
    status_code = 404
    code = "not_found"


class Conflict(IvyError):
    status_code = 409
    code = "conflict"


class MethodNotAllowed(IvyError):
    status_code = 405
    code = "method_not_allowed"


INTERNAL_ERROR_MESSAGE = "internal error; quote the request_id when reporting"


def as_ivy_error(exc: BaseException) -> IvyError:
    """Any exception as a member of the HTTP tree (a domain error gets its status here)."""
    if isinstance(exc, IvyError):
        return exc
    if isinstance(exc, RateLimitExceeded):
        return RateLimited(exc.message, headers={**exc.fields, "Retry-After": retry_after_header(exc.retry_after)},
                           **exc.details)
    if isinstance(exc, BudgetExhausted):
        refused = RateLimited(exc.message, headers={**exc.fields, "Retry-After": retry_after_header(exc.retry_after)},
                              **exc.details)
        refused.code = exc.code
        return refused
    if isinstance(exc, DomainError):
        error = BadRequest(exc.message, **exc.details)
        error.code = exc.code
        return error
    if isinstance(exc, RequestValidationError):
        return from_validation_errors(exc.errors())
    if isinstance(exc, StarletteHTTPException):
        return from_http_exception(exc)
    return IvyError(INTERNAL_ERROR_MESSAGE)


def error_payload(exc: IvyError, request_id: str | None) -> dict[str, Any]:
    """The one error shape: ``{"error": {code, message, request_id, ...details}}``."""
    body: dict[str, Any] = {"code": exc.code, "message": exc.message, "request_id": request_id}
    body.update(exc.details)
    return {"error": body}


def render(exc: BaseException, ctx: RequestContext | None) -> tuple[IvyError, bytes]:
    """The one place an error becomes a response body; records it on the request's context."""
    error = as_ivy_error(exc)
    if ctx is not None:
        ctx.code = error.code
        bucket, retry = error.details.get("bucket"), error.details.get("retry_after")
        ctx.bucket = bucket if isinstance(bucket, str) else ctx.bucket
        ctx.retry_after = retry if isinstance(retry, int) else ctx.retry_after
    if error.status_code >= 500 and error.message != INTERNAL_ERROR_MESSAGE:
        log.error("request_failed", code=error.code, message=error.message,
                  request_id=ctx.request_id if ctx else None)
    return error, orjson.dumps(error_payload(error, ctx.request_id if ctx else None))


def error_response(request: Request, exc: BaseException) -> Response:
    error, body = render(exc, getattr(request.state, CTX, None))
    return Response(body, status_code=error.status_code, headers=error.headers, media_type="application/json")


def from_validation_errors(errors: Sequence[Any]) -> IvyError:
    """Pydantic's error list (from FastAPI or from model_validate_json) as InvalidJSON or ValidationFailed."""
    if any(e.get("type") == "json_invalid" for e in errors):
        return InvalidJSON("the body is not valid JSON")
    problems = []
    for err in errors:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        problems.append({"field": loc or "body", "message": err.get("msg", "invalid")})
    summary = "; ".join(f"{p['field']}: {p['message']}" for p in problems[:5])
    return ValidationFailed(summary or "invalid request", fields=problems)


def from_http_exception(exc: StarletteHTTPException) -> IvyError:
    err = IvyError(str(exc.detail), headers=dict(exc.headers or {}))
    err.status_code = exc.status_code
    codes = {404: "not_found", 405: "method_not_allowed", 413: PayloadTooLarge.code}
    err.code = codes.get(exc.status_code, "http_error")
    return err


def allowed_methods(request: Request) -> str | None:
    """Every method the OpenAPI document gives this request's path, or None for a path it does not list."""
    operations = request.app.openapi().get("paths", {}).get(request.url.path)
    return ", ".join(sorted(m.upper() for m in operations)) if operations else None


def install_error_handlers(app: FastAPI) -> None:
    """FastAPI's routes raise; this one handler renders (the router endpoints call `render` directly)."""

    async def on_error(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, IvyError | DomainError | RequestValidationError | StarletteHTTPException):
            ctx = getattr(request.state, CTX, None)
            log.error("unhandled_exception", request_id=ctx.request_id if ctx else None, path=request.url.path,
                      error=type(exc).__name__, exc_info=exc)
        error = as_ivy_error(exc)
        if error.status_code == 405 and (allowed := allowed_methods(request)):
            error.headers["Allow"] = allowed  # the router names one route's methods; RFC 9110 wants them all
        return error_response(request, error)

    for kind in (IvyError, DomainError, RequestValidationError, StarletteHTTPException, Exception):
        app.add_exception_handler(kind, on_error)
