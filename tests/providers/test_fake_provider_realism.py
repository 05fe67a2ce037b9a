"""The fake provider's realistic mode: published timings, seeded, over real HTTP."""

from __future__ import annotations

import time
from collections.abc import Callable

import aiohttp

from app.providers.base import GenerationRequest, Usage
from app.providers.clock import Deadline
from app.providers.gemini import GeminiProvider
from tools.fake_provider import FakeProviderServer, Realism


def test_plans_follow_the_published_shapes_and_repeat_with_the_seed() -> None:
    one, two = Realism(seed=3), Realism(seed=3)
    plans = [one.plan("gemini", json_mode=False, max_tokens=None) for _ in range(2000)]
    assert plans[:50] == [two.plan("gemini", json_mode=False, max_tokens=None) for _ in range(50)]
    ttft = sorted(p.ttft for p in plans)
    assert 0.30 < ttft[1000] < 0.36 and 1.6 < ttft[1900] / ttft[1000] < 2.0  # median ~0.33 s, p95 ~1.8x
    totals = sorted(p.total for p in plans)
    assert 0.7 < totals[1000] < 1.0  # ~110 tokens at ~245 tokens/s after the first token
    openai = sorted(one.plan("openai", json_mode=False, max_tokens=None).total for _ in range(2000))
    assert 1.7 < openai[1000] < 2.6
    capped = [one.plan("gemini", json_mode=True, max_tokens=100).tokens for _ in range(200)]
    assert max(capped) == 100 and min(capped) < 100


async def test_a_non_streamed_answer_arrives_after_ttft_plus_writing_with_the_sampled_usage(
        fake: FakeProviderServer, session: aiohttp.ClientSession) -> None:
    # The router only streams; the fake still answers a plain chat.completions call (the SDKs' default).
    fake.realism = Realism(seed=5, time_scale=0.2)
    body = {"model": "gpt-4.1-mini", "messages": [{"role": "user", "content": "hi"}]}
    started = time.monotonic()
    async with session.post(f"{fake.openai_base_url}/chat/completions", json=body,
                            headers={"Authorization": "Bearer k"}) as resp:
        answer = await resp.json()
    elapsed = time.monotonic() - started
    plan = fake.realism.plans[-1]
    assert answer["usage"]["completion_tokens"] == plan.tokens
    assert plan.total * 0.2 <= elapsed < plan.total * 0.2 + 0.15


async def test_a_stream_sends_its_first_chunk_at_ttft_and_the_rest_at_the_output_speed(
        fake: FakeProviderServer, gemini_provider: GeminiProvider, make_request: Callable[..., GenerationRequest]
) -> None:
    fake.realism = Realism(seed=9, time_scale=0.2)
    usage = Usage()
    started = time.monotonic()
    stream = gemini_provider.stream(make_request(), deadline=Deadline.after(5), usage=usage)
    first = await anext(stream)
    first_at = time.monotonic() - started
    rest = [chunk async for chunk in stream]
    done_at = time.monotonic() - started
    plan = fake.realism.plans[-1]
    assert plan.ttft * 0.2 <= first_at < plan.ttft * 0.2 + 0.1
    assert plan.total * 0.2 <= done_at < plan.total * 0.2 + 0.15
    assert first and rest and usage.output_tokens == plan.tokens


async def test_a_brownout_stalls_its_share_of_calls_before_the_first_byte(
        fake: FakeProviderServer, gemini_provider: GeminiProvider, make_request: Callable[..., GenerationRequest]
) -> None:
    fake.realism = Realism(seed=1, time_scale=0.05)
    fake.set_fault("brownout", provider="gemini", share=0.3, seconds=4)
    for _ in range(30):
        [piece async for piece in gemini_provider.stream(make_request(), deadline=Deadline.after(5))]
    stalled = [p for p in fake.realism.plans if p.stall]
    assert 3 <= len(stalled) <= 15 and all(p.stall == 4 for p in stalled)
    stats = fake.realism.stats()["gemini"]
    assert stats["calls"] == 30 and stats["stalled"] == len(stalled)
    assert stats["service_p95_ms"] > 4000 > stats["service_p50_ms"]  # in simulated milliseconds
