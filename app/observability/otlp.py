"""The OTLP/HTTP side of tracing: the router's finished spans encoded as an OTLP
`ExportTraceServiceRequest` (protobuf, written here for the fixed trace schema) and POSTed to
`/v1/traces` by one exporter thread, off the event loop.

The loop only hands over: `Exporter.offer` appends one request's finished spans to a bounded
queue (a deque: one C call, no lock), dropping and counting them when it is full, never blocking.
The thread wakes every `DELAY_SECONDS` or when `BATCH_SPANS` spans are waiting, encodes what is
queued into one request and sends it (a kept-alive connection, the OTEL_* headers and timeout);
a receiver that is down or slow loses that batch (counted, one warning a minute), never a request.
`flush` and `close` (bounded) export what is queued now.

Why protobuf by hand: the schema is fixed (opentelemetry-proto's trace.proto, field numbers
below) and only the few field types the router sets are written; the tests decode the output
with opentelemetry-proto itself. The figures against building opentelemetry-proto's messages
are in docs/PERFORMANCE.md (Tracing).
"""

from __future__ import annotations

import collections
import http.client
import struct
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from app.observability.throttle import Throttle


class TraceIds(Protocol):
    """What a trace's spans share, as the encoder reads it (app/observability/tracing.py records it)."""

    trace_id: str  # 32 hex digits
    trace_state: str
    caller_id: str | None  # the caller's span id (16 hex digits), a remote parent


class Span(Protocol):
    """A finished span, as the encoder reads it (app/observability/tracing.py's Span)."""

    name: str
    kind: int
    hex: str | None
    start: int  # Unix ns
    end_ns: int
    attributes: dict[str, Any]
    events: list[tuple[str, int, dict[str, Any] | None]] | None
    error: bool

    @property
    def trace(self) -> TraceIds: ...

    @property
    def parent(self) -> Span | None: ...

    @property
    def span_id(self) -> str: ...

# The OpenTelemetry SDK's batch processor defaults (OTEL_BSP_*): a batch at least every 5 s, at
# most 512 spans per request; the queue holds this many requests' spans (~8 spans each).
DELAY_SECONDS = 5.0
BATCH_SPANS = 512
MAX_QUEUED = 512

# OTLP's enum values (trace.proto): SpanKind and Status.StatusCode.
KIND_INTERNAL, KIND_SERVER, KIND_CLIENT = 1, 2, 3
STATUS_ERROR = 2
# Span.flags: the W3C sampled flag, and "has is_remote" with "is_remote" for a caller's parent.
FLAG_SAMPLED, FLAG_HAS_IS_REMOTE, FLAG_IS_REMOTE = 0x01, 0x100, 0x200


# --- the encoder -------------------------------------------------------------------------------

_SMALL = [bytes((i,)) for i in range(128)]
_DOUBLE = struct.Struct("<d").pack
_FIXED64 = struct.Struct("<Q").pack
_FIXED32 = struct.Struct("<I").pack
_TIMES = struct.Struct("<BQBQ").pack  # start 7, end 8 (fixed64 each)


def _varint(value: int) -> bytes:
    if 0 <= value < 128:
        return _SMALL[value]
    if value < 0:
        value += 1 << 64  # int64: two's complement, ten bytes
    out = bytearray()
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: tag, length, payload."""
    n = len(payload)
    return tag + (_SMALL[n] if n < 128 else _varint(n)) + payload


def _string(tag: bytes, text: str) -> bytes:
    return _field(tag, text.encode())


def _any_value(value: Any) -> bytes:
    """AnyValue: string 1, bool 2, int64 3, double 4, array 5 (bool before int: a bool is an int)."""
    if isinstance(value, str):
        return _string(b"\x0a", value)
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, int):
        return b"\x18" + _varint(value)
    if isinstance(value, float):
        return b"\x21" + _DOUBLE(value)
    if isinstance(value, tuple | list):  # ArrayValue { repeated AnyValue values = 1 }
        return _field(b"\x2a", b"".join(_field(b"\x0a", _any_value(v)) for v in value))
    return _string(b"\x0a", str(value))


def _key_value(key: str, value: Any) -> bytes:
    return _string(b"\x0a", key) + _field(b"\x12", _any_value(value))


class Encoder:
    """`encode(spans)`: one ExportTraceServiceRequest holding `spans` (tracing.Span, read field by
    field) under the resource and scope. What repeats across spans is encoded once and kept
    (bounded): each attribute pair (key and value, by the value's type: 1, 1.0 and True are equal
    keys of one dict), a name with its kind, a trace's ids, the last parent's id."""

    CACHE_MAX = 4096

    def __init__(self, resource: Mapping[str, Any], scope_name: str, scope_version: str) -> None:
        resource_bytes = b"".join(_field(b"\x0a", _key_value(k, v)) for k, v in resource.items())
        scope = _string(b"\x0a", scope_name) + _string(b"\x12", scope_version)
        self._resource = _field(b"\x0a", resource_bytes)  # ResourceSpans.resource = 1
        self._scope = _field(b"\x0a", scope)  # ScopeSpans.scope = 1
        # By field tag (span attributes 9, event attributes 3), then by the value's type.
        self._pairs: dict[bytes, dict[type, dict[tuple[str, Any], bytes]]] = {
            tag: {kind: {} for kind in (str, int, bool, float)} for tag in (b"\x4a", b"\x1a")}
        self._names: dict[tuple[str, int], bytes] = {}
        self._trace: TraceIds | None = None
        self._trace_fields = b""
        self._parent: Span | None = None
        self._parent_field = b""

    def _attributes(self, tag: bytes, attributes: Mapping[str, Any]) -> bytes:
        by_kind, out = self._pairs[tag], []
        for pair in attributes.items():
            value = pair[1]
            pairs = by_kind.get(type(value))
            if pairs is None or (type(value) is str and len(value) > 64):  # a tuple, a long text: not kept
                out.append(_field(tag, _key_value(*pair)))
                continue
            encoded = pairs.get(pair)
            if encoded is None:
                if len(pairs) >= self.CACHE_MAX:
                    pairs.clear()
                encoded = pairs[pair] = _field(tag, _key_value(*pair))
            out.append(encoded)
        return b"".join(out)

    def span(self, span: Span) -> bytes:
        """Span: trace_id 1, span_id 2, trace_state 3, parent_span_id 4, name 5, kind 6, start 7,
        end 8, attributes 9, events 11, status 15, flags 16."""
        trace = span.trace
        if trace is not self._trace:
            self._trace, self._trace_fields = trace, b"\x0a\x10" + bytes.fromhex(trace.trace_id) + (
                _string(b"\x1a", trace.trace_state) if trace.trace_state else b"")
        parent = span.parent
        if parent is not None:
            if parent is not self._parent:
                self._parent, self._parent_field = parent, b"\x22\x08" + bytes.fromhex(parent.hex or parent.span_id)
            parent_field, flags = self._parent_field, _LOCAL_PARENT
        elif trace.caller_id is not None:
            parent_field, flags = b"\x22\x08" + bytes.fromhex(trace.caller_id), _REMOTE_PARENT
        else:
            parent_field, flags = b"", _LOCAL_PARENT
        named = self._names.get((span.name, span.kind))
        if named is None:
            if len(self._names) >= self.CACHE_MAX:
                self._names.clear()
            named = self._names[(span.name, span.kind)] = _string(b"\x2a", span.name) + b"\x30" + _SMALL[span.kind]
        parts = [self._trace_fields, b"\x12\x08", bytes.fromhex(span.hex or span.span_id), parent_field, named,
                 _TIMES(0x39, span.start, 0x41, span.end_ns)]
        if span.attributes:
            parts.append(self._attributes(b"\x4a", span.attributes))
        if span.events:
            for event_name, at, attributes in span.events:  # Event: time 1, name 2, attributes 3
                event = b"\x09" + _FIXED64(at) + _string(b"\x12", event_name)
                if attributes:
                    event += self._attributes(b"\x1a", attributes)
                parts.append(_field(b"\x5a", event))
        if span.error:
            parts.append(b"\x7a\x02\x18" + _SMALL[STATUS_ERROR])  # Status { code = 3 }
        parts.append(flags)
        return _field(b"\x12", b"".join(parts))  # ScopeSpans.spans = 2

    def encode(self, spans: Iterable[Span]) -> bytes:
        """ExportTraceServiceRequest { ResourceSpans { resource, ScopeSpans { scope, spans } } }."""
        scope_spans = _field(b"\x12", self._scope + b"".join([self.span(span) for span in spans]))
        return _field(b"\x0a", self._resource + scope_spans)


_LOCAL_PARENT = b"\x85\x01" + _FIXED32(FLAG_SAMPLED | FLAG_HAS_IS_REMOTE)
_REMOTE_PARENT = b"\x85\x01" + _FIXED32(FLAG_SAMPLED | FLAG_HAS_IS_REMOTE | FLAG_IS_REMOTE)


# --- the exporter thread -----------------------------------------------------------------------

class Post:
    """POST to an OTLP/HTTP traces endpoint over one kept-alive connection (reopened after an error)."""

    def __init__(self, endpoint: str, headers: Mapping[str, str], timeout: float) -> None:
        url = urllib.parse.urlsplit(endpoint)
        self.https = url.scheme == "https"
        self.host = url.hostname or "localhost"
        self.port = url.port or (443 if self.https else 80)
        self.path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        self.headers = {"Content-Type": "application/x-protobuf", **headers}
        self.timeout = timeout
        self.connection: http.client.HTTPConnection | None = None

    def __call__(self, body: bytes, timeout: float | None = None) -> None:
        """Send `body`; raises OSError or http.client.HTTPException on any failure, or a non-2xx."""
        seconds = self.timeout if timeout is None else max(0.01, min(self.timeout, timeout))
        for attempt in (1, 2):  # a kept-alive connection the receiver closed meanwhile: once more, anew
            fresh = self.connection is None
            if self.connection is None:
                cls = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
                self.connection = cls(self.host, self.port, timeout=seconds)
            connection = self.connection
            connection.timeout = seconds
            if connection.sock is not None:
                connection.sock.settimeout(seconds)
            try:
                connection.request("POST", self.path, body, self.headers)
                response = connection.getresponse()
                response.read()
            except (OSError, http.client.HTTPException):
                self.close()
                if fresh or attempt == 2:
                    raise
                continue
            if response.will_close:
                self.close()
            if not 200 <= response.status < 300:
                raise http.client.HTTPException(f"HTTP {response.status} from the OTLP receiver")
            return

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


Deliver = Callable[[bytes, float | None], object]


class Exporter(threading.Thread):
    """The queue of finished spans and the thread that encodes and sends them (module docstring)."""

    def __init__(self, encoder: Encoder, deliver: Deliver, warn: Callable[..., object], *,
                 max_queued: int = MAX_QUEUED, batch_spans: int = BATCH_SPANS, delay: float = DELAY_SECONDS) -> None:
        super().__init__(name="ivy-trace-export", daemon=True)
        self.encoder, self.deliver, self.warn = encoder, deliver, warn
        self.max_queued, self.batch_spans, self.delay = max_queued, batch_spans, delay
        self.queue: collections.deque[Sequence[Span]] = collections.deque()
        self.wake_at = max(1, batch_spans // 8)  # requests queued (~8 spans each) that wake the thread early
        self.dropped = 0  # spans dropped at a full queue (written by the loop only)
        self.failed = 0  # spans lost to failed exports (written by this thread only)
        self.exported = 0
        self._wake = threading.Event()
        self._flushes: collections.deque[threading.Event] = collections.deque()
        self._stopping = False
        self._deadline: float | None = None
        self._warned = Throttle(60.0)
        self._reported_drops = 0

    def offer(self, spans: Sequence[Span]) -> None:
        """On the loop: queue one request's finished spans, or drop and count them (never blocks)."""
        queue = self.queue
        if len(queue) >= self.max_queued:
            self.dropped += len(spans)
            return
        queue.append(spans)
        if len(queue) == self.wake_at:
            self._wake.set()

    def flush(self, timeout: float) -> bool:
        """Export what is queued now; False if that took longer than `timeout` (or the thread stopped)."""
        if not self.is_alive():
            return False
        done = threading.Event()
        self._flushes.append(done)
        self._wake.set()
        return done.wait(timeout)

    def close(self, timeout: float) -> None:
        """Export what is queued and stop, within `timeout` (what the thread still holds then is lost)."""
        self._deadline = time.monotonic() + timeout
        self._stopping = True
        self._wake.set()
        self.join(timeout)

    def run(self) -> None:
        while True:
            self._wake.wait(self.delay)
            self._wake.clear()
            flushes = []
            while self._flushes:
                flushes.append(self._flushes.popleft())
            self._export_queued()
            for done in flushes:
                done.set()
            if self.dropped != self._reported_drops and self._warned.ready(time.monotonic(), "dropped"):
                self._reported_drops = self.dropped
                self.warn("trace_spans_dropped", spans_dropped=self.dropped, queue_max=self.max_queued)
            if self._stopping:
                self._export_queued()
                return

    def _export_queued(self) -> None:
        queue = self.queue
        batch: list[Span] = []
        while queue:
            batch.extend(queue.popleft())
            if len(batch) >= self.batch_spans or not queue:
                self._send(batch)
                batch = []

    def _send(self, spans: list[Span]) -> None:
        timeout = None if self._deadline is None else self._deadline - time.monotonic()
        if timeout is not None and timeout <= 0:
            self.failed += len(spans)
            return
        try:
            self.deliver(self.encoder.encode(spans), timeout)
            self.exported += len(spans)
        except Exception as exc:  # a down or refusing receiver loses this batch, never the thread
            self.failed += len(spans)
            if self._warned.ready(time.monotonic()):
                self.warn("trace_export_failed", error=f"{type(exc).__name__}: {exc}", spans_lost=self.failed,
                          spans_dropped=self.dropped)
