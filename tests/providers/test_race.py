"""The race and the chain's time policy, deterministic: scripted providers on a fake clock
(tests/scripted.py), so every instant below is exact and no bound depends on the machine."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import pytest

from app.observability.metrics import Metrics
from app.providers.base import GenerationRequest, ProviderTimeout, ProviderUnavailable
from app.providers.chain import ProviderChain
from app.providers.clock import Alarm, Deadline
from app.providers.hedging import HedgeBudget, HedgeConfig
from app.providers.links import Link, Trace
from app.providers.race import Race
from app.resilience.breaker import BreakerConfig, CircuitBreaker
from app.resilience.load import NEVER_LATE, LagSource
from tests.scripted import Call, FakeClock, ScriptedProvider

HEDGE = HedgeConfig(min_delay=0.005, max_delay=1.0, initial_delay=0.1, min_samples=10, budget_floor=3)
HANG = Call(ttft=None)


@pytest.fixture
async def clock() -> AsyncIterator[FakeClock]:
    c = FakeClock()
    yield c
    c.close()


class LateSpell:
    """A loop late from ``start`` to ``end`` on the fake clock (what LoopLag reports of a lag spike)."""

    def __init__(self, clock: FakeClock, start: float, end: float) -> None:
        self.clock, self.start, self.end = clock, start, end

    def late_since(self, since: float) -> bool:
        return self.start <= self.clock.now() and since < self.end


class Setup:
    def __init__(self, clock: FakeClock, deadline: float = 2.0, breaker: BreakerConfig | None = None,
                 lag: LagSource = NEVER_LATE, deadline_max: float | None = None, **hedge: Any) -> None:
        self.clock = clock
        self.gemini = ScriptedProvider("gemini", clock)
        self.openai = ScriptedProvider("openai", clock)
        config = breaker or BreakerConfig(min_calls=5)
        self.links = [Link(p, CircuitBreaker(p.name, config, clock=clock.now)) for p in (self.gemini, self.openai)]
        self.metrics = Metrics()
        self.chain = ProviderChain(self.links, self.metrics, deadline=deadline, clock=clock,
                                   hedge=replace(HEDGE, **hedge), lag=lag, deadline_max=deadline_max)

    def breaker(self, name: str) -> CircuitBreaker:
        return next(link.breaker for link in self.links if link.provider.name == name)

    async def ask(self, request: GenerationRequest, *, buffered: bool = True, first: str | None = None
                  ) -> tuple[list[str], Trace, float]:
        """The chunks, the trace and how long the answer took on the fake clock."""
        started, trace = self.clock.now(), Trace()
        chunks = [c async for c in self.chain.stream(request, deadline=self.chain.deadline(), trace=trace,
                                                     buffered=buffered, first=first)]
        took = self.clock.now() - started
        for _ in range(8):  # let the cancelled losers run their cancellation (the race does not wait)
            await asyncio.sleep(0)
        return chunks, trace, took


MakeRequest = Callable[..., GenerationRequest]


async def test_a_first_chunk_before_the_hedge_delay_wins_alone(clock: FakeClock, make_request: MakeRequest) -> None:
    s = Setup(clock)
    chunks, trace, took = await s.ask(make_request())
    assert chunks == ["Hello from the model"] and trace.provider == "gemini" and trace.model == "scripted-1"
    assert took == pytest.approx(0.05) and trace.calls == 1 and not trace.hedged and trace.failures == []
    assert s.openai.started == []


async def test_a_call_with_no_chunk_by_its_hedge_delay_is_hedged_and_the_hedge_can_win(
        clock: FakeClock, make_request: MakeRequest) -> None:
    s = Setup(clock)
    s.gemini.script = [Call(ttft=1.0)]
    s.openai.usual = Call(ttft=0.2)
    t0 = clock.now()
    _chunks, trace, took = await s.ask(make_request())
    assert s.openai.started == [pytest.approx(t0 + 0.1)]  # the hedge, at gemini's initial hedge delay
    assert trace.provider == "openai" and trace.hedged and took == pytest.approx(0.3)
    assert [(f.provider, f.reason) for f in trace.failures] == [("gemini", "slow")]
    assert s.gemini.stopped == 1  # the outrun call was cancelled, its connection closed
    assert s.breaker("gemini").snapshot()["failures_in_window"] == 0  # slow, not failed


async def test_a_hedge_due_while_the_loop_is_late_is_put_off_one_hedge_delay_not_dropped(
        clock: FakeClock, make_request: MakeRequest) -> None:
    t0 = clock.now()
    s = Setup(clock, lag=LateSpell(clock, t0 + 0.05, t0 + 0.15))  # a lag spike across the hedge delay (0.1)
    s.gemini.script = [Call(ttft=1.0)]
    s.openai.usual = Call(ttft=0.2)
    _chunks, trace, took = await s.ask(make_request())
    assert s.openai.started == [pytest.approx(t0 + 0.2)]  # not at 0.1 (late), at the next look (on time)
    assert trace.provider == "openai" and trace.hedged and took == pytest.approx(0.4)
    deferred = s.chain.metrics.registry.get_sample_value("ivy_provider_hedges_total",
                                                         {"provider": "gemini", "event": "deferred"})
    assert deferred == 1
    # Timed across the late spell, the outrun call is no evidence against gemini.
    assert trace.failures == [] and s.breaker("gemini").snapshot()["failures_in_window"] == 0


async def test_a_hedge_cancelled_because_the_original_answered_counts_for_nothing(
        clock: FakeClock, make_request: MakeRequest) -> None:
    s = Setup(clock)
    s.gemini.script = [Call(ttft=0.25)]
    s.openai.usual = Call(ttft=1.0)
    _chunks, trace, took = await s.ask(make_request())
    assert trace.provider == "gemini" and trace.hedged and trace.failures == [] and took == pytest.approx(0.25)
    assert s.openai.stopped == 1
    assert s.breaker("openai").snapshot()["calls_in_window"] == 0


async def test_an_error_fails_over_at_once_whatever_the_budget(clock: FakeClock, make_request: MakeRequest) -> None:
    s = Setup(clock, budget_ratio=0.0, budget_floor=0)
    s.gemini.script = [Call(ttft=0.04, error=ProviderUnavailable("gemini", "HTTP 503"))]
    t0 = clock.now()
    _chunks, trace, took = await s.ask(make_request())
    assert s.openai.started == [pytest.approx(t0 + 0.04)]
    assert trace.provider == "openai" and took == pytest.approx(0.09)
    assert [f.reason for f in trace.failures] == ["unavailable"]


async def test_a_call_with_no_chunk_by_the_max_hedge_delay_is_presumed_hung_whatever_the_budget(
        clock: FakeClock, make_request: MakeRequest) -> None:
    s = Setup(clock, budget_ratio=0.0, budget_floor=0, max_delay=0.3)
    s.gemini.script = [HANG]
    t0 = clock.now()
    _chunks, trace, took = await s.ask(make_request())
    assert s.openai.started == [pytest.approx(t0 + 0.3)] and not trace.hedged
    assert trace.provider == "openai" and took == pytest.approx(0.35)
    assert [(f.provider, f.reason) for f in trace.failures] == [("gemini", "slow")]


async def test_a_hedge_onto_the_same_provider_fails_over_after_twice_its_delay(
        clock: FakeClock, make_request: MakeRequest) -> None:
    s = Setup(clock, min_samples=3)
    for _ in range(3):  # gemini's norm: 50 ms to the first chunk, so its hedge delay is 50 ms
        await s.ask(make_request())
    s.gemini.script = [HANG, HANG]  # a hang starting: the first call and its hedge both stall
    t0 = clock.now()
    _chunks, trace, took = await s.ask(make_request())
    assert s.gemini.started[-2:] == [pytest.approx(t0), pytest.approx(t0 + 0.05)]
    assert s.openai.started == [pytest.approx(t0 + 0.05 + 2 * 0.05)]
    assert trace.provider == "openai" and took == pytest.approx(0.2)


async def test_the_deadline_cancels_every_call_and_the_offline_provider_answers(
        clock: FakeClock, make_request: MakeRequest) -> None:
    s = Setup(clock, deadline=0.6)
    s.gemini.usual = s.openai.usual = HANG
    chunks, trace, took = await s.ask(make_request())
    assert took == pytest.approx(0.6) and trace.provider == "local" and trace.model == "ivy-offline-1"
    assert len(chunks) == 1 and chunks[0]
    assert {f.reason for f in trace.failures} >= {"timeout"}
    assert s.breaker("gemini").snapshot()["failures_in_window"] == 1
    assert s.gemini.stopped + s.openai.stopped == trace.calls


async def test_one_deadline_reaches_every_call_unchanged(clock: FakeClock, make_request: MakeRequest) -> None:
    s = Setup(clock)
    s.gemini.script = [Call(ttft=1.0)]
    deadline = Deadline.after(2.0, clock)
    [c async for c in s.chain.stream(make_request(), deadline=deadline, trace=Trace(), buffered=True)]
    assert s.gemini.deadlines == [deadline] and s.openai.deadlines == [deadline]
    assert s.gemini.deadlines[0] is deadline and s.openai.deadlines[0] is deadline


async def test_the_deadline_bounds_a_stream_after_its_first_chunk_too(
        clock: FakeClock, make_request: MakeRequest) -> None:
    s = Setup(clock, deadline=2.0)
    s.gemini.script = [Call(ttft=0.1, chunks=("a", "b", "c", "d"), gap=0.8)]
    got: list[str] = []
    t0 = clock.now()
    with pytest.raises(ProviderTimeout):
        async for chunk in s.chain.stream(make_request(), deadline=s.chain.deadline(), trace=Trace()):
            got.append(chunk)
    assert got == ["a", "b", "c"] and clock.now() - t0 == pytest.approx(2.0)
    assert s.breaker("gemini").snapshot()["failures_in_window"] == 1
    assert s.gemini.stopped == 1


def overtime(s: Setup, provider: str = "gemini") -> float:
    return s.metrics.registry.get_sample_value("ivy_provider_overtime_total", {"provider": provider}) or 0.0


# Cold, the deadline is twice the least: 2 x 2.0 = 4.0 s; its ceiling the MAX, 10 s.
FLOWING = Call(ttft=0.1, chunks=tuple("abcdefg"), gap=0.8)  # a..g at 0.1, 0.9, ..., 4.9: e at 3.3


async def test_an_answer_still_flowing_at_its_deadline_runs_on_to_its_end(
        clock: FakeClock, make_request: MakeRequest) -> None:
    s = Setup(clock, deadline=2.0, deadline_max=10.0)
    s.gemini.script = [FLOWING]
    got: list[str] = []
    t0 = clock.now()
    async for chunk in s.chain.stream(make_request(), deadline=s.chain.deadline(), trace=Trace()):
        got.append(chunk)
    assert got == list("abcdefg") and clock.now() - t0 == pytest.approx(4.9)
    assert s.breaker("gemini").snapshot()["failures_in_window"] == 0 and s.gemini.finished == 1
    assert overtime(s) == 1


async def test_a_whole_answer_still_flowing_at_its_deadline_is_the_providers_not_the_offline_text(
        clock: FakeClock, make_request: MakeRequest) -> None:
    s = Setup(clock, deadline=2.0, deadline_max=10.0)
    s.gemini.script = [FLOWING]
    chunks, trace, took = await s.ask(make_request())
    assert chunks == ["abcdefg"] and trace.provider == "gemini" and took == pytest.approx(4.9)
    assert overtime(s) == 1


async def test_an_answer_stalled_at_its_deadline_is_cut_there(clock: FakeClock, make_request: MakeRequest) -> None:
    s = Setup(clock, deadline=2.0, deadline_max=10.0)
    # b, c, d 0.2 s apart, then nothing for 3.5 s: at 4.0 its last chunk is 3.3 s old, 16 of its gaps
    s.gemini.script = [Call(ttft=0.1, chunks=tuple("abcde"), gaps=(0.2, 0.2, 0.2, 3.5))]
    got: list[str] = []
    t0 = clock.now()
    with pytest.raises(ProviderTimeout):
        async for chunk in s.chain.stream(make_request(), deadline=s.chain.deadline(), trace=Trace()):
            got.append(chunk)
    assert got == list("abcd") and clock.now() - t0 == pytest.approx(4.0)
    assert s.breaker("gemini").snapshot()["failures_in_window"] == 1 and overtime(s) == 0


async def test_an_answer_with_only_its_first_chunk_by_the_deadline_is_cut_there(
        clock: FakeClock, make_request: MakeRequest) -> None:
    s = Setup(clock, deadline=2.0, deadline_max=10.0)
    s.gemini.script = [Call(ttft=0.1, chunks=("a", "b"), gap=5.0)]  # no pace to judge at 4.0
    got: list[str] = []
    t0 = clock.now()
    with pytest.raises(ProviderTimeout):
        async for chunk in s.chain.stream(make_request(), deadline=s.chain.deadline(), trace=Trace()):
            got.append(chunk)
    assert got == ["a"] and clock.now() - t0 == pytest.approx(4.0) and overtime(s) == 0


async def test_a_flowing_answer_is_cut_at_the_deadlines_ceiling(clock: FakeClock, make_request: MakeRequest) -> None:
    s = Setup(clock, deadline=2.0, deadline_max=6.0)
    s.gemini.script = [Call(ttft=0.1, chunks=tuple("abcdefghijkl"), gap=0.8)]  # would end at 8.9
    got: list[str] = []
    t0 = clock.now()
    with pytest.raises(ProviderTimeout):
        async for chunk in s.chain.stream(make_request(), deadline=s.chain.deadline(), trace=Trace()):
            got.append(chunk)
    assert got == list("abcdefgh") and clock.now() - t0 == pytest.approx(6.0)  # h at 5.7, i due at 6.5
    assert overtime(s) == 1 and s.breaker("gemini").snapshot()["failures_in_window"] == 1


async def test_a_whole_answer_whose_stream_breaks_after_its_first_chunk_still_fails_over(
        clock: FakeClock, make_request: MakeRequest) -> None:
    s = Setup(clock)
    s.gemini.script = [Call(cut_after=1)]
    chunks, trace, _ = await s.ask(make_request())
    assert chunks == ["Hello from the model"] and trace.provider == "openai"
    assert [f.reason for f in trace.failures] == ["unavailable"]


async def test_a_streamed_answer_that_breaks_after_its_first_chunk_raises_and_does_not_fail_over(
        clock: FakeClock, make_request: MakeRequest) -> None:
    s = Setup(clock)
    s.gemini.script = [Call(cut_after=1)]
    got: list[str] = []
    with pytest.raises(ProviderUnavailable):
        async for chunk in s.chain.stream(make_request(), deadline=s.chain.deadline(), trace=Trace()):
            got.append(chunk)
    assert got == ["Hello"] and s.openai.started == []


async def test_a_stream_hedges_before_its_first_chunk_never_after(clock: FakeClock, make_request: MakeRequest) -> None:
    s = Setup(clock, deadline=10.0)
    s.gemini.script = [Call(ttft=0.05, chunks=("a", "b", "c"), gap=3.0)]  # stalls after its first chunk
    chunks, trace, took = await s.ask(make_request(), buffered=False)
    assert chunks == ["a", "b", "c"] and not trace.hedged and took == pytest.approx(6.05)
    assert s.openai.started == []


async def test_the_hedge_budget_caps_extra_calls(clock: FakeClock, make_request: MakeRequest) -> None:
    s = Setup(clock, budget_ratio=0.1, budget_floor=1, min_samples=1000)  # the norm stays unknown: always hedge
    s.gemini.usual = Call(ttft=0.5)  # every gemini call is slow
    s.openai.usual = Call(ttft=1.0)  # and its hedge slower: gemini answers every time
    for _ in range(20):
        await s.ask(make_request())
    # Request k may hedge while hedges + 1 <= 1 + 0.1 k: at k = 1, 10 and 20.
    assert len(s.openai.started) == 3


async def test_a_race_without_an_admitted_link_returns_none_and_says_why(
        clock: FakeClock, make_request: MakeRequest) -> None:
    s = Setup(clock)
    for link in s.links:
        link.breaker.trip("test")
    trace = Trace()
    assert await Race(s.chain, make_request(), list(s.links), s.chain.deadline(), trace).run() is None
    assert [f.reason for f in trace.failures] == ["circuit_open", "circuit_open"] and trace.calls == 0


async def test_the_hedge_goes_to_the_faster_provider_once_both_norms_are_known(
        clock: FakeClock, make_request: MakeRequest) -> None:
    s = Setup(clock)
    s.gemini.usual, s.openai.usual = Call(ttft=0.03), Call(ttft=0.06)
    for first in ("gemini", "openai"):
        for _ in range(10):
            await s.ask(make_request(), buffered=False, first=first)
    gemini, openai = s.links
    assert s.chain.hedge_target(openai, [gemini], streamed=True) is gemini  # 30 ms against 60 ms
    assert s.chain.hedge_target(gemini, [openai], streamed=True) is gemini


async def test_a_long_stream_admitted_before_a_trip_does_not_close_the_half_open_breaker(
        clock: FakeClock, make_request: MakeRequest) -> None:
    s = Setup(clock, deadline=200.0, breaker=BreakerConfig(min_calls=5, open_seconds=30, half_open_calls=1))
    s.gemini.script = [Call(ttft=0.1, chunks=tuple("abcdefg"), gap=20.0)]  # a 120 s answer
    gemini = s.breaker("gemini")
    async for chunk in s.chain.stream(make_request(), deadline=s.chain.deadline(), trace=Trace()):
        if chunk == "a":
            gemini.trip("another worker saw it fail")
    assert s.gemini.finished == 1 and gemini.current_state() == "half_open"  # its success proved nothing


def test_the_hedge_budget_keeps_a_fixed_size_whatever_the_traffic() -> None:
    now = [0.0]
    budget = HedgeBudget(HedgeConfig(budget_window_seconds=60.0), clock=lambda: now[0])
    size = budget.size
    for i in range(100_000):  # 100 requests a second for 1,000 s, hedging off: nothing ever spends
        now[0] = i / 100
        budget.request()
    assert budget.size == size
    requests = budget.snapshot()["requests"]
    assert isinstance(requests, int) and 5_900 <= requests <= 6_000  # the last 60 s, to one bucket
    now[0] += 61
    assert budget.snapshot()["requests"] == 0


async def test_the_deadline_never_cuts_a_stream_while_it_is_away_at_a_yield_only_at_its_next_wait(
        clock: FakeClock) -> None:
    alarm = Alarm(Deadline.after(1.0, clock))
    assert await alarm.wait(clock.sleep(0.5)) is None  # the alarm is set, for the whole stream
    await clock.sleep(2.0)  # past the deadline outside any wait: the consumer's time, never cut
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
    with pytest.raises(TimeoutError):
        await alarm.wait(clock.sleep(0.1))
    alarm.close()


async def test_at_the_deadline_renew_puts_the_ring_off_to_the_time_it_gives_then_rings(clock: FakeClock) -> None:
    asked: list[float] = []

    def renew() -> float | None:
        asked.append(clock.now())
        return clock.now() + 2.0 if len(asked) == 1 else None

    alarm = Alarm(Deadline.after(1.0, clock), renew)
    t0 = clock.now()
    with pytest.raises(TimeoutError):
        await alarm.wait(clock.sleep(10.0))
    assert [a - t0 for a in asked] == [pytest.approx(1.0), pytest.approx(3.0)]
    assert clock.now() - t0 == pytest.approx(3.0)
    alarm.close()


async def test_a_deadline_passed_before_the_first_wait_asks_renew_before_it_rings(clock: FakeClock) -> None:
    answers: list[float | None] = [None]
    alarm = Alarm(Deadline.after(1.0, clock), lambda: answers[0])
    await clock.sleep(1.5)  # the deadline passed with no wait yet
    answers[0] = clock.now() + 1.0
    assert await alarm.wait(clock.sleep(0.5)) is None  # put off to 2.5: this wait ends first
    answers[0] = None
    with pytest.raises(TimeoutError):
        await alarm.wait(clock.sleep(5.0))  # rung at 2.5
    alarm.close()
    cut = Alarm(Deadline.after(1.0, clock), lambda: None)
    await clock.sleep(1.5)
    with pytest.raises(TimeoutError):
        await cut.wait(clock.sleep(0.1))


async def test_the_deadline_cuts_a_wait_in_progress_as_a_timeout_and_leaves_the_task_uncancelled(
        clock: FakeClock) -> None:
    alarm = Alarm(Deadline.after(1.0, clock))
    t0 = clock.now()
    with pytest.raises(TimeoutError):
        await alarm.wait(clock.sleep(5.0))
    task = asyncio.current_task()
    assert clock.now() - t0 == pytest.approx(1.0) and task is not None and task.cancelling() == 0
    alarm.close()
