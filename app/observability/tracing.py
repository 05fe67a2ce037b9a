"""Traces over OTLP/HTTP, off unless an OTLP endpoint is set.

The lifespan owns one `Tracing` (`build_tracing`, `Tracing.shutdown` flushes at stop); nothing is
global, so every app (and every test) has its own. Per request:

- `Tracing.start_request` opens the server span of a router request (the HTTP layer calls it),
  continuing the caller's W3C `traceparent`, sampled once per trace here at the root (a sampled or
  unsampled parent's decision stands with the parentbased_* samplers), and makes it current;
- `stage(name, **attrs)` (a context manager) and `start_span(name, **attrs)` (ended by the caller,
  for work that does not fit a `with`, e.g. a provider attempt ended at its cancellation) open
  child spans of whatever span is current; `add_event` marks the current span, `annotate` sets
  attributes on it; `stage_over` is the stage of a stream consumed inside an async generator
  (current only while a step of the stream runs, never across the generator's own yields);
  `start_task` starts a task with a span current in it (asyncio copies the context at creation);
- `add_trace_ids` puts `trace_id` and `span_id` on every log line written inside a traced request.

Not the OpenTelemetry SDK's spans: their creation, attribute validation and the exporter's
encoding cost many times the request's whole tracing budget (measured: docs/PERFORMANCE.md,
Tracing). A span here is a slotted object: ids from `random` (never "429" in their hex:
app/observability/greppable.py), `time.time_ns()` bounds, a plain attribute dict and event list;
the current span is one ContextVar. When the request's span ends, its trace's finished spans go to
the exporter's bounded queue in one append (a span ending later, e.g. a loser closed in the
background, goes alone); encoding and sending are the exporter thread's
(app/observability/otlp.py). Kept from OpenTelemetry: the samplers (asked at the root; one that
ignores the trace id, once per parent flag).

A span's children end inside it: a stage ends when its block or stream does, after what it started;
a cancelled hedge's span ends at its cancellation. No span carries query or answer text.

Off (no endpoint, or the trace not sampled) nothing here runs per request: the HTTP layer holds no
`Tracing` (or no span is made current), the helpers see no current span (one ContextVar read) and
return the shared no-op `NO_SPAN`; call sites that build attributes check `on()` first, so no dict
is built for nothing.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine, Iterable, MutableMapping
from contextvars import ContextVar, Token
from random import getrandbits
from time import time_ns
from typing import TYPE_CHECKING, Any, TypeVar

from opentelemetry import trace
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)

from app import __version__
from app.observability.greppable import REFUSAL
from app.observability.otlp import KIND_CLIENT, KIND_INTERNAL, KIND_SERVER, Deliver, Encoder, Exporter, Post

if TYPE_CHECKING:  # app.config imports the logging, which imports this module
    from app.config import Settings

__all__ = ["CLIENT", "INTERNAL", "NO_SPAN", "SERVER", "Span"]

# Spans still queued at stop get this long to reach the receiver (inside the runbook's `sleep 5`).
FLUSH_SECONDS = 1.0

INTERNAL, SERVER, CLIENT = KIND_INTERNAL, KIND_SERVER, KIND_CLIENT
Attribute = str | bool | int | float | tuple[str, ...]
T = TypeVar("T")
_CURRENT: ContextVar[Span | None] = ContextVar("ivy_span", default=None)


def new_trace_id() -> str:
    """32 random hex digits without "429" (drops the 0.7% that hold it: 127.99 bits instead of 128)."""
    while REFUSAL in (trace_id := f"{getrandbits(128):032x}"):
        pass
    return trace_id


def new_span_id() -> str:
    """16 random hex digits without "429"."""
    return _span_hex(getrandbits(64))


def _span_hex(bits: int) -> str:
    """`bits` in hex; the 0.3% that hold "429" stepped on (a bijection of 64-bit values) until they
    do not. Deterministic, so a span's id can be written out lazily, on whichever thread asks first
    (the loop for a log line, else the exporter): the loop only draws the bits."""
    while REFUSAL in (text := f"{bits:016x}"):
        bits = (bits * 0x9E3779B97F4A7C15 + 1) & 0xFFFFFFFFFFFFFFFF
    return text


def sampler_for(name: str, ratio: float) -> Sampler:
    """OTEL_TRACES_SAMPLER's standard names."""
    root: Sampler = {"always_on": ALWAYS_ON, "always_off": ALWAYS_OFF}.get(
        name.removeprefix("parentbased_"), TraceIdRatioBased(ratio))
    return ParentBased(root) if name.startswith("parentbased_") else root


# W3C Trace Context's traceparent, read as OpenTelemetry's TraceContext propagator reads it: a
# version other than ff (00 with nothing after the flags), ids not all zero. Not the propagator
# itself: it builds an OpenTelemetry Context per request, the costliest step of a request's root.
_TRACEPARENT = re.compile(r"\s*([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?\s*")
_MAX_TRACEPARENT, _MAX_TRACESTATE = 512, 512


def _caller(traceparent: str) -> tuple[str, str, bool] | None:
    """The caller's trace id, span id and sampled flag, or None (absent or invalid: a new trace)."""
    match = _TRACEPARENT.fullmatch(traceparent) if len(traceparent) <= _MAX_TRACEPARENT else None
    if match is None:
        return None
    version, trace_id, span_id, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest) or trace_id == "0" * 32 or span_id == "0" * 16:
        return None
    return trace_id, span_id, bool(int(flags, 16) & 1)


class _Trace:
    """What a request's spans share: the trace's ids and the spans finished before its root."""

    __slots__ = ("caller_id", "exporter", "finished", "shipped", "trace_id", "trace_state")

    def __init__(self, exporter: Exporter, trace_id: str, trace_state: str, caller_id: str | None) -> None:
        self.exporter, self.trace_id, self.trace_state, self.caller_id = exporter, trace_id, trace_state, caller_id
        self.finished: list[Span] = []
        self.shipped = False


class Span:
    """A recording span; a context manager that makes it current (`stage`). Once ended it records
    nothing more (the first end stands: `Attempt.end` relies on it)."""

    __slots__ = ("attributes", "bits", "end_ns", "error", "events", "hex", "kind", "name", "parent", "start",
                 "token", "trace")

    def __init__(self, trace: _Trace, parent: Span | None, name: str, kind: int, attributes: dict[str, Any]) -> None:
        self.trace, self.parent, self.name, self.kind, self.attributes = trace, parent, name, kind, attributes
        self.bits = getrandbits(64)
        self.hex: str | None = None
        self.events: list[tuple[str, int, dict[str, Any] | None]] | None = None
        self.error = False
        self.end_ns = 0
        self.start = time_ns()

    @property
    def span_id(self) -> str:
        text = self.hex
        if text is None:
            text = self.hex = _span_hex(self.bits)
        return text

    def is_recording(self) -> bool:
        return not self.end_ns

    def set_attribute(self, key: str, value: Attribute) -> None:
        if not self.end_ns:
            self.attributes[key] = value

    def set_attributes(self, attributes: dict[str, Attribute]) -> None:
        if not self.end_ns:
            self.attributes.update(attributes)

    def add_event(self, name: str, attributes: dict[str, Attribute] | None = None) -> None:
        if not self.end_ns:
            if self.events is None:
                self.events = []
            self.events.append((name, time_ns(), attributes))

    def set_error(self, error_type: str) -> None:
        """Status ERROR, with its type (`error.type`: a reason tag or a class name, never a message)."""
        if not self.end_ns:
            self.error = True
            self.attributes["error.type"] = error_type

    def end(self) -> None:
        if self.end_ns:
            return
        self.end_ns = time_ns()
        trace = self.trace
        if trace.shipped:  # the request already ended: this one alone
            trace.exporter.offer((self,))
        else:
            trace.finished.append(self)

    def __enter__(self) -> Span:
        self.token = _CURRENT.set(self)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        try:  # noqa: SIM105  (not contextlib.suppress: one more context manager per span)
            _CURRENT.reset(self.token)
        except ValueError:  # entered in another context (a `with` across a yield, against `stage`'s rule)
            pass
        if exc is not None:
            _failed(self, exc)
        self.end()


class _NoSpan:
    """The shared no-op span of untraced work: records nothing, is never current."""

    __slots__ = ()

    def is_recording(self) -> bool:
        return False

    def set_attribute(self, key: str, value: Attribute) -> None:
        pass

    def set_attributes(self, attributes: dict[str, Attribute]) -> None:
        pass

    def add_event(self, name: str, attributes: dict[str, Attribute] | None = None) -> None:
        pass

    def set_error(self, error_type: str) -> None:
        pass

    def end(self) -> None:
        pass

    def __enter__(self) -> _NoSpan:
        return self

    def __exit__(self, kind: object, exc: object, tb: object) -> None:
        pass


NO_SPAN = _NoSpan()

AnySpan = Span | _NoSpan


class Tracing:
    """One running app's sampler and exporter, and the server span of each router request."""

    def __init__(self, sampler: Sampler, exporter: Exporter, *, by_trace_id: bool = True) -> None:
        self.sampler, self.exporter = sampler, exporter
        # A sampler that does not look at the trace id decides by the parent's sampled flag alone
        # (None: no parent): asked once per flag, its answer kept.
        self.by_trace_id = by_trace_id
        self.decided: dict[bool | None, bool] = {}
        exporter.start()

    def start_request(self, method: str, route: str, headers: Iterable[tuple[bytes, bytes]]) -> RequestSpan:
        """The request's SERVER span, child of the caller's `traceparent` when it sent one, made
        current until its `end`; a request the sampler leaves out gets none (nothing current)."""
        traceparent = tracestate = None
        for key, value in headers:
            if key == b"traceparent":
                traceparent = value
            elif key == b"tracestate":
                tracestate = value
        caller = None if traceparent is None else _caller(traceparent.decode("latin-1"))
        if caller is None:
            trace_id, parent_id, state = new_trace_id(), None, ""
        else:
            trace_id, parent_id = caller[0], caller[1]
            state = "" if tracestate is None or len(tracestate) > _MAX_TRACESTATE else tracestate.decode("latin-1")
        if not self._sampled(trace_id, caller):
            return RequestSpan(None, None)
        span = Span(_Trace(self.exporter, trace_id, state, parent_id), None, f"{method} {route}", SERVER,
                    {"http.request.method": method, "http.route": route})
        return RequestSpan(span, _CURRENT.set(span))

    def _sampled(self, trace_id: str, caller: tuple[str, str, bool] | None) -> bool:
        key = None if caller is None else caller[2]
        if not self.by_trace_id and (known := self.decided.get(key)) is not None:
            return known
        context = None if caller is None else trace.set_span_in_context(trace.NonRecordingSpan(trace.SpanContext(
            int(caller[0], 16), int(caller[1], 16), is_remote=True,
            trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED if caller[2] else trace.TraceFlags.DEFAULT))))
        sampled = self.sampler.should_sample(context, int(trace_id, 16), "request").decision is (
            Decision.RECORD_AND_SAMPLE)
        if not self.by_trace_id:
            self.decided[key] = sampled
        return sampled

    def flush(self, timeout: float = FLUSH_SECONDS) -> bool:
        """Export every span queued so far (the tests read what was sent)."""
        return self.exporter.flush(timeout)

    def shutdown(self, timeout: float = FLUSH_SECONDS) -> None:
        """Export what is queued and stop, within `timeout` even when the receiver is down (the
        exporter's thread is a daemon: what it still holds then is lost, not waited for)."""
        self.exporter.close(timeout)

    @property
    def dropped(self) -> int:
        """Spans dropped because the export queue was full."""
        return self.exporter.dropped


class RequestSpan:
    """A router request's server span, current in the request's context until `end` (none: not sampled)."""

    __slots__ = ("span", "token")

    def __init__(self, span: Span | None, token: Token[Span | None] | None) -> None:
        self.span, self.token = span, token

    def end(self, status: int, attributes: dict[str, Attribute | None]) -> None:
        span = self.span
        if span is None or self.token is None:
            return
        values = span.attributes
        values["http.response.status_code"] = status
        for key, value in attributes.items():
            if value is not None:
                values[key] = value
        if status >= 500:  # the server's fault; a 4xx is the client's (OpenTelemetry's HTTP conventions)
            span.set_error(str(status))
        _CURRENT.reset(self.token)
        span.end()
        trace = span.trace
        trace.shipped = True
        finished, trace.finished = trace.finished, []  # no span -> trace -> list -> span cycle: freed by refcount
        trace.exporter.offer(finished)


def build_tracing(settings: Settings, exporter: Deliver | None = None, *,
                  warn: Callable[..., object]) -> Tracing | None:
    """The settings' tracing, or None when it is off. `exporter(body, timeout)` replaces the
    OTLP/HTTP POST of each encoded ExportTraceServiceRequest (the tests read what is sent); `warn`
    (the log's warning) hears of failed exports and dropped spans."""
    if exporter is None:
        endpoint = settings.otel_traces_endpoint
        if endpoint is None:
            return None
        exporter = Post(endpoint, settings.otel_headers(), settings.otel_exporter_otlp_timeout / 1000)
    resource = {"service.name": settings.otel_service_name, "service.version": __version__,
                "telemetry.sdk.language": "python", "telemetry.sdk.name": "ivy-router",
                "telemetry.sdk.version": __version__, **settings.otel_resource_attributes_map()}
    encoder = Encoder(resource, "ivy-router", __version__)
    name = settings.otel_traces_sampler
    return Tracing(sampler_for(name, settings.otel_traces_sampler_arg),
                   Exporter(encoder, exporter, warn), by_trace_id=name.endswith("traceidratio"))


def stage(name: str, **attributes: Attribute | None) -> AnySpan:
    """A child span of the current one around a block, current inside it; a no-op outside a traced
    request. `with tracing.stage("classify") as span: ...; span.set_attribute("ivy.intent", intent)`.
    Never around a `yield` of an async generator: the span would stay current in its consumer."""
    parent = _CURRENT.get()
    if parent is None:
        return NO_SPAN
    return Span(parent.trace, parent, name, INTERNAL, _clean(attributes) if attributes else {})


def _failed(span: Span, exc: BaseException) -> None:
    """An error is ERROR with its type (a provider's reason tag, never its message: it may quote
    the prompt); a refusal (`refusal = True`: a DomainError, a 429) and a close (the client went
    away) are not."""
    if isinstance(exc, Exception) and not getattr(exc, "refusal", False):
        span.set_error(str(getattr(exc, "reason", None) or type(exc).__name__))
    elif not isinstance(exc, Exception):
        span.set_attribute("ivy.abandoned", True)  # GeneratorExit or CancelledError: nobody waits any more


class stage_over:
    """The stage span of a stream read inside an async generator (`answer`'s generate): `items`,
    each step taken with the span current (so what it starts, e.g. the provider attempts, nests
    under it) and the span not current across the reader's yields. At exit, even when the reader
    is closed early (GeneratorExit) or cancelled, `items` is closed first, then the span ends:
    every child ends inside it. Off: `items`, closed at exit."""

    __slots__ = ("items", "span", "steps")

    def __init__(self, name: str, items: AsyncIterator[T], **attributes: Attribute | None) -> None:
        parent = _CURRENT.get()
        self.items: AsyncIterator[Any] = items
        self.span = None if parent is None else Span(parent.trace, parent, name, INTERNAL,
                                                     _clean(attributes) if attributes else {})
        self.steps: AsyncGenerator[Any, None] | None = None

    async def __aenter__(self) -> AsyncIterator[Any]:
        if self.span is None:
            return self.items
        self.steps = _steps(self.span, self.items)
        return self.steps

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        span = self.span
        if span is None:
            await _aclose(self.items)
            return
        if exc is not None:
            _failed(span, exc)
        try:
            if self.steps is not None:
                await self.steps.aclose()
        finally:
            span.end()


async def _steps(span: Span, items: AsyncIterator[T]) -> AsyncGenerator[T, None]:
    try:
        while True:
            token = _CURRENT.set(span)  # set and reset in one step: one context
            try:
                item = await anext(items)
            except StopAsyncIteration:
                return
            finally:
                _CURRENT.reset(token)
            yield item
    finally:
        token = _CURRENT.set(span)
        try:
            await _aclose(items)
        finally:
            _CURRENT.reset(token)


async def _aclose(items: AsyncIterator[Any]) -> None:
    aclose = getattr(items, "aclose", None)
    if aclose is not None:
        await aclose()


def start_span(name: str, *, kind: int = INTERNAL, **attributes: Attribute | None) -> AnySpan:
    """A child span of the current one, not made current, that the caller ends (`span.end()`);
    `NO_SPAN` outside a traced request. For work whose end is not a block's, e.g. a provider
    attempt that ends when it is cancelled: make it current in that work's task with `start_task`."""
    parent = _CURRENT.get()
    if parent is None:
        return NO_SPAN
    return Span(parent.trace, parent, name, kind, _clean(attributes) if attributes else {})


def start_task(span: AnySpan, work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
    """`work` as a task with `span` current in it (a task copies the context when it is created)."""
    if not isinstance(span, Span):
        return asyncio.ensure_future(work)
    token = _CURRENT.set(span)
    try:
        return asyncio.ensure_future(work)
    finally:
        _CURRENT.reset(token)


def on() -> bool:
    """Inside a traced request: the guard of call sites that build attributes, so that off a
    request pays this one check and no attribute dicts."""
    return _CURRENT.get() is not None


def add_event(name: str, **attributes: Attribute | None) -> None:
    """An event on the current span (a breaker transition, a fallback); nothing outside a traced request."""
    span = _CURRENT.get()
    if span is not None:
        span.add_event(name, _clean(attributes))


def annotate(**attributes: Attribute | None) -> None:
    """Attributes on the current span (a stage's outcome, known inside it); nothing outside a traced request."""
    span = _CURRENT.get()
    if span is not None and not span.end_ns:
        for key, value in attributes.items():
            if value is not None:
                span.attributes[key] = value


def add_trace_ids(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: `trace_id` / `span_id` of the current span on lines of a traced request."""
    span = _CURRENT.get()
    if span is not None:
        event_dict["trace_id"] = span.trace.trace_id
        event_dict["span_id"] = span.span_id
    return event_dict


def _clean(attributes: dict[str, Attribute | None]) -> dict[str, Any]:
    return {k: v for k, v in attributes.items() if v is not None}

