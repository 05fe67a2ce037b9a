"""Busy is not slow (issue 20), over real HTTP to the fake provider (realistic, a tenth of real time):
while the worker's own event loop is late the chain does not hedge, does not judge calls outrun,
keeps its norms and its breakers; and a slow but healthy provider (a thinking model: first token
~3 s, 40 tokens/s) keeps real answers with the default time policy, scaled to the same tenth.

The loop's lag is the real `LoopLag`, fed its readings by the test (``observe``) or measured over
a loop the test blocks; no wall-clock bound is asserted."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from app.observability.metrics import Metrics
from app.providers.base import GenerationRequest
from app.providers.chain import ProviderChain
from app.providers.gemini import GeminiProvider
from app.providers.hedging import HedgeConfig
from app.providers.links import Link, Trace
from app.providers.openai import OpenAIProvider
from app.resilience.breaker import BreakerConfig, CircuitBreaker
from app.resilience.load import LoadConfig, LoopLag
from tools.fake_provider import FakeProviderServer, Realism
from tools.fake_provider.realism import PROFILES, Profile

SCALE = 0.1
# The production defaults (app/providers/hedging.py, settings), times the fake's time scale.
DEFAULTS = HedgeConfig()
SCALED = replace(DEFAULTS, min_delay=DEFAULTS.min_delay * SCALE, initial_delay=1.0 * SCALE,
                 hung_floor=3.0 * SCALE, max_delay=30.0 * SCALE)
THINKING = Profile(ttft_median=3.0, speed_min=38.0, speed_max=42.0)


def chain_of(gemini: GeminiProvider, openai: OpenAIProvider, lag: LoopLag, **kwargs: Any) -> ProviderChain:
    links = [Link(p, CircuitBreaker(p.name, BreakerConfig(min_calls=5))) for p in (gemini, openai)]
    return ProviderChain(links, Metrics(), hedge=kwargs.pop("hedge", SCALED), lag=lag, **kwargs)


def fired(chain: ProviderChain) -> float:
    return sum(chain.metrics.registry.get_sample_value("ivy_provider_hedges_total",
                                                        {"provider": p, "event": "fired"}) or 0.0
               for p in ("gemini", "openai"))


async def ask_many(chain: ProviderChain, request: GenerationRequest, n: int, concurrency: int = 8) -> list[Trace]:
    gate = asyncio.Semaphore(concurrency)

    async def one() -> Trace:
        async with gate:
            trace = Trace()
            async for _ in chain.stream(request, deadline=chain.deadline(), trace=trace, buffered=True):
                pass
            return trace

    return list(await asyncio.gather(*(one() for _ in range(n))))


async def test_while_the_loop_is_late_stalled_calls_are_not_hedged_outrun_or_held_against_the_breaker(
        gemini_provider: GeminiProvider, openai_provider: OpenAIProvider, fake: FakeProviderServer,
        make_request: Callable[..., GenerationRequest]) -> None:
    fake.realism = Realism(seed=5, time_scale=SCALE)
    lag = LoopLag(LoadConfig())
    chain = chain_of(gemini_provider, openai_provider, lag, deadline=2.0)
    await ask_many(chain, make_request(), 30)  # the norm, learned on time
    samples = chain.norms["gemini"].snapshot()["samples"]
    hedges_on_time = fired(chain)
    lag.observe(0.5)  # the loop woke half a second late: it is the router that is slow now
    fake.set_fault("brownout", provider="gemini", share=1.0, seconds=4)  # every call looks stalled (0.4 s)
    traces = await ask_many(chain, make_request(), 30)
    assert fired(chain) == hedges_on_time  # no hedge while late
    assert all(t.provider == "gemini" and not t.failures for t in traces)  # nothing judged outrun
    assert chain.norms["gemini"].snapshot()["samples"] == samples  # late first tokens are not the norm
    assert chain.links[0].breaker.snapshot()["state"] == "closed"


async def test_the_same_stalls_on_an_on_time_loop_are_hedged(
        gemini_provider: GeminiProvider, openai_provider: OpenAIProvider, fake: FakeProviderServer,
        make_request: Callable[..., GenerationRequest]) -> None:
    fake.realism = Realism(seed=5, time_scale=SCALE)
    chain = chain_of(gemini_provider, openai_provider, LoopLag(LoadConfig()), deadline=0.8)
    await ask_many(chain, make_request(), 30)
    before = fired(chain)
    fake.set_fault("brownout", provider="gemini", share=1.0, seconds=4)
    await ask_many(chain, make_request(), 30)
    assert fired(chain) > before  # the control: what the late loop did not do


async def test_a_deadline_reached_on_a_late_loop_does_not_open_the_providers_breaker(
        gemini_provider: GeminiProvider, openai_provider: OpenAIProvider, fake: FakeProviderServer,
        make_request: Callable[..., GenerationRequest]) -> None:
    fake.realism = None
    lag = LoopLag(LoadConfig())
    chain = chain_of(gemini_provider, openai_provider, lag, deadline=0.5)
    lag.observe(0.5)
    fake.set_fault("hang", provider="gemini", seconds=3)
    fake.set_fault("hang", provider="openai", seconds=3)
    traces = await ask_many(chain, make_request(), 10, concurrency=10)
    assert all(t.provider == "local" for t in traces)  # out of time: the offline provider answered
    assert {link.breaker.snapshot()["state"] for link in chain.links} == {"closed"}
    assert all(link.breaker.snapshot()["failures_in_window"] == 0 for link in chain.links)


async def test_a_blocked_loop_is_measured_as_late_by_the_lag_timer() -> None:
    lag = LoopLag(LoadConfig(interval=0.01))
    ticked = asyncio.Event()
    lag.listeners.append(lambda _, __: ticked.set())
    timer = asyncio.create_task(lag.run())

    async def next_tick() -> None:
        ticked.clear()
        await ticked.wait()

    try:
        started = lag.clock()
        for _ in range(3):
            await next_tick()
        assert not lag.late_since(started)
        time.sleep(0.2)  # noqa: ASYNC251 - the point: a CPU-bound handler holding the loop
        await next_tick()
        assert lag.late and lag.late_since(started)
    finally:
        timer.cancel()


async def test_a_slow_but_healthy_thinking_model_keeps_real_answers_with_the_default_policy(
        gemini_provider: GeminiProvider, openai_provider: OpenAIProvider, fake: FakeProviderServer,
        make_request: Callable[..., GenerationRequest]) -> None:
    fake.realism = Realism(seed=9, time_scale=SCALE, profiles={**PROFILES, "gemini": THINKING})
    chain = chain_of(gemini_provider, openai_provider, LoopLag(LoadConfig()), deadline=8.0 * SCALE,
                     deadline_max=60.0 * SCALE)
    traces = await ask_many(chain, make_request(), 120, concurrency=16)
    offline = [t for t in traces if t.provider == "local"]
    assert len(offline) == 0, [t.failures for t in offline][:5]
    assert chain.links[0].breaker.snapshot()["state"] == "closed"


async def test_a_long_answer_written_at_a_steady_pace_past_its_deadline_is_the_providers_not_cut(
        gemini_provider: GeminiProvider, openai_provider: OpenAIProvider, fake: FakeProviderServer,
        make_request: Callable[..., GenerationRequest]) -> None:
    # ~80 tokens at 4 tokens/s: ~20 s of steady writing (2 s at the tenth), past the cold deadline
    # of twice the least (1.6 s at the tenth); the ceiling, the MAX, is 6 s.
    steady = Profile(ttft_median=0.33, speed_min=3.9, speed_max=4.1, answer_median=80.0, answer_sigma=0.05)
    fake.realism = Realism(seed=3, time_scale=SCALE, profiles={**PROFILES, "gemini": steady})
    chain = chain_of(gemini_provider, openai_provider, LoopLag(LoadConfig()), deadline=8.0 * SCALE,
                     deadline_max=60.0 * SCALE)
    assert chain.deadline_for() == 2 * 8.0 * SCALE  # cold: twice the least
    traces = await ask_many(chain, make_request(), 8, concurrency=8)
    assert [t.provider for t in traces] == ["gemini"] * 8, [t.failures for t in traces]
    assert chain.metrics.registry.get_sample_value("ivy_provider_overtime_total", {"provider": "gemini"}) == 8
    assert chain.links[0].breaker.snapshot()["state"] == "closed"
