"""The loop-lag reading and the admission on the loop's CPU share, driven by readings and injected
clocks (wall and CPU): nothing sleeps."""

from __future__ import annotations

from collections import deque

from app.resilience.load import Admission, LoadConfig, LoopLag


class Clock:
    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def tick(lag: LoopLag, clock: Clock, reading: float, n: int = 1, step: float = 0.05) -> None:
    for _ in range(n):
        clock.t += step + reading
        lag.observe(reading)


class Worker:
    """An admission over a simulated worker: ``offered`` requests arrive a second, each one admitted
    costs the loop ``cpu_per_request`` of CPU (done within the tick it came in); a tick lasts its
    interval or, when the work is more than that, as long as the work (the loop runs late). An
    admitted request stays in flight for ``latency`` seconds (waiting for its provider); a
    ``streamed`` share of its CPU is spent evenly over that time (a streamed answer's chunks)
    instead of when it is admitted."""

    def __init__(self, config: LoadConfig) -> None:
        self.clock, self.cpu = Clock(), Clock(5.0)
        self.admission = Admission(config, LoopLag(config, self.clock), self.cpu)
        self.admitted = self.shed = 0
        self.max_lag = 0.0
        self.leaving: deque[tuple[float, int]] = deque()  # (when, how many) still in flight
        self.streaming: deque[tuple[float, float]] = deque()  # (until when, CPU seconds a second)

    def run(self, seconds: float, offered: float, cpu_per_request: float, idle_cpu: float = 0.0,
            latency: float = 0.5, streamed: float = 0.0) -> None:
        step = self.admission.config.interval
        end, wall, owed = self.clock.t + seconds, step, 0.0
        while self.clock.t < end:
            owed += offered * wall
            arrivals, admitted = int(owed), 0
            owed -= arrivals
            for _ in range(arrivals):
                self.clock.t += wall / arrivals
                if self.admission.try_enter():
                    admitted += 1
                else:
                    self.shed += 1
            self.leaving.append((self.clock.t + latency, admitted))
            while self.leaving and self.leaving[0][0] <= self.clock.t:
                for _ in range(self.leaving.popleft()[1]):
                    self.admission.leave()
            self.admitted += admitted
            if admitted and streamed:
                self.streaming.append((self.clock.t + latency, admitted * cpu_per_request * streamed / latency))
            while self.streaming and self.streaming[0][0] <= self.clock.t:
                self.streaming.popleft()
            work = (admitted * cpu_per_request * (1 - streamed) + sum(r for _, r in self.streaming) * wall
                    + idle_cpu * step)
            self.cpu.t += work
            self.clock.t += 0.0 if arrivals else wall
            late = max(0.0, work - step)
            self.max_lag = max(self.max_lag, late)
            self.admission.lag.observe(late)
            wall = max(step, work)


def test_a_late_reading_marks_the_loop_late_and_it_is_on_time_again_after_a_few_good_ticks() -> None:
    clock = Clock()
    lag = LoopLag(LoadConfig(lag_bound=0.04), clock)
    since = clock()
    tick(lag, clock, 0.2)
    assert lag.late and lag.late_since(since)
    tick(lag, clock, 0.0, n=5)
    assert not lag.late
    assert lag.late_since(since) and not lag.late_since(clock())  # a call started after it was on time


def test_a_busy_worker_admits_its_target_cpu_share_worth_of_requests_and_sheds_the_rest() -> None:
    worker = Worker(LoadConfig(target_cpu=0.85, burst_seconds=0.5))
    worker.run(3, offered=1000, cpu_per_request=0.002)  # capacity 500/s: offered twice that
    assert worker.admission.limiting
    assert 400 <= worker.admission.rate <= 450  # 0.85 / 2 ms
    before_admitted, before_shed = worker.admitted, worker.shed
    worker.run(5, offered=1000, cpu_per_request=0.002)
    admitted_rate = (worker.admitted - before_admitted) / 5
    assert 380 <= admitted_rate <= 450 and worker.shed - before_shed >= 2500
    assert worker.admission.busy < 0.95  # the loop keeps some idle share: a shed answers at once


def test_an_idle_worker_with_many_requests_in_flight_never_sheds_below_the_hard_bound() -> None:
    config = LoadConfig(max_in_flight=300)
    worker = Worker(config)
    admission = worker.admission
    entered = [admission.try_enter() for _ in range(300)]  # a slow provider: 50/s x 5 s = 250 and more
    worker.run(5, offered=50, cpu_per_request=0.002, idle_cpu=0.01)  # ... on a CPU that is 11% busy
    assert all(entered) and not admission.limiting
    assert admission.shed == worker.shed  # only the hard bound shed, never the rate
    assert not admission.try_enter()  # the hard bound: nothing queues without end
    admission.leave()
    assert admission.try_enter()


def test_a_worker_recovers_once_it_is_no_longer_busy() -> None:
    worker = Worker(LoadConfig(target_cpu=0.85))
    worker.run(3, offered=1000, cpu_per_request=0.002)
    assert worker.admission.limiting and worker.shed > 0
    worker.run(2, offered=100, cpu_per_request=0.002)  # 20% of a core
    assert not worker.admission.limiting and worker.admission.busy < 0.75
    shed = worker.shed
    worker.run(2, offered=300, cpu_per_request=0.002)  # 60%: room, nothing shed
    assert worker.shed == shed


def test_a_burst_on_a_busy_worker_is_absorbed_up_to_burst_seconds_of_the_rate() -> None:
    worker = Worker(LoadConfig(target_cpu=0.85, burst_seconds=0.5))
    worker.run(1.5, offered=400, cpu_per_request=0.002)  # busy ~0.80: limiting ...
    onset = worker.shed  # (while its first requests are still in flight the rate is underestimated)
    worker.run(6, offered=380, cpu_per_request=0.002)
    admission = worker.admission
    assert admission.limiting and worker.shed == onset  # ... and below the rate the bucket fills
    rate = admission.rate
    burst = [admission.try_enter() for _ in range(int(rate))]  # a second's worth at one instant
    assert 0.45 * rate <= sum(burst) <= 0.55 * rate + 1  # half a second of the rate got in, the rest shed


def test_an_admission_turned_off_never_sheds_on_cpu() -> None:
    worker = Worker(LoadConfig(enabled=False))
    worker.run(3, offered=1000, cpu_per_request=0.002)
    assert worker.shed == 0


def test_a_worker_filling_up_starts_limiting_within_a_few_ticks_not_after_a_second() -> None:
    worker = Worker(LoadConfig(target_cpu=0.85))
    worker.run(0.2, offered=1000, cpu_per_request=0.002)  # from idle to twice its capacity
    assert worker.admission.limiting


def test_a_late_loop_whose_cpu_clock_reads_low_still_limits_and_lowers_its_rate() -> None:
    worker = Worker(LoadConfig(target_cpu=0.85))
    admission = worker.admission
    worker.run(2, offered=200, cpu_per_request=0.002)  # 40% busy: room
    assert not admission.limiting
    rate = admission.rate
    for _ in range(5):  # the core is taken by another process: the loop's clock reads 40%, its timer wakes late
        worker.clock.t += 0.1
        worker.cpu.t += 0.04
        admission.lag.observe(0.05)
    assert admission.limiting and admission.rate < 0.5 * rate


def test_a_late_loop_with_almost_nothing_in_flight_admits_the_next_request() -> None:
    worker = Worker(LoadConfig(target_cpu=0.85))
    admission = worker.admission
    worker.run(2, offered=20, cpu_per_request=0.002, latency=0.0)  # one request at a time
    for _ in range(5):  # a GC pause or a stall: every tick late, the loop's whole share
        worker.clock.t += 0.2
        worker.cpu.t += 0.2
        admission.lag.observe(0.15)
    assert admission.limiting  # the door would limit a busy worker ...
    admitted = []
    for _ in range(10):  # ... but a client asking one question after another is not what fills it
        admitted.append(admission.try_enter())
        admission.leave()
    assert all(admitted) and admission.shed == 0


def test_a_worker_going_from_idle_to_twice_its_capacity_with_streamed_answers_builds_no_backlog() -> None:
    worker = Worker(LoadConfig(target_cpu=0.85))
    admission = worker.admission
    answers = {"cpu_per_request": 0.0024, "latency": 1.0, "streamed": 0.65}  # 2/3 of the CPU over the answer
    worker.run(4, offered=150, **answers)  # warm, well below capacity (~420/s)
    worker.run(3, offered=0, **answers)  # idle: the next load starts from an empty loop
    worker.max_lag, admitted = 0.0, worker.admitted
    worker.run(1.5, offered=840, **answers)  # its first 1.5 s at twice its capacity
    assert worker.max_lag < admission.config.lag_bound  # the loop never ran late ...
    assert worker.admitted - admitted <= 1.5 * 420  # ... it did not take in more than it serves
    worker.run(3, offered=840, **answers)
    assert worker.max_lag < admission.config.lag_bound and admission.limiting


def test_a_worker_whose_answers_spend_their_cpu_after_admission_limits_within_two_ticks_of_an_onset() -> None:
    worker = Worker(LoadConfig(target_cpu=0.85))
    answers = {"cpu_per_request": 0.0024, "latency": 1.0, "streamed": 0.7}  # the CPU seen in a tick: 30%
    worker.run(2, offered=0, **answers)
    worker.run(0.1, offered=840, **answers)  # from idle to twice its capacity: two ticks
    assert worker.admission.limiting  # charged when admitted, not when the answers' chunks are sent


def test_a_late_loop_still_lets_in_a_burst_of_cheap_requests_as_large_as_its_cpu_can_take() -> None:
    worker = Worker(LoadConfig(target_cpu=0.85, burst_seconds=0.1))
    admission = worker.admission
    for _ in range(10):  # 100 cheap requests a second on a core shared with another process: late
        for _ in range(10):
            assert admission.try_enter()
            admission.leave()
        worker.clock.t += 0.1
        worker.cpu.t += 10 * 0.0004
        admission.lag.observe(0.05)
    assert admission.limiting and admission.rate < 100  # late: the rate is cut below what it admits ...
    burst = [admission.try_enter() for _ in range(60)]  # ... yet a burst of 24 ms of CPU at one instant
    assert all(burst)  # fits in 0.1 s of the CPU: the bucket is the CPU's, not the late rate's
