"""Traces, structurally, as the OTLP receiver decodes them (tests/otlp.py): one server span per router request,
the caller's traceparent continued, the request's outcome on it (no query text), trace and span
ids on every log line of the request, the helpers for stage and attempt spans, nothing when off."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.api.services import SERVICES
from app.config import ConfigError, load_settings
from app.observability import tracing
from app.observability.logging import get_logger
from app.observability.tracing import build_tracing, new_span_id, new_trace_id
from tests.conftest import LEAD, read_log
from tests.otlp import Received, ReceivedSpan
from tools.ports import free_port

V2 = "/ai/router/v2"
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
QUERY = "what's their budget for the Zanzibar rollout?"

MakeTraced = Callable[..., TestClient]


@pytest.fixture
def exporter() -> Received:
    return Received()


@pytest.fixture
def traced(make_client: Callable[..., TestClient], exporter: Received) -> MakeTraced:
    return lambda **overrides: make_client(span_exporter=exporter, **overrides)


def server_spans(exporter: Received) -> list[ReceivedSpan]:
    return [s for s in exporter.get_finished_spans() if s.kind == tracing.SERVER]


def test_a_router_request_gets_one_server_span_with_its_outcome_and_no_query_text(
        traced: MakeTraced, exporter: Received) -> None:
    client = traced()
    r = client.post(V2, json={"query": QUERY, "context": {"lead": LEAD}},
                    headers={"X-User-ID": "rep-7", "X-Org-ID": "acme", "X-Request-ID": "req-span-1"})
    assert r.status_code == 200
    (span,) = server_spans(exporter)
    assert span.name == "POST /ai/router/v2" and span.parent_id is None
    attrs = span.attributes
    assert attrs["http.route"] == "/ai/router/v2" and attrs["http.request.method"] == "POST"
    assert attrs["http.response.status_code"] == 200
    assert (attrs["ivy.intent"], attrs["ivy.provider"], attrs["ivy.cache"]) == ("rag", "local", "bypass"), attrs
    assert (attrs["ivy.user_id"], attrs["ivy.org_id"]) == ("rep-7", "acme")
    assert not span.error
    assert span.resource["service.name"] == "ivy-router"
    texts = [str(v) for v in attrs.values()] + [r.json()["answer"]]
    assert not [t for t in texts[:-1] if "Zanzibar" in t or t == texts[-1]]  # neither query nor answer


def test_the_callers_traceparent_is_continued_in_the_span_and_the_log_line(
        traced: MakeTraced, exporter: Received, log_file: Path) -> None:
    client = traced()
    client.post(V2, json={"query": "hello"}, headers={
        "X-User-ID": "rep-1", "X-Request-ID": "req-parent", "traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"})
    (span,) = server_spans(exporter)
    assert (span.trace_id, span.parent_id) == (CALLER_TRACE, CALLER_SPAN)
    line = next(x for x in read_log(log_file, lambda ls: any(x.get("request_id") == "req-parent" for x in ls))
                if x.get("request_id") == "req-parent")
    assert (line["trace_id"], line["span_id"]) == (CALLER_TRACE, span.span_id)


def test_every_log_line_of_a_traced_request_carries_its_trace_and_span_ids(
        traced: MakeTraced, exporter: Received, log_file: Path) -> None:
    # Nobody listens on the provider's port: the request writes a provider_call WARNING, then its line.
    client = traced(gemini_api_key="trace-test-key-0001", gemini_base_url=f"http://127.0.0.1:{free_port()}")
    client.post(V2, json={"query": "hello"}, headers={"X-User-ID": "rep-1", "X-Request-ID": "req-lines"})
    (span,) = server_spans(exporter)
    (generate,) = [s for s in exporter.get_finished_spans() if s.name == "generate"]
    trace_id = span.trace_id
    lines = read_log(log_file, lambda ls: any(x.get("request_id") == "req-lines" for x in ls))
    of_request = [x for x in lines if x["event"] in ("provider_call", "request")]
    assert [x["event"] for x in of_request] == ["provider_call", "request"]
    # The provider's failure is logged inside the generate stage; the request's line in its server span.
    assert [(x["trace_id"], x["span_id"]) for x in of_request] == [
        (trace_id, generate.span_id), (trace_id, span.span_id)]
    assert not [x for x in lines if x["event"] == "router_started" and "trace_id" in x]  # not inside a request


def test_refusals_and_streams_get_their_span_and_other_paths_none(
        traced: MakeTraced, exporter: Received) -> None:
    client = traced(ai_rate_limit_per_min=1)
    assert client.post(V2, json={"query": "hi"}, headers={"X-User-ID": "rep-2"}).status_code == 200
    assert client.post(V2, json={"query": "hi"}, headers={"X-User-ID": "rep-2"}).status_code == 429
    with client.stream("POST", V2, json={"query": "hello there", "stream": True}, headers={"X-User-ID": "rep-3"}) as r:
        body = "".join(r.iter_text())
    assert "event: done" in body
    assert client.post("/ai/router/", json={"query": "hi"}, headers={"X-User-ID": "rep-4"}).status_code == 200
    client.get("/health")
    client.get("/ai/router/health")
    client.get("/metrics")
    spans = server_spans(exporter)
    assert [s.name for s in spans] == ["POST /ai/router/v2"] * 3 + ["POST /ai/router/"]
    refused, streamed = spans[1].attributes, spans[2].attributes
    assert (refused["http.response.status_code"], refused["ivy.bucket"], refused["ivy.code"]) == (
        429, "burst", "rate_limited")
    assert not spans[1].error  # a refusal is not the server's error
    assert (streamed["http.response.status_code"], streamed["ivy.intent"]) == (200, "conversational")


def test_an_unsampled_caller_is_not_recorded_and_always_off_records_nothing(
        traced: MakeTraced, exporter: Received) -> None:
    client = traced()  # parentbased_always_on: the caller's decision stands
    assert client.post(V2, json={"query": "hi"}, headers={
        "X-User-ID": "rep-1", "traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-00"}).status_code == 200
    off = traced(otel_traces_sampler="always_off")
    assert off.post(V2, json={"query": "hi"}, headers={"X-User-ID": "rep-1"}).status_code == 200
    assert server_spans(exporter) == []
    ratio = traced(otel_traces_sampler="traceidratio", otel_traces_sampler_arg=1.0)
    assert ratio.post(V2, json={"query": "hi"}, headers={"X-User-ID": "rep-1"}).status_code == 200
    assert len(server_spans(exporter)) == 1


def test_without_an_endpoint_nothing_is_traced_and_no_line_carries_ids(make_client, log_file: Path) -> None:
    client = make_client()
    assert client.app_state[SERVICES].tracing is None
    client.post(V2, json={"query": "hi"}, headers={"X-User-ID": "rep-1", "X-Request-ID": "req-off",
                                                   "traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"})
    lines = read_log(log_file, lambda ls: any(x.get("request_id") == "req-off" for x in ls))
    assert not [x for x in lines if "trace_id" in x or "span_id" in x]
    with tracing.stage("classify", intent="rag") as span:  # the helpers are no-ops outside a traced request
        assert span is tracing.NO_SPAN
    assert tracing.start_span("attempt") is tracing.NO_SPAN
    tracing.add_event("breaker_opened", provider="gemini")


def test_stage_and_attempt_helpers_nest_under_the_request_span(make_settings, exporter: Received) -> None:
    traces = build_tracing(make_settings(), exporter, warn=get_logger().warning)
    exporter.watch(traces)
    assert traces is not None
    request = traces.start_request("POST", "/ai/router/v2", [])
    with tracing.stage("classify", **{"ivy.intent": "rag", "ivy.confidence": 0.9, "ivy.absent": None}) as stage:
        stage.set_attribute("ivy.passages", 3)
        tracing.add_event("fallback", reason="timeout")
    attempt = tracing.start_span("chat gemini-2.5-flash", **{"gen_ai.provider.name": "gemini"})
    attempt.end()
    request.end(200, {})
    traces.shutdown()
    spans = {s.name: s for s in exporter.get_finished_spans()}
    root = spans["POST /ai/router/v2"]
    for name in ("classify", "chat gemini-2.5-flash"):
        assert spans[name].parent_id == root.span_id
        assert spans[name].trace_id == root.trace_id
    assert spans["classify"].attributes == {"ivy.intent": "rag", "ivy.confidence": 0.9, "ivy.passages": 3}
    assert [e.name for e in spans["classify"].events] == ["fallback"]
    assert tracing.start_span("after the request") is tracing.NO_SPAN  # the context was restored


def test_generated_trace_and_span_ids_never_hold_429() -> None:
    random.seed(22)  # the ids draw from `random`: 20,000 plain ids would hold ~100 of them
    assert not [i for i in (new_trace_id() for _ in range(10_000)) if "429" in i or len(i) != 32]
    assert not [i for i in (new_span_id() for _ in range(10_000)) if "429" in i or len(i) != 16]


@pytest.mark.parametrize(("name", "value", "said"), [
    ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318", "OTEL_EXPORTER_OTLP_ENDPOINT="),
    ("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Basic%20c2VjcmV0LXZhbHVl,broken", "OTEL_EXPORTER_OTLP_HEADERS"),
    ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x-api-key=", "OTEL_EXPORTER_OTLP_TRACES_HEADERS"),
    ("OTEL_TRACES_SAMPLER", "sometimes", "OTEL_TRACES_SAMPLER="),
    ("OTEL_TRACES_SAMPLER_ARG", "1.5", "OTEL_TRACES_SAMPLER_ARG="),
    ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc", "OTEL_EXPORTER_OTLP_PROTOCOL="),
    ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment", "OTEL_RESOURCE_ATTRIBUTES"),
])
def test_an_invalid_otel_value_refuses_the_start_naming_it_without_a_header_value(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str, value: str, said: str) -> None:
    monkeypatch.chdir(tmp_path)  # no .env
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as exc:
        load_settings()
    message = str(exc.value)
    assert said in message and message.count("\n") == 0
    assert "c2VjcmV0LXZhbHVl" not in message and "Basic" not in message


def test_the_otlp_endpoint_and_headers_are_read_as_the_specification_says(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Basic%20c2VjcmV0LXZhbHVl, x-team = crm ")
    settings = load_settings()
    assert settings.otel_traces_endpoint == "http://collector:4318/v1/traces"
    assert settings.otel_headers() == {"authorization": "Basic c2VjcmV0LXZhbHVl", "x-team": "crm"}
    assert "Basic c2VjcmV0LXZhbHVl" in settings.secret_values()  # redacted wherever it would be logged
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:4318/custom")
    assert load_settings().otel_traces_endpoint == "http://traces:4318/custom"
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert load_settings().otel_traces_endpoint is None


def test_on_is_true_only_inside_a_traced_request(make_settings, exporter: Received) -> None:
    traces = build_tracing(make_settings(), exporter, warn=get_logger().warning)
    assert traces is not None
    assert tracing.on() is False
    request = traces.start_request("POST", "/ai/router/v2", [])
    assert tracing.on() is True
    request.end(200, {})
    traces.shutdown()
    assert tracing.on() is False  # the request's context was restored
