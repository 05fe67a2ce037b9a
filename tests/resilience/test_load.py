"""The loop-lag reading and the admission limit on it, driven by readings and an injected clock."""

from __future__ import annotations

from app.resilience.load import Admission, LoadConfig, LoopLag


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def tick(lag: LoopLag, clock: Clock, reading: float, n: int = 1, step: float = 0.05) -> None:
    for _ in range(n):
        clock.t += step + reading
        lag.observe(reading)


def test_a_late_reading_marks_the_loop_late_and_it_is_on_time_again_after_a_few_good_ticks() -> None:
    clock = Clock()
    lag = LoopLag(LoadConfig(lag_bound=0.04), clock)
    since = clock()
    tick(lag, clock, 0.2)
    assert lag.late and lag.late_since(since)
    tick(lag, clock, 0.0, n=5)
    assert not lag.late
    assert lag.late_since(since) and not lag.late_since(clock())  # a call started after it was on time


def test_a_sustained_full_loop_shrinks_the_limit_towards_what_is_in_flight_and_sheds_the_rest() -> None:
    clock = Clock()
    config = LoadConfig(lag_bound=0.04, max_in_flight=1000, min_in_flight=8, sustain=1.0)
    admission = Admission(config, LoopLag(config, clock))
    for _ in range(200):
        assert admission.try_enter()
    tick(admission.lag, clock, 0.3, n=2)  # 0.7 s late: a burst, absorbed
    assert admission.limit == 1000
    tick(admission.lag, clock, 0.3, n=3)
    assert admission.limit < 200
    assert not admission.try_enter() and admission.shed == 1  # beyond the limit: shed at once, not queued
    for _ in range(200):
        admission.leave()
    tick(admission.lag, clock, 0.0, n=200)  # on time again: the limit grows back to the bound
    assert admission.limit == 1000 and admission.try_enter()


def test_many_requests_in_flight_on_an_on_time_loop_are_never_shed_below_the_hard_bound() -> None:
    clock = Clock()
    config = LoadConfig(max_in_flight=300)
    admission = Admission(config, LoopLag(config, clock))
    entered = [admission.try_enter() for _ in range(300)]  # a slow provider: 50/s x 5 s = 250 and more
    tick(admission.lag, clock, 0.002, n=100)
    assert all(entered) and admission.shed == 0
    assert not admission.try_enter()  # the hard bound: nothing queues without end


def test_lag_with_nothing_in_flight_does_not_shrink_the_limit() -> None:
    clock = Clock()
    config = LoadConfig()
    admission = Admission(config, LoopLag(config, clock))
    tick(admission.lag, clock, 0.5, n=10)  # start-up, a GC pause: not the requests' doing
    assert admission.limit == config.max_in_flight
