"""The chain's wiring over real HTTP: the fake provider in realistic mode at a tenth of real time
(gemini's first token ~33 ms and answers ~100 ms, openai's ~60 ms and ~250 ms), real adapters,
real breakers. What happens when is pinned exactly, on a fake clock, in test_race.py; these
tests check outcomes only (no wall-clock bounds)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import pytest

from app.observability.metrics import Metrics
from app.providers.base import GenerationRequest
from app.providers.chain import ProviderChain
from app.providers.gemini import GeminiProvider
from app.providers.hedging import HedgeConfig
from app.providers.links import Link, LinkFailure, Trace
from app.providers.openai import OpenAIProvider
from app.resilience.breaker import BreakerConfig, CircuitBreaker
from tools.fake_provider import FakeProviderServer, Realism

SCALE = 0.1
FAST = HedgeConfig(min_delay=0.005, max_delay=1.0, initial_delay=0.1, min_samples=10, budget_floor=3)

MakeChain = Callable[..., ProviderChain]


@pytest.fixture
def make_chain(gemini_provider: GeminiProvider, openai_provider: OpenAIProvider, fake: FakeProviderServer
               ) -> MakeChain:
    fake.realism = Realism(seed=11, time_scale=SCALE)

    def make(deadline: float = 2.0, **hedge: Any) -> ProviderChain:
        links = [Link(p, CircuitBreaker(p.name, BreakerConfig(min_calls=5)))
                 for p in (gemini_provider, openai_provider)]
        return ProviderChain(links, Metrics(), deadline=deadline, hedge=replace(FAST, **hedge))

    return make


def counter(chain: ProviderChain, provider: str, event: str) -> float:
    value = chain.metrics.registry.get_sample_value("ivy_provider_hedges_total",
                                                    {"provider": provider, "event": event})
    return value or 0.0


def breaker(chain: ProviderChain, name: str) -> dict[str, Any]:
    return next(link.breaker for link in chain.links if link.provider.name == name).snapshot()


@dataclass
class Answer:
    text: str
    trace: Trace

    @property
    def provider(self) -> str:
        return self.trace.provider

    @property
    def failures(self) -> list[LinkFailure]:
        return self.trace.failures


async def ask(chain: ProviderChain, request: GenerationRequest, first: str | None = None) -> Answer:
    """A whole answer (the chain's stream, buffered), as a JSON request gets it."""
    trace = Trace()
    pieces = [p async for p in chain.stream(request, deadline=chain.deadline(), trace=trace, first=first,
                                            buffered=True)]
    return Answer("".join(pieces), trace)


async def ask_many(chain: ProviderChain, request: GenerationRequest, n: int, concurrency: int = 4) -> list[Answer]:
    gate = asyncio.Semaphore(concurrency)

    async def one() -> Answer:
        async with gate:
            return await ask(chain, request)

    return list(await asyncio.gather(*(one() for _ in range(n))))


async def test_a_healthy_primary_answers_everything_with_few_hedges_and_a_closed_breaker(
        make_chain: MakeChain, make_request: Callable[..., GenerationRequest]) -> None:
    chain = make_chain()
    results = await ask_many(chain, make_request(), 80)
    assert {r.provider for r in results} == {"gemini"}
    assert all(not r.failures for r in results)
    assert counter(chain, "gemini", "fired") + counter(chain, "openai", "fired") <= 0.15 * 80
    assert breaker(chain, "gemini")["state"] == "closed"
    usage = [r.trace.output_tokens for r in results]
    assert all(u is not None and 1 <= u <= 256 for u in usage)  # the sampled counts, capped by the request
    assert len(set(usage)) > 10


async def test_a_brownout_is_raced_so_stalled_calls_do_not_set_the_tail(
        make_chain: MakeChain, make_request: Callable[..., GenerationRequest], fake: FakeProviderServer) -> None:
    chain = make_chain()
    request = make_request()
    await ask_many(chain, request, 20)  # the norm is learned while healthy
    fake.set_fault("brownout", provider="gemini", share=0.15, seconds=4)  # 0.4 s stalls at this scale
    results = await ask_many(chain, request, 60)
    assert all(r.provider != "local" for r in results)
    assert counter(chain, "gemini", "fired") >= 5  # the stalled calls were raced
    assert counter(chain, "gemini", "won") + counter(chain, "openai", "won") >= 1
    assert breaker(chain, "gemini")["state"] == "closed"  # a brownout is not an outage


async def test_an_outrun_call_is_slow_not_failed_and_a_cancelled_hedge_counts_for_nothing(
        make_chain: MakeChain, make_request: Callable[..., GenerationRequest], fake: FakeProviderServer) -> None:
    chain = make_chain(initial_delay=0.02)
    fake.realism = None
    # gemini's first call stalls 150 ms; the hedge to openai (gemini's norm is unknown) answers first.
    fake.set_fault("brownout", provider="gemini", share=1.0, seconds=0.15, times=1)
    result = await ask(chain, make_request())
    assert result.provider == "openai" and result.trace.hedged
    assert result.failures[0].reason == "slow"
    # Slow for this request, but gemini has no norm yet to be slow against: nothing on its breaker.
    assert breaker(chain, "gemini")["failures_in_window"] == 0 and breaker(chain, "gemini")["calls_in_window"] == 0
    assert counter(chain, "openai", "won") == 1 and counter(chain, "gemini", "cancelled") == 1
    # Now the hedge loses: gemini stalls 150 ms again, openai hangs; gemini answers and the hedge is cancelled.
    fake.set_fault("brownout", provider="gemini", share=1.0, seconds=0.15, times=1)
    fake.set_fault("hang", provider="openai", seconds=5)
    result = await ask(chain, make_request())
    assert result.provider == "gemini" and result.trace.hedged and not result.failures
    assert counter(chain, "openai", "cancelled") == 1
    openai_breaker = breaker(chain, "openai")
    assert openai_breaker["calls_in_window"] == 1 and openai_breaker["failures_in_window"] == 0  # the first win only


async def test_the_hedge_budget_caps_extra_calls(
        make_chain: MakeChain, make_request: Callable[..., GenerationRequest], fake: FakeProviderServer) -> None:
    chain = make_chain(initial_delay=0.02, budget_ratio=0.1, budget_floor=1)
    fake.realism = None
    fake.set_fault("brownout", provider="gemini", share=1.0, seconds=0.1)  # every gemini call is slow
    results = await ask_many(chain, make_request(), 20, concurrency=1)
    hedges = counter(chain, "openai", "fired") + counter(chain, "gemini", "fired")
    assert 1 <= hedges <= 1 + 0.1 * 20
    assert sum(r.trace.hedged for r in results) == hedges
    # No call beyond the budget; a hedge cancelled (the primary answered) before its request was
    # sent never reaches the fake, which a loaded machine makes likely.
    assert len(fake.requests_for("openai")) <= hedges
    assert all(r.provider in ("gemini", "openai") for r in results)


async def test_the_budget_never_stops_a_failover(
        make_chain: MakeChain, make_request: Callable[..., GenerationRequest], fake: FakeProviderServer) -> None:
    chain = make_chain(budget_ratio=0.0, budget_floor=0, max_delay=0.3)
    fake.set_fault("503", provider="gemini", times=1)
    first = await ask(chain, make_request())
    assert first.provider == "openai" and first.failures[0].reason == "unavailable"
    fake.set_fault("hang", provider="gemini", seconds=5)
    hung = await ask(chain, make_request())
    assert hung.provider == "openai" and not hung.trace.hedged  # presumed hung at 0.3 s
    assert [f.reason for f in hung.failures] == ["slow"]


async def test_a_hanging_primary_ends_up_skipped_not_raced_on_every_request(
        make_chain: MakeChain, make_request: Callable[..., GenerationRequest], fake: FakeProviderServer) -> None:
    chain = make_chain()
    request = make_request()
    await ask_many(chain, request, 20)
    fake.set_fault("hang", provider="gemini", seconds=5)
    before = len(fake.requests_for("gemini"))
    results = await ask_many(chain, request, 30, concurrency=2)
    assert {r.provider for r in results} == {"openai"}
    assert breaker(chain, "gemini")["state"] == "open"
    assert len(fake.requests_for("gemini")) - before <= 16  # two calls a request at most, until it opens
    assert any(f.reason == "circuit_open" for r in results[-5:] for f in r.failures)
    settled = len(fake.requests_for("gemini"))
    await ask_many(chain, request, 10, concurrency=2)
    assert len(fake.requests_for("gemini")) == settled  # skipped now: the breaker stops the calls, not the budget


async def test_the_deadline_hands_the_answer_to_the_offline_provider(
        make_chain: MakeChain, make_request: Callable[..., GenerationRequest], fake: FakeProviderServer) -> None:
    chain = make_chain(deadline=0.6)
    fake.set_fault("hang", seconds=5)
    result = await ask(chain, make_request())
    assert result.provider == "local" and result.text
    assert {f.reason for f in result.failures} >= {"timeout"}
    assert breaker(chain, "gemini")["failures_in_window"] == 1


async def test_a_stream_hedges_before_its_first_token_never_after(
        make_chain: MakeChain, make_request: Callable[..., GenerationRequest], fake: FakeProviderServer) -> None:
    chain = make_chain(initial_delay=0.05)
    fake.realism = None
    fake.set_fault("brownout", provider="gemini", share=1.0, seconds=0.3, times=1)
    trace = Trace()
    chunks = [c async for c in chain.stream(make_request(), deadline=chain.deadline(), trace=trace)]
    assert trace.hedged and trace.provider == "openai" and chunks
    # A stall after the first chunk is not hedged: the client already has gemini's text.
    fake.set_fault("stream_stall", provider="gemini", after=1, seconds=0.3, times=1)
    trace = Trace()
    openai_calls = len(fake.requests_for("openai"))
    chunks = [c async for c in chain.stream(make_request(), deadline=chain.deadline(), trace=trace)]
    assert not trace.hedged and trace.provider == "gemini" and len(chunks) > 1
    assert len(fake.requests_for("openai")) == openai_calls
    assert trace.output_tokens is not None


async def test_the_hedge_goes_to_the_faster_provider_once_both_norms_are_known(
        make_chain: MakeChain, make_request: Callable[..., GenerationRequest]) -> None:
    chain = make_chain()
    request = make_request()
    for first in ("gemini", "openai"):
        await ask_many(chain, request, 15, concurrency=3) if first == "gemini" else None
        for _ in range(12):
            await ask(chain, request, first=first)
    slow_openai = chain.ordered("openai")[0]
    target = chain.hedge_target(slow_openai, [chain.ordered("openai")[1]], streamed=False)
    assert target is not None and target.provider.name == "gemini"  # ~100 ms against ~250 ms
    slow_gemini = chain.ordered("gemini")[0]
    assert chain.hedge_target(slow_gemini, [chain.ordered("gemini")[1]], streamed=False) is slow_gemini


async def test_a_provider_whose_every_call_gets_slower_keeps_its_breaker_closed(
        make_chain: MakeChain, make_request: Callable[..., GenerationRequest], fake: FakeProviderServer) -> None:
    chain = make_chain()
    request = make_request()
    await ask_many(chain, request, 20)  # the norm: ~33 ms to the first token
    fake.set_fault("brownout", provider="gemini", share=1.0, seconds=2)  # now every call waits 0.2 s more
    fake.set_fault("503", provider="openai")
    results = await ask_many(chain, request, 30)
    assert {r.provider for r in results} == {"gemini"}
    assert breaker(chain, "gemini")["state"] == "closed"  # slower than its old norm is not broken
