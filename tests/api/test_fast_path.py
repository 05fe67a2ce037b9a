"""What the fast path (app/api/asgi.py) passes through and what it does not: the router endpoints
run inside RequestContextMiddleware and render errors in the one shape, but FastAPI's own
middleware, exception handlers and dependency overrides never see them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from fastapi.testclient import TestClient
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.deps import get_state
from tests.conftest import read_log

V2 = "/ai/router/v2"


class Spy:
    seen: ClassVar[list[str]] = []

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            Spy.seen.append(scope["path"])
        await self.app(scope, receive, send)


def test_middleware_added_to_fastapi_never_sees_the_router_endpoints(
        make_settings: Callable[..., Any]) -> None:
    from app.main import create_app

    app = create_app(make_settings())
    app.add_middleware(Spy)
    Spy.seen = []
    with TestClient(app) as client:
        assert client.post(V2, json={"query": "hello"}, headers={"X-User-ID": "rep-1"}).status_code == 200
        assert client.get("/health").status_code == 200
    assert Spy.seen == ["/health"]


def test_dependency_overrides_and_exception_handlers_do_not_reach_the_router_endpoints(
        make_settings: Callable[..., Any]) -> None:
    from app.main import create_app

    app = create_app(make_settings())

    def broken() -> None:
        raise RuntimeError("an override")

    app.dependency_overrides[get_state] = broken
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.post(V2, json={"query": "hello"}, headers={"X-User-ID": "rep-1"}).status_code == 200
        assert client.get("/health").status_code == 500  # FastAPI's routes do use the override


def test_the_router_endpoints_pass_through_the_request_context(client: TestClient, log_file: Path) -> None:
    r = client.post(V2, json={"query": "hello"}, headers={"X-User-ID": "rep-1", "X-Request-ID": "req-fast-1"})
    assert r.headers["x-request-id"] == "req-fast-1"
    assert float(r.headers["x-ivy-overhead-ms"]) >= 0
    lines = read_log(log_file, lambda ls: any(x.get("request_id") == "req-fast-1" for x in ls))
    line = next(x for x in lines if x.get("request_id") == "req-fast-1")
    assert (line["event"], line["status"], line["user_id"], line["intent"]) == ("request", 200, "rep-1",
                                                                               "conversational")
    assert line["hedged"] is False or line["model_provider"] == "local"


def test_errors_on_both_paths_have_the_one_shape(client: TestClient) -> None:
    fast = client.post(V2, json={"context": {}}, headers={"X-User-ID": "rep-1", "X-Request-ID": "req-e1"})
    slow = client.get("/no/such/path", headers={"X-Request-ID": "req-e2"})
    too_big = client.post(V2, content=b"{" + b" " * 70_000 + b"}",
                          headers={"Content-Type": "application/json", "X-Request-ID": "req-e3"})
    for r, status, code, rid in ((fast, 422, "validation_error", "req-e1"), (slow, 404, "not_found", "req-e2"),
                                 (too_big, 413, "payload_too_large", "req-e3")):
        assert r.status_code == status
        error = r.json()["error"]
        assert (error["code"], error["request_id"]) == (code, rid)
        assert r.headers["x-request-id"] == rid
