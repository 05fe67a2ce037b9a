"""Bad input gets a 4xx with {"error": {"code", "message"}}, never a 500; a real bug gets a clean 500."""

from __future__ import annotations

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


def test_query_is_trimmed_and_8000_chars_is_accepted(client: TestClient) -> None:
    assert client.post(V2, json={"query": "  " + "a" * 8000 + "  "}, headers=H).status_code == 200


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
    assert line["error_code"] == "invalid_json"
