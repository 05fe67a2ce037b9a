"""OpenTelemetry traces over OTLP/HTTP, off unless an OTLP endpoint is set.

The lifespan owns one `Tracing` (`build_tracing`, `Tracing.shutdown` flushes at stop); no global
tracer provider is installed, so every app (and every test) has its own. Per request:

- `Tracing.start_request` opens the server span of a router request (the HTTP layer calls it),
  continuing the caller's W3C `traceparent`, and makes it current with the request's tracer;
- `stage(name, **attrs)` (a context manager) and `start_span(name, **attrs)` (ended by the caller,
  for work that does not fit a `with`, e.g. a provider attempt ended at its cancellation) open
  child spans of whatever span is current; `add_event` marks the current span, `annotate` sets
  attributes on it; `stage_over` is the stage of a stream consumed inside an async generator
  (current only while a step of the stream runs, never across the generator's own yields);
  `start_task` starts a task with a span current in it (asyncio copies the context at creation);
- `add_trace_ids` puts `trace_id` and `span_id` on every log line written inside a traced request.

Off (no endpoint) nothing here runs per request: the HTTP layer holds no `Tracing`, and the
helpers see no tracer in the request's context (one ContextVar read) and return a shared no-op;
call sites that build attributes check `on()` first, so no dict is built for nothing.
Spans carry no query or answer text.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Coroutine, Iterable, Iterator, MutableMapping
from contextvars import ContextVar, Token
from typing import TYPE_CHECKING, Any, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.trace import INVALID_SPAN, Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from app import __version__
from app.observability.greppable import REFUSAL

if TYPE_CHECKING:  # app.config imports the logging, which imports this module
    from app.config import Settings

# Spans still queued at stop get this long to reach the receiver (inside the runbook's `sleep 5`).
FLUSH_SECONDS = 1.0

_TRACER: ContextVar[trace.Tracer | None] = ContextVar("ivy_tracer", default=None)
_NOOP: contextlib.nullcontext[Span] = contextlib.nullcontext(INVALID_SPAN)
_PROPAGATOR = TraceContextTextMapPropagator()
Attribute = str | bool | int | float | tuple[str, ...]
T = TypeVar("T")


class GreppableIds(RandomIdGenerator):
    """Random ids whose hex never holds "429", so `grep "429"` never matches a line through the
    trace or span ids we generate (app/observability/greppable.py). Drops 0.7% of the trace ids
    (and 0.3% of the span ids) that would: 127.99 random bits instead of 128."""

    def generate_span_id(self) -> int:
        while REFUSAL in f"{(span_id := super().generate_span_id()):016x}":
            pass
        return span_id

    def generate_trace_id(self) -> int:
        while REFUSAL in f"{(trace_id := super().generate_trace_id()):032x}":
            pass
        return trace_id


def sampler_for(name: str, ratio: float) -> Sampler:
    """OTEL_TRACES_SAMPLER's standard names."""
    root: Sampler = {"always_on": ALWAYS_ON, "always_off": ALWAYS_OFF}.get(
        name.removeprefix("parentbased_"), TraceIdRatioBased(ratio))
    return ParentBased(root) if name.startswith("parentbased_") else root


class Tracing:
    """The tracer provider of one running app and the server span of each router request."""

    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer("ivy-router", __version__)

    def start_request(self, method: str, route: str, headers: Iterable[tuple[bytes, bytes]]) -> RequestSpan:
        """The request's SERVER span, child of the caller's `traceparent` when it sent one, made
        current (with the tracer, for the helpers below) until its `end`."""
        carrier = {}
        for key, value in headers:
            if key in (b"traceparent", b"tracestate"):
                carrier[key.decode()] = value.decode("latin-1")
        parent = _PROPAGATOR.extract(carrier) if carrier else None
        span = self.tracer.start_span(f"{method} {route}", context=parent, kind=SpanKind.SERVER,
                                      attributes={"http.request.method": method, "http.route": route})
        return RequestSpan(span, _TRACER.set(self.tracer), otel_context.attach(trace.set_span_in_context(span, parent)))

    def shutdown(self, timeout: float = FLUSH_SECONDS) -> None:
        """Export what is queued and stop, within `timeout` even when the receiver is down (the
        exporter's thread is a daemon: what it still holds then is lost, not waited for)."""
        stopper = threading.Thread(target=self.provider.shutdown, name="ivy-trace-shutdown", daemon=True)
        stopper.start()
        stopper.join(timeout)


class RequestSpan:
    """A router request's server span, current in the request's context until `end`."""

    __slots__ = ("context_token", "span", "tracer_token")

    def __init__(self, span: Span, tracer_token: Token[trace.Tracer | None], context_token: object) -> None:
        self.span, self.tracer_token, self.context_token = span, tracer_token, context_token

    def end(self, status: int, attributes: dict[str, Attribute | None]) -> None:
        span = self.span
        if span.is_recording():
            # One call: each attribute costs ~2 us to set and ~3 us to encode for OTLP (bench_tracing.py).
            span.set_attributes({"http.response.status_code": status,
                                 **{k: v for k, v in attributes.items() if v is not None}})
            if status >= 500:  # the server's fault; a 4xx is the client's (OpenTelemetry's HTTP conventions)
                span.set_status(Status(StatusCode.ERROR))
                span.set_attribute("error.type", str(status))
        span.end()
        otel_context.detach(self.context_token)  # type: ignore[arg-type]
        _TRACER.reset(self.tracer_token)


def build_tracing(settings: Settings, exporter: SpanExporter | None = None) -> Tracing | None:
    """The settings' tracer provider, or None when tracing is off. `exporter` replaces OTLP (spans
    exported as each ends: the tests' in-memory exporter)."""
    if exporter is None:
        endpoint = settings.otel_traces_endpoint
        if endpoint is None:
            return None
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        processor: BatchSpanProcessor | SimpleSpanProcessor = BatchSpanProcessor(OTLPSpanExporter(
            endpoint=endpoint, headers=settings.otel_headers(), timeout=settings.otel_exporter_otlp_timeout / 1000))
    else:
        processor = SimpleSpanProcessor(exporter)
    resource = Resource({"service.name": settings.otel_service_name, "service.version": __version__,
                         **settings.otel_resource_attributes_map()})
    provider = TracerProvider(
        sampler=sampler_for(settings.otel_traces_sampler, settings.otel_traces_sampler_arg),
        resource=resource, id_generator=GreppableIds(), shutdown_on_exit=False)
    provider.add_span_processor(processor)
    return Tracing(provider)


def stage(name: str, **attributes: Attribute | None) -> contextlib.AbstractContextManager[Span]:
    """A child span of the current one around a block, current inside it; a no-op outside a traced
    request. `with tracing.stage("classify") as span: ...; span.set_attribute("ivy.intent", intent)`.
    Never around a `yield` of an async generator: the span would stay current in its consumer."""
    tracer = _TRACER.get()
    if tracer is None:
        return _NOOP
    return _current(tracer.start_span(name, attributes=_clean(attributes)))


@contextlib.contextmanager
def _current(span: Span) -> Iterator[Span]:
    token = otel_context.attach(trace.set_span_in_context(span))
    try:
        yield span
    except BaseException as exc:
        _failed(span, exc)
        raise
    finally:
        otel_context.detach(token)
        span.end()


def _failed(span: Span, exc: BaseException) -> None:
    """An error is ERROR with its type (a provider's reason tag, never its message: it may quote
    the prompt); a refusal (`refusal = True`: a DomainError, a 429) and a close (the client went
    away) are not."""
    if isinstance(exc, Exception) and not getattr(exc, "refusal", False):
        span.set_status(Status(StatusCode.ERROR))
        span.set_attribute("error.type", str(getattr(exc, "reason", None) or type(exc).__name__))
    elif not isinstance(exc, Exception):
        span.set_attribute("ivy.abandoned", True)  # GeneratorExit or CancelledError: nobody waits any more


@contextlib.asynccontextmanager
async def stage_over(name: str, items: AsyncIterator[T], **attributes: Attribute | None
                     ) -> AsyncIterator[AsyncIterator[T]]:
    """The stage span of a stream read inside an async generator (`answer`'s generate): `items`,
    each step taken with the span current (so what it starts, e.g. the provider attempts, nests
    under it) and the span not current across the reader's yields. At exit, even when the reader
    is closed early (GeneratorExit) or cancelled, `items` is closed first, then the span ends:
    every child ends inside it. Off: `items`, closed at exit."""
    tracer = _TRACER.get()
    if tracer is None:
        try:
            yield items
        finally:
            await _aclose(items)
        return
    span = tracer.start_span(name, attributes=_clean(attributes))
    steps = _steps(span, items)
    try:
        yield steps
    except BaseException as exc:
        _failed(span, exc)
        raise
    finally:
        await steps.aclose()
        span.end()


async def _steps(span: Span, items: AsyncIterator[T]) -> AsyncGenerator[T, None]:
    context = trace.set_span_in_context(span)
    try:
        while True:
            token = otel_context.attach(context)  # attached and detached in one step: one context
            try:
                item = await anext(items)
            except StopAsyncIteration:
                return
            finally:
                otel_context.detach(token)
            yield item
    finally:
        token = otel_context.attach(context)
        try:
            await _aclose(items)
        finally:
            otel_context.detach(token)


async def _aclose(items: AsyncIterator[Any]) -> None:
    aclose = getattr(items, "aclose", None)
    if aclose is not None:
        await aclose()


def start_span(name: str, *, kind: SpanKind = SpanKind.INTERNAL, **attributes: Attribute | None) -> Span:
    """A child span of the current one, not made current, that the caller ends (`span.end()`);
    the no-op span outside a traced request. For work whose end is not a block's, e.g. a provider
    attempt that ends when it is cancelled: make it current in that work's task with `start_task`."""
    tracer = _TRACER.get()
    if tracer is None:
        return INVALID_SPAN
    return tracer.start_span(name, kind=kind, attributes=_clean(attributes))


def start_task(span: Span, work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
    """`work` as a task with `span` current in it (a task copies the context when it is created)."""
    if span is INVALID_SPAN:
        return asyncio.ensure_future(work)
    token = otel_context.attach(trace.set_span_in_context(span))
    try:
        return asyncio.ensure_future(work)
    finally:
        otel_context.detach(token)


def on() -> bool:
    """Inside a traced request: the guard of call sites that build attributes, so that off a
    request pays this one check and no attribute dicts."""
    return _TRACER.get() is not None


def add_event(name: str, **attributes: Attribute | None) -> None:
    """An event on the current span (a breaker transition, a fallback); nothing outside a traced request."""
    if _TRACER.get() is not None:
        trace.get_current_span().add_event(name, _clean(attributes))


def annotate(**attributes: Attribute | None) -> None:
    """Attributes on the current span (a stage's outcome, known inside it); nothing outside a traced request."""
    if _TRACER.get() is not None:
        trace.get_current_span().set_attributes(_clean(attributes))


def add_trace_ids(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: `trace_id` / `span_id` of the current span on lines of a traced request."""
    if _TRACER.get() is not None:
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            event_dict["trace_id"] = format(context.trace_id, "032x")
            event_dict["span_id"] = format(context.span_id, "016x")
    return event_dict


def _clean(attributes: dict[str, Attribute | None]) -> dict[str, Attribute]:
    return {k: v for k, v in attributes.items() if v is not None}
