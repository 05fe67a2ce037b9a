"""What the runbook greps in logs/ai_router.log is really there, and secrets never are."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.conftest import LEAD, read_log
from tools.ports import free_port

V2 = "/ai/router/v2"


def test_each_request_logs_one_json_line_with_the_contract_fields(client: TestClient, log_file: Path) -> None:
    client.post(V2, json={"query": "what's their budget", "context": {"lead": LEAD}},
                headers={"X-User-ID": "rep-7", "X-Org-ID": "acme", "X-Request-ID": "req-log-1"})
    lines = read_log(log_file, lambda ls: any(x.get("request_id") == "req-log-1" for x in ls))
    line = next(x for x in lines if x.get("request_id") == "req-log-1")
    assert line["event"] == "request" and line["level"] == "INFO"
    assert (line["user_id"], line["org_id"], line["intent"], line["status"]) == ("rep-7", "acme", "rag", 200)
    assert line["latency_ms"] > 0
    assert line["model_provider"] == "local"
    raw = log_file.read_text()
    assert all(text.startswith("{") for text in raw.splitlines() if text.strip())


def test_startup_line_names_the_provider_chain_and_limiter_backend(client: TestClient, log_file: Path) -> None:
    lines = read_log(log_file, lambda ls: any(x["event"] == "router_started" for x in ls))
    start = next(x for x in lines if x["event"] == "router_started")
    assert start["provider_chain"] == "local"
    assert start["limiter_backend"] == "memory"
    # Missing keys are said once each at start, in capitals so `grep WARN` finds them.
    disabled = [x for x in lines if x["event"] == "provider_disabled"]
    assert {x["model_provider"] for x in disabled} == {"gemini", "openai"}
    assert all(x["level"] == "WARNING" for x in disabled)
    assert '"level":"WARNING"' in log_file.read_text()


def test_refusals_log_a_warning_line_with_429_user_org_and_bucket(make_client, log_file: Path) -> None:
    client = make_client(ai_rate_limit_per_min=2)
    codes = [client.post(V2, json={"query": "hi"}, headers={"X-User-ID": "rep-9", "X-Org-ID": "acme"}).status_code
             for _ in range(3)]
    assert codes == [200, 200, 429]
    lines = read_log(log_file, lambda ls: any(x.get("status") == 429 for x in ls))
    refusal = next(x for x in lines if x.get("status") == 429)
    assert refusal["level"] == "WARNING" and refusal["event"] == "rate_limited"
    assert (refusal["user_id"], refusal["org_id"], refusal["bucket"]) == ("rep-9", "acme", "burst")
    assert refusal["retry_after"] == 30
    assert any("429" in text for text in log_file.read_text().splitlines())


def test_missing_user_id_warns_once_per_client(client: TestClient, log_file: Path) -> None:
    for _ in range(3):
        assert client.post(V2, json={"query": "hi"}).status_code == 200
    lines = read_log(log_file, lambda ls: sum(x.get("event") == "request" for x in ls) >= 3)
    warnings = [x for x in lines if x["event"] == "missing_user_id"]
    assert len(warnings) == 1 and warnings[0]["level"] == "WARNING"


def test_latency_summary_carries_p95_and_p99_and_warns_on_an_slo_breach(make_client, log_file: Path) -> None:
    client = make_client(ivy_latency_summary_seconds=0.1)
    client.post(V2, json={"query": "hello"}, headers={"X-User-ID": "rep-1"})
    # Feed the real histogram a slow rag minute, as a slow provider would.
    state = client.app_state["ivy"]
    for _ in range(20):
        state.metrics.request_latency.labels("v2", "rag", "gemini").observe(2.6)
    lines = read_log(log_file, lambda ls: any(x["event"] == "latency_slo_breach" for x in ls))
    summary = next(x for x in lines if x["event"] == "latency_summary")
    assert "conversational_p95_ms" in summary and "conversational_p99_ms" in summary
    breach = next(x for x in lines if x["event"] == "latency_slo_breach")
    assert breach["level"] == "WARNING"
    assert (breach["intent"], breach["slo_p95_ms"]) == ("rag", 2200.0)
    assert 2500.0 < breach["p95_ms"] <= 3000.0  # interpolated in the 2.5-3 s bucket, as PromQL would


def test_latency_summary_resolves_cache_hits_of_one_to_two_ms(make_client, log_file: Path) -> None:
    client = make_client(ivy_latency_summary_seconds=0.1)
    client.post(V2, json={"query": "hello"}, headers={"X-User-ID": "rep-1"})
    state = client.app_state["ivy"]
    for ms in (1.1, 1.3, 1.4, 1.5, 1.6, 1.8, 1.9) * 10:  # answers from the cache
        state.metrics.request_latency.labels("v2", "rag", "gemini").observe(ms / 1000)
    lines = read_log(log_file, lambda ls: any("rag_p50_ms" in x for x in ls if x["event"] == "latency_summary"))
    summary = next(x for x in lines if x["event"] == "latency_summary" and "rag_p50_ms" in x)
    assert 1.0 <= summary["rag_p50_ms"] <= 2.0 and summary["rag_p95_ms"] <= 2.0  # was 12.5 and 23.8 (first edge 25 ms)


def test_api_keys_and_authorization_never_reach_logs_or_responses(make_client, log_file: Path) -> None:
    openai_key = "sk-test-KNOWNSECRET-0123456789abcdef"
    gemini_key = "AIzaKNOWNSECRETgeminikey0123456789"
    port = free_port()  # a port nobody listens on
    client = make_client(
        active_model="openai", openai_api_key=openai_key, gemini_api_key=gemini_key,
        openai_base_url=f"http://127.0.0.1:{port}/v1", gemini_base_url=f"http://127.0.0.1:{port}",
    )
    seen = []
    for query in ("hello", "what's their budget", "draft an email to dana"):
        r = client.post(V2, json={"query": query, "context": {"lead": LEAD}},
                        headers={"X-User-ID": "rep-1", "Authorization": f"Bearer {openai_key}"})
        assert r.status_code == 200
        assert r.json()["fallback"]["used"] is True
        seen.append(r.text + str(r.headers))
    seen += [client.get(p).text for p in ("/ai/router/health", "/metrics", "/health")]
    lines = read_log(log_file, lambda ls: sum(x.get("event") == "provider_call" for x in ls) >= 2)
    assert any(x.get("event") == "provider_call" for x in lines)  # the failures were logged...
    everything = log_file.read_text() + "".join(seen)
    for secret in (openai_key, gemini_key, "KNOWNSECRET"):
        assert secret not in everything  # ...without the keys


def test_streamed_request_line_names_the_provider_that_answered(client: TestClient, log_file: Path) -> None:
    client.post(V2, json={"query": "what's their budget", "context": {"lead": LEAD}, "stream": True},
                headers={"X-User-ID": "rep-7", "X-Request-ID": "req-stream-1"})
    lines = read_log(log_file, lambda ls: any(x.get("request_id") == "req-stream-1" for x in ls))
    line = next(x for x in lines if x.get("request_id") == "req-stream-1")
    assert (line["intent"], line["model_provider"], line["status"]) == ("rag", "local", 200)


def test_without_size_rotation_the_log_survives_logrotate_moving_it(make_client, log_file: Path) -> None:
    client = make_client(ivy_log_max_bytes=0)
    client.post(V2, json={"query": "hi"}, headers={"X-User-ID": "rep-1", "X-Request-ID": "req-before"})
    read_log(log_file, lambda ls: any(x.get("request_id") == "req-before" for x in ls))
    log_file.rename(log_file.with_suffix(".log.1"))  # what logrotate does
    client.post(V2, json={"query": "hi"}, headers={"X-User-ID": "rep-1", "X-Request-ID": "req-after"})
    lines = read_log(log_file, lambda ls: any(x.get("request_id") == "req-after" for x in ls))
    assert [x["request_id"] for x in lines if x.get("event") == "request"] == ["req-after"]


def test_redaction_reaches_nested_keys_and_key_shaped_values_and_leaves_the_rest_alone() -> None:
    from app.observability.logging import redact_secrets

    key = "sk-proj-" + "a1B2" * 6
    event = {
        "OPENAI_API_KEY": key, "headers": {"Authorization": "Bearer abc.def", "accept": "json"},
        "error": f"HTTP 401 for key {key}", "notes": ["plain", "token Bearer xyz123"],
        "status": 200, "latency_ms": 1.5, "org_id": None, "used": True, "user_id": "rep-sk",
    }
    out = redact_secrets(None, "info", dict(event))
    assert out["OPENAI_API_KEY"] == "[REDACTED]"
    assert out["headers"] == {"Authorization": "[REDACTED]", "accept": "json"}
    assert out["error"] == "HTTP 401 for key [REDACTED]"
    assert out["notes"] == ["plain", "token [REDACTED]"]
    assert {k: out[k] for k in ("status", "latency_ms", "org_id", "used", "user_id")} == {
        "status": 200, "latency_ms": 1.5, "org_id": None, "used": True, "user_id": "rep-sk"}
    assert key not in repr(out)


@pytest.mark.parametrize("raw", [b"rep\x85x", "rep\u2028x".encode(), b"rep\x1bx", b"rep\x7fx"])
def test_identity_values_reach_the_log_line_printable_with_line_breaks_and_controls_escaped(
        client: TestClient, log_file: Path, raw: bytes) -> None:
    r = client.post("/ai/router/v2", json={"query": "hi"}, headers=[
        (b"x-user-id", raw), (b"x-org-id", raw), (b"x-request-id", b"req-printable")])
    assert r.status_code == 200
    lines = read_log(log_file, lambda ls: any(x.get("request_id") == "req-printable" for x in ls))
    line = next(x for x in lines if x.get("request_id") == "req-printable")
    assert line["user_id"].isprintable() and line["org_id"].isprintable()
    assert line["user_id"].startswith("rep") and "\\x" in line["user_id"] and line["user_id"].endswith("x")
    text = log_file.read_text(encoding="utf-8")
    assert len(text.splitlines()) == len(text.split("\n")) - 1  # no Unicode line break inside a line


def test_a_request_lines_fields_follow_its_first_ones_in_order_and_leave_out_what_is_unset() -> None:
    from app.api.context import RequestContext
    from app.safety.flags import SafetyReport

    ctx = RequestContext("req-1", user_id="rep-7", intent="rag", provider="gemini", model="gemini-2.5-flash",
                         hedged=False, provider_calls=1, usage={"input": 3, "output": 5}, cache="miss",
                         safety=SafetyReport(secrets_masked=2))
    fields = ctx.log_fields({"request_id": "req-1", "status": 200})
    assert list(fields.items()) == [
        ("request_id", "req-1"), ("status", 200), ("user_id", "rep-7"), ("org_id", None), ("intent", "rag"),
        ("model_provider", "gemini"), ("model", "gemini-2.5-flash"), ("hedged", False), ("provider_calls", 1),
        ("usage", {"input": 3, "output": 5}), ("cache", "miss"), ("crm_masked", 2)]
    assert list(RequestContext("req-2").log_fields().items()) == [
        ("user_id", None), ("org_id", None), ("intent", "none"), ("model_provider", "none")]


@pytest.mark.parametrize("ns", [
    1_796_684_769_732_832_123,  # 2026-12-07T23:06:09.732832
    1_796_684_769_000_000_999,  # a whole second: isoformat() writes no fraction
    1_796_684_769_000_001_000,
    1_798_761_599_999_999_999,  # the last microsecond of 2026
    1_798_761_600_000_000_000,
    0,
])
def test_a_lines_timestamp_is_what_an_iso_utc_stamper_writes_for_that_instant(ns: int) -> None:
    import datetime

    from app.observability.logging import _Stamp

    clock = iter([ns, ns - 1_000_000_000, ns])  # a second back and forth: the cached second follows
    stamp = _Stamp(lambda: next(clock))
    for at in (ns, ns - 1_000_000_000, ns):
        # structlog's TimeStamper(fmt="iso", utc=True): datetime.now(utc).isoformat(), +00:00 as Z
        instant = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC) + datetime.timedelta(microseconds=at // 1000)
        assert stamp(None, "info", {})["ts"] == instant.isoformat().replace("+00:00", "Z")
