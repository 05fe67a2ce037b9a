"""The ASGI entry point: `python -m uvicorn app.main:app`. It builds the app and nothing else.

`create_app(settings)` wires the lifespan (the core's State from app/state.py, the HTTP layer's
services from app/api/services.py) into the HTTP surface (app/api/asgi.py). `app` is built on
first access, so `from app.main import create_app` builds nothing from whatever `.env` is around;
a bad setting refuses the start with one line naming the variable.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from fastapi import FastAPI

from app import pipeline
from app.api.asgi import IvyAPI, assemble
from app.api.auth import Authenticator
from app.api.door import Door
from app.api.peers import own_forwarded_headers
from app.api.router_endpoints import ENDPOINTS
from app.api.services import SERVICES, ApiServices
from app.api.serving import watch_server
from app.config import ConfigError, Settings, load_settings
from app.gc_tuning import tune_gc
from app.observability.logging import configure_logging, get_logger, shutdown_logging
from app.observability.otlp import Deliver
from app.observability.redaction import register_secrets
from app.observability.tracing import build_tracing
from app.state import running_state


def create_app(settings: Settings | None = None, *, span_exporter: Deliver | None = None) -> IvyAPI:
    """The app. `span_exporter(body, timeout)` receives each encoded OTLP export instead of the
    POST, tracing on whatever the settings say (the tests decode what it receives)."""
    if settings is None:
        try:
            settings = load_settings()
        except ConfigError as exc:
            print(str(exc), file=sys.stderr, flush=True)
            raise SystemExit(2) from None
    resolved = settings
    register_secrets(*resolved.secret_values())

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[dict[str, Any]]:
        configure_logging(resolved.ivy_log_file, level=resolved.ivy_log_level,
                          max_bytes=resolved.ivy_log_max_bytes, backups=resolved.ivy_log_backups)
        tracing = build_tracing(resolved, span_exporter, warn=get_logger().warning)
        if tracing is not None:
            get_logger().info("tracing_started", endpoint=resolved.otel_traces_endpoint or "in-process exporter",
                              service_name=resolved.otel_service_name, sampler=resolved.otel_traces_sampler,
                              sampler_arg=resolved.otel_traces_sampler_arg)
        try:
            async with running_state(resolved) as state, contextlib.AsyncExitStack() as stack:
                peers = own_forwarded_headers(resolved)
                auth = Authenticator(resolved, state.http, peers=peers) if resolved.ivy_auth_mode == "jwt" else None
                if auth is not None:
                    await auth.start()
                    stack.push_async_callback(auth.aclose)
                services = ApiServices(auth=auth, peers=peers, tracing=tracing,
                                       door=Door(state.admission, state.metrics, ENDPOINTS))
                if (watch := watch_server(resolved, services.drain)) is not None:
                    await stack.enter_async_context(_background(watch.run()))
                await stack.enter_async_context(_background(pipeline.warm_cache(state)))
                stack.callback(tune_gc(resolved.ivy_gc_gen0_threshold))
                yield {"ivy": state, SERVICES: services}
        finally:
            if tracing is not None:
                tracing.shutdown()  # after the last request: what it traced is flushed (bounded)
            shutdown_logging()

    return assemble(resolved, lifespan)


@contextlib.asynccontextmanager
async def _background(coro: Coroutine[Any, Any, None]) -> AsyncIterator[None]:
    task = asyncio.create_task(coro)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def __getattr__(name: str) -> IvyAPI:
    # `app.main:app` for uvicorn: built on first access, once.
    if name == "app":
        app = create_app()
        globals()["app"] = app
        return app
    raise AttributeError(name)
