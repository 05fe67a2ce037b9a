"""The runbook's text greps, run with grep itself on the log file of a real server: `grep "429"` finds
the rate-limit lines and nothing else, `grep -i error` the errors and not the refusals, whatever
ids, users, timestamps and latencies the lines carry (app/observability/greppable.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.observability.greppable import guard
from tests.support import ROOT, spawn_uvicorn, stop_process
from tools.ports import free_port

V2 = "/ai/router/v2"


@pytest.fixture
def fake_provider() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tools.fake_provider", "--port", str(port)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                httpx.get(base + "/_fake/health", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.05)
        yield base
    finally:
        proc.terminate()
        proc.wait(10)


def grep(*args: str, path: Path) -> list[dict[str, Any]]:
    out = subprocess.run(["grep", *args, str(path)], capture_output=True, text=True, check=False)
    assert out.returncode in (0, 1), out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


def is_rate_limit_line(line: dict[str, Any]) -> bool:
    return line.get("status") == 429 or line.get("outcome") == "rate_limited"


def is_error_line(line: dict[str, Any]) -> bool:
    return line["level"] == "ERROR" or "error" in line


def test_grep_429_and_grep_i_error_tell_the_truth_on_a_real_servers_log(tmp_path: Path, fake_provider: str) -> None:
    log_file = tmp_path / "ai_router.log"
    proc, base = spawn_uvicorn({
        "IVY_LOG_FILE": str(log_file), "AI_RATE_LIMIT_PER_MIN": "3", "GEMINI_API_KEY": "grep-test-key-0001",
        "GEMINI_BASE_URL": fake_provider, "IVY_BREAKER_CONSECUTIVE": "100", "IVY_BREAKER_MIN_CALLS": "100"})
    try:
        with httpx.Client(base_url=base, timeout=20) as client:
            def ask(user: str, query: str = "hello", **headers: str) -> int:
                return client.post(V2, json={"query": query}, headers={"X-User-ID": user, **headers}).status_code

            # Answered requests whose values hold both tokens, and enough plain ones that some
            # timestamps and latencies do too.
            assert ask("rep-429", **{"X-Request-ID": "req-429-supplied", "X-Org-ID": "org-429"}) == 200
            assert ask("Error-Bot", "what's the error in my forecast?") == 200
            assert [ask(f"rep-{i}") for i in range(60)] == [200] * 60
            # Refusals: a user over AI_RATE_LIMIT_PER_MIN=3, a body without a query.
            assert [ask("limited") for _ in range(5)] == [200, 200, 200, 429, 429]
            assert client.post(V2, json={"context": {}}, headers={"X-User-ID": "rep-x"}).status_code == 422
            # Errors: the provider fails three ways (each request still answered, by `local`).
            # The provider's 429 opens its breaker for its Retry-After (0.1 s): the next call waits it out.
            for fault in ({"kind": "http_error", "status": 503}, {"kind": "rate_limit", "retry_after": 0.1},
                          {"kind": "bad_key"}):
                httpx.post(fake_provider + "/_fake/fault", json={**fault, "times": 1}).raise_for_status()
                assert ask("rep-fault", "hello again") == 200
                time.sleep(0.3)
    finally:
        stop_process(proc)

    lines = [json.loads(text) for text in log_file.read_text(encoding="utf-8").splitlines()]
    refusals = [x for x in lines if is_rate_limit_line(x)]
    errors = [x for x in lines if is_error_line(x)]
    assert {x["event"] for x in refusals} == {"rate_limited", "provider_call"}  # ours and the provider's 429
    assert {"provider_call", "provider_auth_rejected"} <= {x["event"] for x in errors}

    assert grep("429", path=log_file) == refusals
    assert grep("-i", "error", path=log_file) == errors
    assert not [x for x in grep("-i", "error", path=log_file) if x.get("event") == "rate_limited"]
    # The hidden values are still there for any JSON reader (jq, this test).
    supplied = next(x for x in lines if x.get("request_id") == "req-429-supplied")
    assert (supplied["status"], supplied["user_id"], supplied["org_id"]) == (200, "rep-429", "org-429")
    assert any(x.get("user_id") == "Error-Bot" and x["status"] == 200 for x in lines)
    assert any(x.get("code") == "validation_error" and x["status"] == 422 for x in lines)
    assert sum(x.get("path") == V2 for x in lines) == 1 + 1 + 60 + 5 + 1 + 3  # one line per request


def test_the_guard_hides_the_tokens_only_where_a_line_may_not_show_them_and_keeps_every_value() -> None:
    answered = {"event": "request", "level": "INFO", "status": 200, "request_id": "req-429-x", "latency_ms": 1429.37,
                "usage": {"input": 429, "output": 12}, "fallback": "provider_error", "user_id": "Error-Bot",
                "ts": "2026-01-01T00:00:01.429113Z", "ratio": 0.0429, "delta": -4290, "nested": {"error_key": ["x429"]}}
    refused = {"event": "rate_limited", "level": "WARNING", "status": 429, "user_id": "error-429"}
    failed = {"event": "provider_call", "level": "WARNING", "error": "HTTP 503", "latency_ms": 429.0}
    for event, shows_429, shows_error in ((answered, False, False), (refused, True, False), (failed, False, True)):
        line = guard(event, json.dumps(event, separators=(",", ":")))
        assert ("429" in line) is shows_429
        assert ("error" in line.lower()) is shows_error
        assert json.loads(line) == event  # the same values for every JSON reader (429 == 429.0)


def test_a_number_holding_429_twice_is_kept_as_its_digits_in_a_string() -> None:
    event = {"event": "router_stopped", "level": "INFO", "uptime_seconds": 429429.5}
    line = guard(event, json.dumps(event))
    assert "429" not in line and json.loads(line)["uptime_seconds"] == "429429.5"


def test_lines_without_either_token_are_left_exactly_as_rendered() -> None:
    raw = '{"event":"request","level":"INFO","status":200,"latency_ms":12.5}'
    assert guard(json.loads(raw), raw) is raw
