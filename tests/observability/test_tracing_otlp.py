"""End to end: the router, as operators start it, exports its spans over OTLP/HTTP to a real tracing
backend (Arize Phoenix, started here from .venv-phoenix, which scripts/test.sh installs), and the
spans are read back from Phoenix's REST API, continuing the caller's trace and named by the
router's log lines. The spans are flushed when the router stops (no wait for the batch delay)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import FakeProviderThread
from tests.support import ROOT, spawn_uvicorn, stop_process
from tools.ports import free_port

PHOENIX = ROOT / ".venv-phoenix" / "bin" / "phoenix"
PROJECT = "ivy-e2e"
V2 = "/ai/router/v2"
CALLER_TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"


@pytest.fixture(scope="module")
def phoenix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    assert PHOENIX.exists(), "the OTLP receiver is missing: `bash scripts/test.sh` installs it (.venv-phoenix)"
    work = tmp_path_factory.mktemp("phoenix")
    port = free_port()
    env = {**os.environ, "PHOENIX_HOST": "127.0.0.1", "PHOENIX_PORT": str(port), "PHOENIX_GRPC_PORT": str(free_port()),
           "PHOENIX_WORKING_DIR": str(work), "PHOENIX_TELEMETRY_ENABLED": "false",
           "PHOENIX_ALLOW_EXTERNAL_RESOURCES": "false"}
    with (work / "phoenix.out").open("wb") as out:
        proc = subprocess.Popen([str(PHOENIX), "serve"], env=env, cwd=work, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(1200):  # Phoenix migrates its SQLite database first: 10-30 s on a loaded machine
            assert proc.poll() is None, (work / "phoenix.out").read_text()[-2000:]
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        yield base
    finally:
        stop_process(proc)  # type: ignore[arg-type]


def spans_in(phoenix: str, enough: Callable[[list[dict[str, Any]]], bool]) -> list[dict[str, Any]]:
    """The project's spans once `enough` holds of them (Phoenix inserts them in the background)."""
    spans: list[dict[str, Any]] = []
    for _ in range(300):
        r = httpx.get(f"{phoenix}/v1/projects/{PROJECT}/spans", params={"limit": 100}, timeout=5)
        if r.status_code == 200:
            spans = r.json()["data"]
            if enough(spans):
                return spans
        time.sleep(0.1)
    return spans


def test_the_router_exports_its_request_and_attempt_spans_over_otlp_to_phoenix(
        phoenix: str, tmp_path: Path, fake_provider: FakeProviderThread) -> None:
    log_file = tmp_path / "ai_router.log"
    proc, base = spawn_uvicorn({
        "GEMINI_API_KEY": "e2e-gemini-key-0001", "GEMINI_BASE_URL": fake_provider.server.base_url,
        "IVY_LOG_FILE": str(log_file), "OTEL_EXPORTER_OTLP_ENDPOINT": phoenix, "OTEL_SERVICE_NAME": "ivy-router-e2e",
        # Phoenix files spans under the project this resource attribute names.
        "OTEL_RESOURCE_ATTRIBUTES": f"openinference.project.name={PROJECT},deployment.environment=test"})
    try:
        with httpx.Client(base_url=base, timeout=20) as client:
            continued = client.post(V2, json={"query": "what's their budget?", "context": {"lead": {"budget": 5}}},
                                    headers={"X-User-ID": "rep-e2e", "X-Org-ID": "acme", "X-Request-ID": "req-e2e-1",
                                             "traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"})
            fresh = client.post("/ai/router/", json={"query": "hello"},
                                headers={"X-User-ID": "rep-e2e", "X-Request-ID": "req-e2e-2"})
            assert (continued.status_code, fresh.status_code) == (200, 200)
            client.get("/ai/router/health")  # not a router request: no span
    finally:
        stop_process(proc)  # SIGTERM: the lifespan flushes the spans still queued

    spans = spans_in(phoenix, lambda got: sum(s["name"].startswith("chat ") for s in got) >= 2
                     and sum(s["parent_id"] is None or s["name"].startswith("POST") for s in got) >= 2)
    servers = [s for s in spans if s["name"].startswith("POST ")]
    assert sorted(s["name"] for s in servers) == ["POST /ai/router/", "POST /ai/router/v2"]
    lines = [json.loads(x) for x in log_file.read_text().splitlines()]
    trace_of = {x["request_id"]: x["trace_id"] for x in lines if x.get("path") in (V2, "/ai/router/")}
    by_request = {request_id: next(s for s in servers if s["context"]["trace_id"] == trace_id)
                  for request_id, trace_id in trace_of.items()}
    one, two = by_request["req-e2e-1"], by_request["req-e2e-2"]
    assert (one["context"]["trace_id"], one["parent_id"]) == (CALLER_TRACE, CALLER_SPAN)
    assert two["parent_id"] is None and two["context"]["trace_id"] != CALLER_TRACE
    attrs = one["attributes"]
    assert (attrs["http.route"], attrs["http.response.status_code"], attrs["ivy.intent"]) == (
        "/ai/router/v2", 200, "rag")
    assert (attrs["ivy.user_id"], attrs["ivy.org_id"], attrs["ivy.provider"]) == ("rep-e2e", "acme", "gemini")
    assert "what's their budget" not in json.dumps(spans)  # neither the query nor the fake's echo of it
    assert one["start_time"] < one["end_time"]

    # The attempt, read back: under the generate stage of request one, by the GenAI conventions.
    in_one = [s for s in spans if s["context"]["trace_id"] == CALLER_TRACE]
    (generate,) = [s for s in in_one if s["name"] == "generate"]
    (attempt,) = [s for s in in_one if s["name"] == "chat gemini-2.5-flash"]
    assert generate["parent_id"] == one["context"]["span_id"] and attempt["parent_id"] == generate["context"]["span_id"]
    a = attempt["attributes"]
    assert (a["gen_ai.operation.name"], a["gen_ai.provider.name"], a["ivy.attempt.outcome"]) == (
        "chat", "gcp.gemini", "won")
    assert a["gen_ai.usage.output_tokens"] > 0 and a["gen_ai.request.model"] == "gemini-2.5-flash"
    assert generate["start_time"] <= attempt["start_time"] < attempt["end_time"] <= generate["end_time"]

    for request_id, span in by_request.items():
        line = next(x for x in lines if x.get("request_id") == request_id)
        assert (line["trace_id"], line["span_id"]) == (span["context"]["trace_id"], span["context"]["span_id"])
    assert any(x["event"] == "tracing_started" and x["service_name"] == "ivy-router-e2e" for x in lines)
