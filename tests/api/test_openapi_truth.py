"""/openapi.json tells the truth: schemathesis (every check) against a real server finds nothing, and
the mismatches it once found stay fixed."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import jwt
import pytest
from fastapi.testclient import TestClient

from tests.support import spawn_uvicorn, stop_process

ADMIN = "admin-token-0123456789abcdef"
SECRET = "schemathesis-secret-of-at-least-32-chars"
SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"


def _schemathesis(base: str, tmp_path: Path, token: str, examples: int, seconds: int,
                  *only: str) -> subprocess.CompletedProcess[str]:
    """One run bounded by the examples per operation (with --max-time, fuzzing would fill the budget)."""
    return subprocess.run(
        [str(SCHEMATHESIS), "run", base + "/openapi.json", "--checks", "all", "--max-examples", str(examples),
         "--seed", "20261128", "--no-shrink", "--request-timeout", "10",
         "--header", f"Authorization: Bearer {token}", *only],
        cwd=tmp_path, capture_output=True, text=True, timeout=seconds, check=False,
    )


# off: every operation, the admin ones with their token. jwt: the router endpoints with a valid token
# (schemathesis keeps fuzzing operations that only ever answer 401/403, so the admin ones are left out).
@pytest.mark.parametrize(("mode", "examples", "seconds", "only"), [
    ("off", 30, 60, ()), ("jwt", 15, 40, ("--include-path-regex", "^/ai/router/(v2)?$"))])
def test_schemathesis_with_every_check_finds_no_failure_against_a_real_server(
        tmp_path: Path, mode: str, examples: int, seconds: int, only: tuple[str, ...]) -> None:
    token = ADMIN if mode == "off" else jwt.encode({"sub": "st", "exp": int(time.time()) + 600}, SECRET, "HS256")
    env = {"IVY_LOG_FILE": str(tmp_path / "ai_router.log"), "IVY_ADMIN_TOKEN": ADMIN, "IVY_AUTH_MODE": mode,
           "IVY_JWT_SECRET": SECRET, "AI_RATE_LIMIT_PER_MIN": "1000000", "AI_ORG_RATE_LIMIT_PER_MIN": "1000000"}
    proc, base = spawn_uvicorn(env, stderr=tmp_path / "stderr.log")
    try:
        run = _schemathesis(base, tmp_path, token, examples, seconds, *only)
    finally:
        stop_process(proc)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert "No issues found" in run.stdout or " passed" in run.stdout.splitlines()[-1], run.stdout[-3000:]
    assert "failure" not in run.stdout.splitlines()[-1]


def test_the_405_allow_header_names_every_method_of_the_path(client: TestClient) -> None:
    r = client.options("/admin/flags")
    assert r.status_code == 405
    assert r.headers["allow"] == "DELETE, GET, PUT"
    assert client.get("/ai/router/v2").headers["allow"] == "POST"


def test_the_spec_documents_metrics_as_text_the_lone_set_by_400_and_events_as_events(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert list(spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == ["text/plain"]
    put = spec["paths"]["/admin/flags"]["put"]
    assert "400" in put["responses"]
    assert client.put("/admin/flags", json={"set_by": "me"}).status_code == 404  # admin off here; see below
    sse = spec["paths"]["/ai/router/v2"]["post"]["responses"]["200"]["content"]["text/event-stream"]["schema"]
    assert sse["type"] == "object" and sse["properties"]["event"]["enum"] == ["meta", "delta", "done", "error"]
    for code in ("401", "403", "415"):
        assert code in spec["paths"]["/ai/router/v2"]["post"]["responses"]
    assert "HTTPValidationError" not in str(spec)


def test_a_lone_set_by_is_the_documented_400_and_a_null_flag_a_422(make_client) -> None:
    client = make_client(ivy_admin_token=ADMIN)
    auth = {"Authorization": f"Bearer {ADMIN}"}
    assert client.put("/admin/flags", json={"set_by": "me"}, headers=auth).status_code == 400
    assert client.put("/admin/flags", json={"IVY_ORGANIC_ENABLED": None, "set_by": "me"}, headers=auth
                      ).status_code == 422


def test_an_over_long_request_id_is_replaced_as_documented(client: TestClient) -> None:
    header = next(p for p in client.get("/openapi.json").json()["paths"]["/ai/router/v2"]["post"]["parameters"]
                  if p["name"] == "X-Request-ID")
    assert "maxLength" not in header["schema"] and "replaced" in header["description"]
    r = client.post("/ai/router/v2", json={"query": "hi"}, headers={"X-Request-ID": "r" * 129})
    assert r.status_code == 200 and r.headers["x-request-id"] != "r" * 129 and len(r.headers["x-request-id"]) == 32


def test_the_documented_events_are_the_ones_a_stream_sends(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    sse = spec["paths"]["/ai/router/v2"]["post"]["responses"]["200"]["content"]["text/event-stream"]["schema"]
    documented = {b["properties"]["event"]["const"]: b["properties"]["data"]["contentSchema"] for b in sse["oneOf"]}
    assert documented["done"] == {"$ref": "#/components/schemas/RouterResponse"}  # the JSON answer, no less
    r = client.post("/ai/router/v2", json={"query": "what's the refund policy?", "stream": True},
                    headers={"X-User-ID": "rep-1"})
    assert r.status_code == 200
    for block in r.text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.split("\n"))
        data = json.loads(fields["data"])
        schema = documented[fields["event"]]
        if "$ref" in schema:
            schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
        assert set(schema.get("required", [])) <= set(data) <= set(schema["properties"]), fields["event"]
