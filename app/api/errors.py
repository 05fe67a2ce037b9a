"""One error base class that carries its HTTP status; one handler renders every error the same way.

Every error response is ``{"error": {"code", "message", "request_id", ...}}``.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.api.responses import FastJSONResponse
from app.observability.logging import get_logger

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


class RateLimited(IvyError):
    status_code = 429
    code = "rate_limited"


class Unauthorized(IvyError):
    status_code = 401
    code = "unauthorized"


class NotFound(IvyError):
    status_code = 404
    code = "not_found"


def _request_id(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


def error_response(request: Request, exc: IvyError) -> FastJSONResponse:
    body: dict[str, Any] = {"code": exc.code, "message": exc.message, "request_id": _request_id(request)}
    body.update(exc.details)
    request.state.error_code = exc.code
    return FastJSONResponse({"error": body}, status_code=exc.status_code, headers=exc.headers)


def _describe_validation(exc: RequestValidationError) -> tuple[str, list[dict[str, Any]]]:
    problems = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        problems.append({"field": loc or "body", "message": err.get("msg", "invalid")})
    summary = "; ".join(f"{p['field']}: {p['message']}" for p in problems[:5])
    return summary or "invalid request", problems


def install_error_handlers(app: FastAPI) -> None:
    async def on_ivy_error(request: Request, exc: Exception) -> FastJSONResponse:
        assert isinstance(exc, IvyError)
        if exc.status_code >= 500:
            log.error("request_failed", code=exc.code, message=exc.message, request_id=_request_id(request))
        return error_response(request, exc)

    async def on_validation(request: Request, exc: Exception) -> FastJSONResponse:
        assert isinstance(exc, RequestValidationError)
        if any(e.get("type") == "json_invalid" for e in exc.errors()):
            return error_response(request, InvalidJSON("the body is not valid JSON"))
        message, problems = _describe_validation(exc)
        return error_response(request, ValidationFailed(message, fields=problems))

    async def on_http(request: Request, exc: Exception) -> FastJSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        err = IvyError(str(exc.detail), headers=dict(exc.headers or {}))
        err.status_code = exc.status_code
        codes = {404: "not_found", 405: "method_not_allowed", 413: PayloadTooLarge.code}
        err.code = codes.get(exc.status_code, "http_error")
        return error_response(request, err)

    async def on_unexpected(request: Request, exc: Exception) -> FastJSONResponse:
        log.error("unhandled_exception", request_id=_request_id(request), path=request.url.path,
                  error=type(exc).__name__, exc_info=exc)
        return error_response(request, IvyError("internal error; quote the request_id when reporting"))

    app.add_exception_handler(IvyError, on_ivy_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_unexpected)
