"""The attempt spans of a race, deterministic: scripted providers on a fake clock (tests/scripted.py)
read through the generate stage (`tracing.stage_over`) inside a server span, decoded from the
OTLP bytes the exporter sends (tests/otlp.py).
One span per attempt (first, hedge, failover) under generate, each with its role and outcome,
each ending when its attempt really ends: a cancelled hedge at its cancellation, the winner when
its stream ends, every call still running at the deadline or when the client goes away."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from app.config import Settings
from app.observability import tracing
from app.observability.logging import get_logger
from app.observability.metrics import Metrics
from app.observability.tracing import build_tracing
from app.providers.base import GenerationRequest, ProviderUnavailable
from app.providers.chain import ProviderChain
from app.providers.hedging import HedgeConfig
from app.providers.links import Link, Trace
from app.resilience.breaker import BreakerConfig, CircuitBreaker
from tests.otlp import Received, ReceivedSpan
from tests.scripted import Call, FakeClock, ScriptedProvider

HEDGE = HedgeConfig(min_delay=0.005, max_delay=1.0, initial_delay=0.1, min_samples=10, budget_floor=3)


@pytest.fixture
async def clock() -> AsyncIterator[FakeClock]:
    c = FakeClock()
    yield c
    c.close()


class Traced:
    """Two scripted providers in a chain, and every span of the requests asked of it."""

    def __init__(self, clock: FakeClock, settings: Settings, *, deadline: float = 2.0, min_calls: int = 5) -> None:
        self.clock = clock
        self.gemini = ScriptedProvider("gemini", clock, model="gemini-scripted")
        self.openai = ScriptedProvider("openai", clock, model="gpt-scripted")
        config = BreakerConfig(min_calls=min_calls)
        links = [Link(p, CircuitBreaker(p.name, config, clock=clock.now)) for p in (self.gemini, self.openai)]
        self.chain = ProviderChain(links, Metrics(), deadline=deadline, clock=clock, hedge=HEDGE)
        self.exporter = Received()
        tracer = build_tracing(settings, self.exporter, warn=get_logger().warning)
        assert tracer is not None
        self.exporter.watch(tracer)
        self.tracing = tracer

    async def ask(self, request: GenerationRequest, *, buffered: bool, take: int | None = None) -> list[str]:
        """The chunks read through the generate stage; ``take``: the client leaves after that many."""
        async def answer() -> AsyncIterator[str]:  # as app/pipeline.py's `answer` reads the chain
            stream = self.chain.stream(request, deadline=self.chain.deadline(), trace=Trace(), buffered=buffered)
            async with tracing.stage_over("generate", stream) as pieces:
                async for piece in pieces:
                    yield piece

        served = self.tracing.start_request("POST", "/ai/router/v2", [])
        chunks: list[str] = []
        try:
            async with contextlib.aclosing(answer()) as events:
                async for chunk in events:
                    chunks.append(chunk)
                    if take is not None and len(chunks) == take:
                        break  # the client went away: `answer` is closed at its yield
        finally:
            served.end(200, {})
        for _ in range(8):  # let cancelled losers run their cancellation
            await asyncio.sleep(0)
        return chunks

    def spans(self) -> dict[str, ReceivedSpan]:
        """Attempt spans by "role provider", and the generate and server spans."""
        out: dict[str, ReceivedSpan] = {}
        for span in self.exporter.get_finished_spans():
            attrs = span.attributes
            key = f"{attrs['ivy.attempt.role']} {attrs['gen_ai.provider.name']}" if span.name.startswith("chat ") \
                else span.name
            assert key not in out, f"two spans for {key}"
            out[key] = span
        return out


@pytest.fixture
def traced(clock: FakeClock, make_settings: Callable[..., Settings]) -> Callable[..., Traced]:
    return lambda **kw: Traced(clock, make_settings(), **kw)


def outcome(span: ReceivedSpan) -> Any:
    return span.attributes["ivy.attempt.outcome"]


def under_generate(spans: dict[str, ReceivedSpan], *attempts: str) -> None:
    generate, server = spans["generate"], spans["POST /ai/router/v2"]
    assert generate.parent_id == server.span_id
    for key in attempts:
        span = spans[key]
        assert span.parent_id == generate.span_id, key
        assert span.trace_id == server.trace_id
        assert generate.start_time <= span.start_time <= span.end_time <= generate.end_time, key


def ends(span: ReceivedSpan) -> int:
    return span.end_time


async def test_a_hedge_that_wins_outruns_the_first_call_each_its_own_span(
        traced: Callable[..., Traced], make_request: Callable[..., GenerationRequest]) -> None:
    t = traced()
    t.gemini.script = [Call(ttft=1.0)]
    t.openai.usual = Call(ttft=0.2)
    assert await t.ask(make_request(), buffered=True) == ["Hello from the model"]
    spans = t.spans()
    assert sorted(spans) == ["POST /ai/router/v2", "first gcp.gemini", "generate", "hedge openai"]
    under_generate(spans, "first gcp.gemini", "hedge openai")
    first, hedge = spans["first gcp.gemini"], spans["hedge openai"]
    assert (outcome(first), outcome(hedge)) == ("outrun", "won")
    assert not first.error  # slow is not an error
    assert ends(first) <= ends(hedge)  # outrun at the hedge's first chunk; the hedge then streamed the rest
    assert [e.name for e in hedge.events] == ["ivy.first_token"] and not first.events
    assert hedge.attributes["gen_ai.usage.output_tokens"] == 3
    assert t.gemini.stopped == 1  # the outrun call was really stopped


async def test_a_cancelled_hedge_ends_at_its_cancellation_before_the_winners_stream_ends(
        traced: Callable[..., Traced], make_request: Callable[..., GenerationRequest]) -> None:
    t = traced()
    t.gemini.script = [Call(ttft=0.15, chunks=("One", " two", " three"), gap=0.2)]  # answers after the hedge
    t.openai.usual = Call(ttft=1.0)
    assert await t.ask(make_request(), buffered=False) == ["One", " two", " three"]
    spans = t.spans()
    under_generate(spans, "first gcp.gemini", "hedge openai")
    first, hedge = spans["first gcp.gemini"], spans["hedge openai"]
    assert (outcome(first), outcome(hedge)) == ("won", "cancelled")
    assert ends(hedge) < ends(first)
    (token,) = first.events
    assert token.name == "ivy.first_token" and ends(hedge) >= token.timestamp  # cancelled at the first chunk
    assert token.attributes["ivy.first_token_ms"] == pytest.approx(150.0)
    assert t.openai.stopped == 1


async def test_an_error_fails_over_at_once_the_failed_attempt_ended_before_the_failover_starts(
        traced: Callable[..., Traced], make_request: Callable[..., GenerationRequest]) -> None:
    t = traced(min_calls=1)
    t.gemini.script = [Call(ttft=0.02, error=ProviderUnavailable("gemini", "503 from upstream"))]
    await t.ask(make_request(), buffered=True)
    spans = t.spans()
    under_generate(spans, "first gcp.gemini", "failover openai")
    failed, failover = spans["first gcp.gemini"], spans["failover openai"]
    attrs = failed.attributes
    assert (attrs["ivy.attempt.outcome"], attrs["error.type"]) == ("failed", "unavailable")
    assert failed.error
    assert "503 from upstream" not in str(attrs)  # the reason tag, never the message
    assert ends(failed) <= failover.start_time
    assert outcome(failover) == "won"
    events = {e.name: e.attributes for e in spans["generate"].events}
    assert events["ivy.breaker"] == {"ivy.provider": "gemini", "ivy.breaker.from": "closed", "ivy.breaker.to": "open"}


async def test_calls_still_running_at_the_deadline_end_with_it_and_the_fallback_is_an_event(
        traced: Callable[..., Traced], make_request: Callable[..., GenerationRequest]) -> None:
    t = traced(deadline=0.5)
    t.gemini.usual = t.openai.usual = Call(ttft=None)
    await t.ask(make_request(), buffered=True)
    spans = t.spans()
    attempts = [k for k in spans if k.startswith(("first", "hedge", "failover"))]
    assert attempts and len(attempts) == t.gemini.stopped + t.openai.stopped
    under_generate(spans, *attempts)
    for key in attempts:
        attrs = spans[key].attributes
        assert (attrs["ivy.attempt.outcome"], attrs["error.type"]) == ("deadline", "timeout"), key
    (fallback,) = [e for e in spans["generate"].events if e.name == "ivy.fallback"]
    assert fallback.attributes == {"ivy.provider": "local", "ivy.reason": "timeout"}


async def test_a_client_that_leaves_mid_stream_ends_the_winner_then_generate(
        traced: Callable[..., Traced], make_request: Callable[..., GenerationRequest]) -> None:
    t = traced()
    t.gemini.usual = Call(ttft=0.02, chunks=("a", "b", "c", "d"), gap=0.1)
    assert await t.ask(make_request(), buffered=False, take=2) == ["a", "b"]
    spans = t.spans()
    under_generate(spans, "first gcp.gemini")
    assert outcome(spans["first gcp.gemini"]) == "cancelled" and t.gemini.stopped == 1
    assert spans["generate"].attributes["ivy.abandoned"] is True


async def test_a_request_cancelled_mid_race_stops_its_calls_and_ends_their_spans(
        traced: Callable[..., Traced], make_request: Callable[..., GenerationRequest], clock: FakeClock) -> None:
    t = traced()
    t.gemini.usual = t.openai.usual = Call(ttft=None)
    task = asyncio.ensure_future(t.ask(make_request(), buffered=True))
    await clock.sleep(0.3)  # the first call and its hedge are in flight
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(8):
        await asyncio.sleep(0)
    spans = t.spans()
    under_generate(spans, "first gcp.gemini", "hedge openai")
    assert {outcome(spans[k]) for k in ("first gcp.gemini", "hedge openai")} == {"cancelled"}
    assert (t.gemini.stopped, t.openai.stopped) == (1, 1)
