"""The tests' OTLP receiver, in process: it takes the bytes the app's exporter thread would POST
(the production encoder's, app/observability/otlp.py) and decodes them with opentelemetry-proto,
the official referee, into plain spans to assert on."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Status

from app.observability.tracing import Tracing


def value_of(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return tuple(value_of(v) for v in value.array_value.values)
    if kind == "kvlist_value":
        return attributes_of(value.kvlist_value.values)
    return getattr(value, kind) if kind is not None else None


def attributes_of(pairs: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        assert isinstance(pair, KeyValue)
        assert pair.key not in out, f"attribute {pair.key} twice"
        out[pair.key] = value_of(pair.value)
    return out


@dataclass
class Event:
    name: str
    timestamp: int
    attributes: dict[str, Any]


@dataclass
class ReceivedSpan:
    name: str
    kind: int  # OTLP's SpanKind: tracing.INTERNAL, SERVER, CLIENT
    trace_id: str
    span_id: str
    parent_id: str | None
    start_time: int
    end_time: int
    attributes: dict[str, Any]
    events: list[Event]
    error: bool  # status ERROR (else UNSET: the router never sets OK)
    flags: int
    trace_state: str
    resource: dict[str, Any] = field(repr=False)
    scope: tuple[str, str] = ("", "")


def decode(body: bytes) -> list[ReceivedSpan]:
    request = ExportTraceServiceRequest.FromString(body)
    spans = []
    for resource_spans in request.resource_spans:
        resource = attributes_of(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for s in scope_spans.spans:
                assert s.status.code in (Status.STATUS_CODE_UNSET, Status.STATUS_CODE_ERROR)
                spans.append(ReceivedSpan(
                    s.name, s.kind, s.trace_id.hex(), s.span_id.hex(), s.parent_span_id.hex() or None,
                    s.start_time_unix_nano, s.end_time_unix_nano, attributes_of(s.attributes),
                    [Event(e.name, e.time_unix_nano, attributes_of(e.attributes)) for e in s.events],
                    s.status.code == Status.STATUS_CODE_ERROR, s.flags, s.trace_state, resource,
                    (scope_spans.scope.name, scope_spans.scope.version)))
    return spans


class Received:
    """Pass as `build_tracing(settings, exporter=...)` (or `make_client(span_exporter=...)`): every
    export the app sends, decoded. `get_finished_spans` first flushes the watched apps' exporters."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.tracings: list[Tracing] = []
        self.spans: list[ReceivedSpan] = []  # decoded once: the same objects on every read

    def __call__(self, body: bytes, timeout: float | None) -> None:
        self.bodies.append(body)

    def watch(self, tracing: Tracing | None) -> None:
        assert tracing is not None, "tracing is off"
        self.tracings.append(tracing)

    def get_finished_spans(self) -> list[ReceivedSpan]:
        for tracing in self.tracings:
            tracing.flush(30.0)
        while self.bodies:
            self.spans += decode(self.bodies.pop(0))
        return list(self.spans)

    def clear(self) -> None:
        self.get_finished_spans()
        self.spans.clear()
