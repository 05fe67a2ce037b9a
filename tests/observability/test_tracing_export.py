"""The exporter side of tracing (app/observability/otlp.py): the hand-written OTLP encoding read back
by opentelemetry-proto for every attribute type the router writes; the bounded queue (a full one
drops and counts, never blocks); the flush at shutdown; a receiver that is down, refusing or never
answering costs the request nothing; the W3C traceparent rules."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from app.api.services import SERVICES
from app.config import Settings
from app.observability import tracing
from app.observability.logging import get_logger
from app.observability.otlp import Encoder, Exporter
from app.observability.tracing import Tracing, build_tracing, sampler_for
from tests.conftest import read_log
from tests.otlp import Received, decode
from tools.ports import free_port

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


def test_every_attribute_type_and_field_reads_back_with_opentelemetry_proto(make_settings) -> None:
    received = Received()
    traces = build_tracing(make_settings(otel_resource_attributes="deployment.environment=test"), received,
                           warn=get_logger().warning)
    received.watch(traces)
    assert traces is not None
    served = traces.start_request("POST", "/ai/router/v2", [
        (b"traceparent", f"00-{CALLER_TRACE}-{CALLER_SPAN}-01".encode()), (b"tracestate", b"vendor=abc")])
    values: dict[str, Any] = {
        "s": "rag", "unicode": "café ☕", "long": "x" * 300, "empty": "", "yes": True, "no": False, "zero": 0,
        "small": 7, "big": 2**62, "negative": -5, "most_negative": -(2**63), "pi": 3.25, "negative_float": -0.5,
        "strings": ("STOP", "length"), "ints": (1, 300), "none": None}
    with tracing.stage("classify", **values) as stage:
        stage.add_event("ivy.marked", {"ivy.n": 3, "ivy.why": "because", "ivy.ratio": 0.5})
        stage.add_event("ivy.bare")
    attempt = tracing.start_span("chat m", kind=tracing.CLIENT, **{"ivy.attempt.role": "first"})
    attempt.set_error("unavailable")
    attempt.end()
    attempt.set_attribute("ivy.after_end", 1)  # an ended span records nothing more
    served.end(503, {"ivy.intent": "rag", "ivy.code": None})
    spans = {s.name: s for s in received.get_finished_spans()}
    root, classify, chat = spans["POST /ai/router/v2"], spans["classify"], spans["chat m"]
    assert classify.attributes == {k: v for k, v in values.items() if v is not None}
    assert [(e.name, e.attributes) for e in classify.events] == [
        ("ivy.marked", {"ivy.n": 3, "ivy.why": "because", "ivy.ratio": 0.5}), ("ivy.bare", {})]
    assert classify.start_time <= classify.events[0].timestamp <= classify.events[1].timestamp <= classify.end_time
    assert (root.trace_id, root.parent_id, root.kind, root.trace_state) == (
        CALLER_TRACE, CALLER_SPAN, tracing.SERVER, "vendor=abc")
    assert root.flags == 0x301 and classify.flags == 0x101  # sampled; the caller's parent is remote
    assert root.error and root.attributes["error.type"] == "503" and "ivy.code" not in root.attributes
    assert (chat.kind, chat.parent_id, chat.error, chat.attributes) == (
        tracing.CLIENT, root.span_id, True, {"ivy.attempt.role": "first", "error.type": "unavailable"})
    assert classify.parent_id == root.span_id and classify.kind == tracing.INTERNAL and not classify.error
    assert {s.trace_id for s in spans.values()} == {CALLER_TRACE}
    assert root.resource["service.name"] == "ivy-router" and root.resource["deployment.environment"] == "test"
    assert root.scope[0] == "ivy-router"
    traces.shutdown()


def test_the_encoder_writes_what_the_official_decoder_reads_field_for_field_twice_over() -> None:
    # The caches (keys, string pairs, names, the trace's ids) give the same bytes the second time.
    encoder = Encoder({"service.name": "svc"}, "scope", "1")
    received = Received()
    traces = Tracing(sampler_for("always_on", 1.0), Exporter(encoder, received, lambda *a, **k: None))
    received.watch(traces)
    for _ in range(2):
        served = traces.start_request("GET", "/r", [])
        with tracing.stage("a", **{"k": "v"}):
            tracing.annotate(**{"n": 1})
        served.end(200, {})
    assert traces.flush()
    (body,) = received.bodies
    request = ExportTraceServiceRequest.FromString(body)
    assert request.SerializeToString() == body  # canonical: nothing the decoder skipped or reordered
    first, second = [s for s in decode(body) if s.name == "a"]
    assert (first.attributes, second.attributes) == ({"k": "v", "n": 1}, {"k": "v", "n": 1})
    assert first.trace_id != second.trace_id
    traces.shutdown()


def quiet(*_: Any, **__: Any) -> None:
    pass


def test_a_full_queue_drops_and_counts_the_spans_of_a_request_and_never_blocks() -> None:
    received = Received()
    traces = Tracing(sampler_for("always_on", 1.0), Exporter(Encoder({}, "s", "1"), received, quiet, max_queued=2))
    for _ in range(3):
        served = traces.start_request("POST", "/ai/router/v2", [])
        with tracing.stage("classify"):
            pass
        served.end(200, {})
    assert traces.dropped == 2  # the third request's two spans
    assert traces.flush()
    assert len(received.get_finished_spans()) == 4
    traces.shutdown()


def test_shutdown_sends_what_is_queued_without_a_flush() -> None:
    received = Received()
    traces = Tracing(sampler_for("always_on", 1.0), Exporter(Encoder({}, "s", "1"), received, quiet))
    traces.start_request("POST", "/ai/router/v2", []).end(200, {})
    assert received.bodies == []  # under the batch's size and before its delay: still queued
    traces.shutdown()
    assert [s.name for s in received.get_finished_spans()] == ["POST /ai/router/v2"]


def test_shutdown_returns_when_the_receiver_never_answers() -> None:
    release = threading.Event()
    calls: list[float | None] = []

    def hangs(body: bytes, timeout: float | None) -> None:
        calls.append(timeout)
        release.wait()

    traces = Tracing(sampler_for("always_on", 1.0), Exporter(Encoder({}, "s", "1"), hangs, quiet))
    traces.start_request("POST", "/ai/router/v2", []).end(200, {})
    traces.shutdown(timeout=0.05)
    assert traces.exporter.is_alive()  # still stuck in the receiver: abandoned (a daemon), not waited for
    assert calls and calls[0] is not None and calls[0] <= 0.05  # the export was given the flush's time left
    release.set()


class OtlpHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # kept alive, as a collector does
    status = 200
    got: list[tuple[dict[str, str], bytes]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.got.append(({k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(self.status)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[Callable[[int], tuple[str, list[tuple[dict[str, str], bytes]]]]]:
    servers: list[http.server.ThreadingHTTPServer] = []

    def start(status: int) -> tuple[str, list[tuple[dict[str, str], bytes]]]:
        got: list[tuple[dict[str, str], bytes]] = []
        handler = type("Handler", (OtlpHandler,), {"status": status, "got": got})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}", got

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_exports_are_posted_to_v1_traces_with_the_otel_headers_over_one_connection(
        receiver: Callable[[int], tuple[str, list[tuple[dict[str, str], bytes]]]]) -> None:
    base, got = receiver(200)
    traces = build_tracing(Settings(_env_file=None, otel_exporter_otlp_endpoint=base,
                                    otel_exporter_otlp_headers="x-api-key=k3y"), warn=get_logger().warning)
    assert traces is not None
    for _ in range(2):
        traces.start_request("POST", "/ai/router/v2", []).end(200, {})
        assert traces.flush()
    traces.shutdown()
    assert len(got) == 2
    headers, body = got[0]
    assert headers["content-type"] == "application/x-protobuf" and headers["x-api-key"] == "k3y"
    assert [s.name for s in decode(body)] == ["POST /ai/router/v2"]
    assert traces.exporter.exported == 2 and traces.exporter.failed == 0


@pytest.mark.parametrize("down", ["refused", "HTTP 503"])
def test_a_receiver_that_is_down_costs_the_request_nothing_and_is_counted_and_warned_once(
        make_client, log_file: Path, receiver: Callable[[int], tuple[str, list[tuple[dict[str, str], bytes]]]],
        down: str) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}" if down == "refused" else receiver(503)[0]
    client = make_client(otel_exporter_otlp_endpoint=endpoint)
    for _ in range(2):
        r = client.post("/ai/router/v2", json={"query": "hi"}, headers={"X-User-ID": "rep-1"})
        assert r.status_code == 200
        traces = client.app_state[SERVICES].tracing
        assert traces.flush()
    assert traces.exporter.failed >= 2 and traces.exporter.exported == 0
    lines = read_log(log_file, lambda ls: any(x["event"] == "trace_export_failed" for x in ls))
    failures = [x for x in lines if x["event"] == "trace_export_failed"]
    assert len(failures) == 1 and failures[0]["level"] == "WARNING"  # once a minute, with the count


@pytest.mark.parametrize(("traceparent", "continued"), [
    (f"00-{CALLER_TRACE}-{CALLER_SPAN}-01", True),
    (f" 00-{CALLER_TRACE}-{CALLER_SPAN}-01 ", True),
    (f"01-{CALLER_TRACE}-{CALLER_SPAN}-01-later-fields", True),  # a later version: its known part
    (f"00-{CALLER_TRACE}-{CALLER_SPAN}-01-more", False),  # version 00 has nothing after the flags
    (f"ff-{CALLER_TRACE}-{CALLER_SPAN}-01", False),
    (f"00-{'0' * 32}-{CALLER_SPAN}-01", False),
    (f"00-{CALLER_TRACE}-{'0' * 16}-01", False),
    (f"00-{CALLER_TRACE.upper()}-{CALLER_SPAN}-01", False),
    (f"00-{CALLER_TRACE}-{CALLER_SPAN}", False),
    ("garbage", False),
    (f"00-{CALLER_TRACE}-{CALLER_SPAN}-01" + " " * 600, False),
])
def test_a_traceparent_is_continued_only_when_w3c_valid(make_settings, traceparent: str, continued: bool) -> None:
    received = Received()
    traces = build_tracing(make_settings(), received, warn=get_logger().warning)
    received.watch(traces)
    assert traces is not None
    traces.start_request("POST", "/ai/router/v2", [(b"traceparent", traceparent.encode())]).end(200, {})
    (span,) = received.get_finished_spans()
    assert ((span.trace_id, span.parent_id) == (CALLER_TRACE, CALLER_SPAN)) is continued
    if not continued:
        assert span.parent_id is None and "429" not in span.trace_id
    traces.shutdown()


def test_a_ratio_sampler_decides_by_the_trace_id_and_a_parent_decides_for_parentbased(make_settings) -> None:
    received = Received()
    never = build_tracing(make_settings(otel_traces_sampler="traceidratio", otel_traces_sampler_arg=0.0), received,
                          warn=get_logger().warning)
    half = build_tracing(make_settings(otel_traces_sampler="parentbased_traceidratio", otel_traces_sampler_arg=0.5),
                         received, warn=get_logger().warning)
    assert never is not None and half is not None
    received.watch(never)
    received.watch(half)
    for _ in range(50):
        never.start_request("POST", "/n", []).end(200, {})
    sampled = [f"00-{CALLER_TRACE}-{CALLER_SPAN}-01".encode(), f"00-{CALLER_TRACE}-{CALLER_SPAN}-00".encode()]
    for flag in sampled * 20:
        half.start_request("POST", "/p", [(b"traceparent", flag)]).end(200, {})
    for _ in range(200):
        half.start_request("POST", "/r", []).end(200, {})
    names = [s.name for s in received.get_finished_spans()]
    assert names.count("POST /p") == 20 and "POST /n" not in names  # the caller's flag, every time
    assert 40 < names.count("POST /r") < 160  # about half of the new traces
    never.shutdown()
    half.shutdown()
