"""The ASGI application and its assembly: what serves each request, in one place.

    client -> RequestContextMiddleware (request id, body limit, RequestContext, log line, metrics)
              ├── POST /ai/router/v2, /ai/router/ -> RouterEndpoints (plain ASGI, the fast path)
              └── every other path -> FastAPI (routing, dependencies, its middleware, its handlers)

The fast path: the two router endpoints carry all the traffic, and FastAPI's own layers
(telemetry check, body limit, exception middleware, routing, dependency solving, request
parsing, response classes) cost more per request than the rate limiter and the classifier
together; served directly, the router went from 1,550-1,660 to 2,270-2,330 requests/s at 50
connections on one core. So `IvyAPI.__call__` hands those paths to `RequestContextMiddleware`
wrapping `RouterEndpoints` before FastAPI sees them. What that means for a newcomer:
`app.add_middleware`, `app.add_exception_handler` and `app.dependency_overrides` do NOT reach the
router endpoints (tests/api/test_fast_path.py pins this); what does reach them is what this
module wraps them in. Errors on both paths are rendered by `errors.render` (one shape).
FastAPI still documents the two endpoints (`openapi()` below, from app/api/openapi.py).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.types import ASGIApp, Receive, Scope, Send

from app import __version__
from app.api.admin import router as admin_router
from app.api.errors import install_error_handlers
from app.api.middleware import RequestContextMiddleware
from app.api.openapi import add_router_endpoints, document_errors_truthfully
from app.api.router_endpoints import ENDPOINTS, RouterEndpoints
from app.api.routes import router
from app.config import Settings


class IvyAPI(FastAPI):
    """FastAPI, with the router endpoints served ahead of its own stack (see the module docstring)."""

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


def assemble(settings: Settings, lifespan: Any) -> IvyAPI:
    """The whole HTTP surface: the fast path, FastAPI's routes, one error handler, one middleware."""
    app = IvyAPI(
        router_endpoints=RequestContextMiddleware(RouterEndpoints(), max_body_bytes=settings.ivy_max_body_bytes),
        title="Ivy v2 AI router", version=__version__, lifespan=lifespan,
        description="Rate limiting, intent classification and provider failover for the CRM assistant.",
    )
    install_error_handlers(app)
    app.include_router(router)
    app.include_router(admin_router)
    app.add_middleware(RequestContextMiddleware, max_body_bytes=settings.ivy_max_body_bytes)
    return app
