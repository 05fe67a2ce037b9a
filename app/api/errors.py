"""One error base class that carries its HTTP status; one handler renders every error the same way.

Every error response is ``{"error": {"code", "message", "request_id", ...}}``.
"""

from __future__ import annotations

from collections.abc import Sequence
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


class UnsupportedMediaType(IvyError):
    status_code = 415
    code = "unsupported_media_type"


class ShuttingDown(IvyError):
    status_code = 503
    code = "shutting_down"


class RateLimited(IvyError):
    status_code = 429
    code = "rate_limited"


class Unauthorized(IvyError):
    status_code = 401
    code = "unauthorized"


class NotFound(IvyError):
    status_code = 404
    code = "not_found"


class MethodNotAllowed(IvyError):
    status_code = 405
    code = "method_not_allowed"


def _request_id(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


def error_payload(exc: IvyError, request_id: str | None) -> dict[str, Any]:
    """The one error shape: ``{"error": {code, message, request_id, ...details}}``."""
    body: dict[str, Any] = {"code": exc.code, "message": exc.message, "request_id": request_id}
    body.update(exc.details)
    return {"error": body}


def error_response(request: Request, exc: IvyError) -> FastJSONResponse:
    request.state.error_code = exc.code
    return FastJSONResponse(error_payload(exc, _request_id(request)), status_code=exc.status_code,
                            headers=exc.headers)


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


INTERNAL_ERROR_MESSAGE = "internal error; quote the request_id when reporting"


def install_error_handlers(app: FastAPI) -> None:
    async def on_ivy_error(request: Request, exc: Exception) -> FastJSONResponse:
        assert isinstance(exc, IvyError)
        if exc.status_code >= 500:
            log.error("request_failed", code=exc.code, message=exc.message, request_id=_request_id(request))
        return error_response(request, exc)

    async def on_validation(request: Request, exc: Exception) -> FastJSONResponse:
        assert isinstance(exc, RequestValidationError)
        return error_response(request, from_validation_errors(exc.errors()))

    async def on_http(request: Request, exc: Exception) -> FastJSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        error = from_http_exception(exc)
        if exc.status_code == 405 and (allowed := allowed_methods(request)):
            error.headers["Allow"] = allowed  # the router names one route's methods; RFC 9110 wants them all
        return error_response(request, error)

    async def on_unexpected(request: Request, exc: Exception) -> FastJSONResponse:
        log.error("unhandled_exception", request_id=_request_id(request), path=request.url.path,
                  error=type(exc).__name__, exc_info=exc)
        return error_response(request, IvyError(INTERNAL_ERROR_MESSAGE))

    app.add_exception_handler(IvyError, on_ivy_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_unexpected)
