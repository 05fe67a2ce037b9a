"""Bad input gets a 4xx with {"error": {"code", "message"}}, never a 500; a real bug gets a clean 500."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.conftest import read_log

V2 = "/ai/router/v2"
H = {"X-User-ID": "rep-bad", "Content-Type": "application/json"}


def assert_error(r, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code
    assert err["message"]
    assert err["request_id"] == r.headers["x-request-id"]
    return err


def test_malformed_json_is_a_400(client: TestClient) -> None:
    assert_error(client.post(V2, content=b"{not json", headers=H), 400, "invalid_json")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"context": {}}, "query"),
        ({"query": "", "context": {}}, "query"),
        ({"query": "   \n ", "context": {}}, "query"),
        ({"query": "x" * 8001, "context": {}}, "query"),
        ({"query": 42, "context": {}}, "query"),
        ({"query": "hi", "context": ["not", "an", "object"]}, "context"),
        ({"query": "hi", "context": "lead"}, "context"),
        ({"query": "hi", "stream": "yes"}, "stream"),
    ],
)
def test_invalid_fields_are_a_422_naming_the_field(client: TestClient, body: dict, field: str) -> None:
    err = assert_error(client.post(V2, json=body, headers=H), 422, "validation_error")
    assert field in err["message"]
    assert any(f["field"] == field for f in err["fields"])


def test_a_json_array_body_is_a_422(client: TestClient) -> None:
    assert_error(client.post(V2, json=["query"], headers=H), 422, "validation_error")


def test_query_of_8000_chars_is_accepted_and_trimmed_and_the_documented_limits_hold(client: TestClient) -> None:
    assert client.post(V2, json={"query": "  " + "a" * 7996 + "  "}, headers=H).status_code == 200
    assert client.post(V2, json={"query": "  " + "a" * 7997 + "  "}, headers=H).status_code == 422  # 8001 as sent
    schema = client.get("/openapi.json").json()["components"]["schemas"]["RouterRequest"]["properties"]["query"]
    assert (schema["minLength"], schema["maxLength"]) == (1, 8000)
    import re
    assert re.search(schema["pattern"], " \t\n ") is None and re.search(schema["pattern"], "\u00a0")
    assert client.post(V2, json={"query": "\u00a0"}, headers=H).status_code == 200  # not blank by the pattern


def test_body_over_the_size_limit_is_a_413(client: TestClient) -> None:
    r = client.post(V2, json={"query": "x" * 200_000, "context": {}}, headers=H)
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "payload_too_large"


def test_chunked_body_over_the_size_limit_is_a_413(client: TestClient) -> None:
    def chunks():
        yield b'{"query": "'
        for _ in range(100):
            yield b"x" * 1024
        yield b'"}'

    r = client.post(V2, content=chunks(), headers=H)
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "payload_too_large"


def test_oversized_user_header_is_a_422_not_a_new_key(client: TestClient) -> None:
    r = client.post(V2, json={"query": "hi"}, headers={"X-User-ID": "u" * 5000})
    assert_error(r, 422, "validation_error")


def test_unknown_path_and_wrong_method_use_the_error_shape(client: TestClient) -> None:
    assert_error(client.get("/nope"), 404, "not_found")
    assert_error(client.get(V2), 405, "method_not_allowed")


def test_unexpected_exception_is_a_500_with_request_id_and_a_logged_traceback(make_settings, log_file: Path) -> None:
    app = create_app(make_settings())

    async def boom() -> None:
        raise RuntimeError("kaboom")

    app.add_api_route("/boom", boom)
    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.get("/boom", headers={"X-Request-ID": "req-boom"})
        assert r.status_code == 500
        assert r.json()["error"] == {"code": "internal_error", "request_id": "req-boom",
                                     "message": "internal error; quote the request_id when reporting"}
        lines = read_log(log_file, lambda ls: any(x["event"] == "unhandled_exception" for x in ls))
    err = next(x for x in lines if x["event"] == "unhandled_exception")
    assert err["level"] == "ERROR"
    assert err["request_id"] == "req-boom"
    assert "RuntimeError: kaboom" in err["exception"] and "Traceback" in err["exception"]


def test_bad_requests_are_logged_with_their_status(client: TestClient, log_file: Path) -> None:
    client.post(V2, content=b"{not json", headers={**H, "X-Request-ID": "req-malformed"})
    lines = read_log(log_file, lambda ls: any(x.get("request_id") == "req-malformed" for x in ls))
    line = next(x for x in lines if x.get("request_id") == "req-malformed")
    assert line["status"] == 400
    assert line["code"] == "invalid_json"


def test_a_failure_inside_the_router_endpoint_is_a_500_with_request_id_and_a_logged_traceback(
        client: TestClient, log_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Fault injection: the router endpoints are served outside FastAPI's stack, so they must
    # catch what FastAPI's ServerErrorMiddleware would.
    async def broken(*_: object, **__: object) -> AsyncIterator[object]:
        raise RuntimeError("pipeline exploded")
        yield  # an async generator, like the pipeline's answer

    monkeypatch.setattr("app.pipeline.answer", broken)
    r = client.post(V2, json={"query": "hello"}, headers={**H, "X-Request-ID": "req-exploded"})
    err = assert_error(r, 500, "internal_error")
    assert err["message"] == "internal error; quote the request_id when reporting"
    lines = read_log(log_file, lambda ls: any(x.get("event") == "unhandled_exception" for x in ls))
    logged = next(x for x in lines if x["event"] == "unhandled_exception")
    assert logged["request_id"] == "req-exploded" and "RuntimeError: pipeline exploded" in logged["exception"]
    request_line = next(x for x in read_log(log_file, lambda ls: any(
        x.get("event") == "request" and x.get("request_id") == "req-exploded" for x in ls))
        if x.get("event") == "request" and x.get("request_id") == "req-exploded")
    assert request_line["status"] == 500 and request_line["level"] == "ERROR"


def test_a_client_gone_before_its_body_arrives_gets_no_answer_and_is_logged_as_499(
        client: TestClient, log_file: Path) -> None:
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": V2, "raw_path": V2.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"x-request-id", b"req-gone"), (b"x-user-id", b"rep-gone"),
                         (b"content-type", b"application/json")],
             "client": ("127.0.0.1", 5000), "server": ("testserver", 80), "state": dict(client.app_state)}
    assert client.portal is not None
    client.portal.call(client.app, scope, receive, send)
    assert sent == []
    lines = read_log(log_file, lambda ls: any(x.get("request_id") == "req-gone" for x in ls))
    line = next(x for x in lines if x.get("request_id") == "req-gone")
    assert line["status"] == 499 and line["level"] == "INFO"


@pytest.mark.parametrize("content_type", [
    "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "application/xml", None])
@pytest.mark.parametrize("path", [V2, "/ai/router/"])
def test_a_body_not_declared_json_is_a_415_in_the_one_error_shape(
        client: TestClient, path: str, content_type: str | None) -> None:
    # A cross-site form (or a text/plain fetch) can post without a preflight: it is never served.
    headers = {"X-User-ID": "rep-form"} | ({"Content-Type": content_type} if content_type else {})
    r = client.post(path, content=b'{"query": "hello"}', headers=headers)
    err = assert_error(r, 415, "unsupported_media_type")
    assert "application/json" in err["message"]


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "APPLICATION/JSON",
                                          "application/vnd.ivy.router+json"])
def test_json_and_plus_json_media_types_are_served(client: TestClient, content_type: str) -> None:
    r = client.post(V2, content=b'{"query": "hello"}', headers={"X-User-ID": "rep-json", "Content-Type": content_type})
    assert r.status_code == 200, r.text
