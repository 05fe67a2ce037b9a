"""The breaker's state machine, driven by a controllable clock (no sleeps)."""

from __future__ import annotations

from app.resilience.breaker import BreakerConfig, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make(**overrides: float) -> tuple[CircuitBreaker, Clock, list[tuple[str, str, str]]]:
    clock = Clock()
    seen: list[tuple[str, str, str]] = []
    config = BreakerConfig(**{"window": 10, "min_calls": 4, "failure_rate": 0.5, "open_seconds": 30,
                              "half_open_calls": 2, "slow_call_rate": 0.8,
                              **overrides})  # type: ignore[arg-type]
    breaker = CircuitBreaker("gemini", config, clock=clock,
                             on_transition=lambda _n, a, b, r: seen.append((a, b, r)))
    return breaker, clock, seen


def test_stays_closed_below_the_minimum_number_of_calls() -> None:
    b, _, seen = make()
    for _ in range(3):
        b.record_failure(b.generation, "timeout")
    assert b.current_state() == "closed" and seen == []


def test_opens_when_the_failure_rate_crosses_the_threshold() -> None:
    b, _, seen = make()
    b.record_success(b.generation)
    b.record_success(b.generation)
    b.record_failure(b.generation, "timeout")
    assert b.current_state() == "closed"
    b.record_failure(b.generation, "unavailable")
    assert b.current_state() == "open"
    assert seen[0][:2] == ("closed", "open") and "failure rate 2/4" in seen[0][2]
    assert not b.allow()


def test_opens_on_slow_calls() -> None:
    b, _, _ = make()
    for _ in range(4):
        b.record_success(b.generation, slow=True)
    assert b.current_state() == "open"
    assert "slow call rate" in (b.reason or "")


def test_calls_outrun_by_a_hedge_open_it_only_when_most_calls_are_outrun() -> None:
    b, _, _ = make()
    for _ in range(7):  # a brownout: a few calls outrun, most answer
        b.record_success(b.generation)
    for _ in range(3):
        b.record_slow(b.generation)
    assert b.current_state() == "closed"
    hung, _, _ = make()
    for _ in range(4):  # a hang: every call outrun
        hung.record_slow(hung.generation, hung.generation)
    assert hung.current_state() == "open" and "slow call rate 4/4" in (hung.reason or "")


def test_an_outrun_trial_call_reopens_the_breaker() -> None:
    b, clock, _ = make()
    b.trip("test")
    clock.now += 31
    assert b.allow()
    b.record_slow(b.generation)
    assert b.current_state() == "open"


def test_open_half_opens_after_the_wait_and_closes_after_successful_trials() -> None:
    b, clock, seen = make()
    b.trip("test")
    clock.now += 29.9
    assert not b.allow()
    clock.now += 0.2
    assert b.allow() and b.allow()
    assert not b.allow()  # only two trial calls in half-open
    b.record_success(b.generation)
    assert b.current_state() == "half_open"
    b.record_success(b.generation)
    assert b.current_state() == "closed"
    assert [s[:2] for s in seen] == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]


def test_a_failed_trial_reopens_for_a_full_wait() -> None:
    b, clock, _ = make()
    b.trip("test")
    clock.now += 31
    assert b.allow()
    b.record_failure(b.generation, "timeout")
    assert b.current_state() == "open"
    clock.now += 29
    assert b.current_state() == "open"


def test_a_retry_after_opens_for_exactly_that_long() -> None:
    b, clock, _ = make()
    b.record_failure(b.generation, "rate_limited", open_for=5)
    assert b.current_state() == "open"
    clock.now += 5.01
    assert b.current_state() == "half_open"


def test_a_run_of_failed_or_outrun_calls_opens_it_whatever_the_window_holds() -> None:
    b, _, _ = make(window=20, consecutive=3)
    for _ in range(15):
        b.record_success(b.generation)
    b.record_slow(b.generation)
    b.record_failure(b.generation, "timeout")
    b.record_success(b.generation)  # a success breaks the run
    b.record_slow(b.generation)
    b.record_slow(b.generation)
    assert b.current_state() == "closed"
    b.record_failure(b.generation, "timeout")
    assert b.current_state() == "open" and "3 calls in a row" in (b.reason or "")


def test_a_result_from_a_call_admitted_before_a_trip_is_not_counted_after_it() -> None:
    b, clock, _ = make(min_calls=1, failure_rate=0.5)
    before = b.allow()
    assert before is not None
    b.trip("shared: another worker opened it")
    clock.now += 31
    assert b.current_state() == "half_open"
    b.record_failure(before, "timeout")  # the old call's failure does not reopen the half-open breaker
    assert b.current_state() == "half_open"
    trial = b.allow()
    assert trial is not None and trial != before
    b.record_failure(trial, "timeout")  # a trial's does
    assert b.current_state() == "open"


def test_a_long_stream_admitted_before_a_trip_does_not_count_as_a_half_open_trial() -> None:
    b, clock, seen = make(half_open_calls=1)
    stream = b.allow()  # a 120 s stream starts while closed
    assert stream is not None
    b.trip("test")
    clock.now += 31  # half-open while the stream still runs
    trial = b.allow()
    assert trial is not None
    b.record_success(stream)  # the stream ends: it proves nothing about the provider since the trip
    assert b.current_state() == "half_open"
    b.record_success(trial)
    assert b.current_state() == "closed"
    assert [s[:2] for s in seen][-1] == ("half_open", "closed")


def test_a_trial_that_ends_counting_for_nothing_frees_its_place() -> None:
    b, clock, _ = make(half_open_calls=1)
    b.trip("test")
    clock.now += 31
    trial = b.allow()
    assert trial is not None and b.allow() is None
    b.release(trial)  # a cancelled hedge: neither a success nor a failure
    again = b.allow()
    assert again is not None
    b.record_success(again)
    assert b.current_state() == "closed"
