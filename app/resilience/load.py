"""Is this worker itself late, or full? The event loop's lag, its CPU share, and the admission on them.

Busy is not slow: when the worker is past its CPU, every timer fires late, so a provider's first
token *looks* late, the chain would hedge (more calls, more CPU), judge healthy calls outrun and
open breakers. `LoopLag` measures the loop's own lateness with one periodic timer (every
``interval``: how much later than asked it woke up), kept as a fast-rising, slow-falling value
and the time it was last above the bound. Nothing of it runs per request.

- The chain asks ``late_since(t)``: was the loop late at any time since ``t`` (a call's start)?
  Then the call's timing is about the router, not the provider: no hedge, no outrun, no
  first-token or answer sample into the provider's norm, no deadline counted against its breaker.
- `Admission` sheds requests at the door (503 ``overloaded``) by the loop's CPU share. On each
  tick it reads the loop thread's CPU time and the wall time. The CPU per admitted request is the
  tick's CPU over the requests seen in it (half counted when admitted, half when finished, so long
  streams count as they run); all the loop's CPU is charged to admitted requests, shed ones'
  included: the rate then falls as the shedding itself costs more. ``busy`` is the share of the
  wall the loop spent on the CPU or, when more, the share the tick's admissions will cost at that
  CPU per request: a request is charged when it is admitted, not as its answer streams. (The
  onset: from idle to twice its capacity, a streamed answer spends most of its CPU over the next
  second; a door waiting to see that CPU let in more than the worker serves, the loop fell behind,
  and every request that arrived, shed or not, waited for it.) While ``busy`` is within 0.1 of
  ``target_cpu`` a token bucket admits ``target_cpu / cpu per request`` requests a second and
  sheds the rest at once: nothing queues, and the loop keeps the idle share that answers a shed
  request in a few milliseconds. The bucket holds ``burst_seconds`` of that rate, that is
  ``burst_seconds`` x ``target_cpu`` of CPU: a burst of cheap requests is many, a burst of
  streamed answers few, each only as much as the idle share takes without the loop falling
  behind. A late loop counts as full (busy 1, the rate cut to ``target_cpu`` x what it admits,
  the bucket still the CPU's) whatever its CPU clock says: on a core shared with another process
  the loop gets less CPU than the wall, and lag is what shows it. Below that nothing is shed but
  at ``max_in_flight``, the hard bound: a slow but healthy provider holds many requests in flight
  on an idle CPU (Little: 50/s x 5 s = 250), so in-flight work alone is no evidence of a full
  worker; the CPU is. docs/PERFORMANCE.md has the measurements.

Both take their time (and Admission its CPU time) from injected clocks and their lag from
`observe`, so tests drive them without sleeping (tests/resilience/test_load.py); `run()` is the
real timer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


class LagSource(Protocol):
    """What the chain asks of the loop's lag (LoopLag; a test's fixed source)."""

    def late_since(self, since: float) -> bool:
        """Whether the loop was late at any time from ``since`` (on the chain's clock) to now."""
        ...


class NeverLate:
    """No lag monitor (a chain built on its own, in tests): the loop is taken to be on time."""

    def late_since(self, since: float) -> bool:
        return False


NEVER_LATE = NeverLate()

BUSY_MARGIN = 0.1  # the rate applies while busy >= target_cpu - this (below it the worker has room)
SMOOTHING = 0.15  # weight of one tick in the running CPU and request rates (~0.3 s at 50 ms ticks)
# Fewer in flight than this and the door always admits: one more request cannot be what fills the
# worker, and a late tick with almost nothing in flight is a GC pause or a stall, not load.
ALWAYS_ADMITTED_IN_FLIGHT = 4
RISE = 0.5  # weight of a tick that reads busier than ``busy``: a worker filling up limits within ~2 ticks


@dataclass(frozen=True, slots=True)
class LoadConfig:
    interval: float = 0.05  # seconds between the timer's ticks
    lag_bound: float = 0.04  # seconds of lag above which the worker is late
    max_in_flight: int = 1000  # hard bound on router requests in flight in this worker
    target_cpu: float = 0.85  # the loop's CPU share the admitted rate is sized for
    burst_seconds: float = 0.1  # the token bucket holds this many seconds of the CPU-sized rate
    enabled: bool = True


class LoopLag:
    """The loop's lag, measured by one timer (see the module docstring)."""

    def __init__(self, config: LoadConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self.lag = 0.0  # seconds: jumps to a higher reading, decays by half per on-time tick
        self.max_recent = 0.0  # the highest reading over the last ~100 ticks
        self.late_at = float("-inf")  # when a reading was last above the bound
        self.ticks = 0
        self.late_ticks = 0
        self._window_max = 0.0
        self.listeners: list[Callable[[float, bool], None]] = []

    @property
    def late(self) -> bool:
        return self.lag > self.config.lag_bound

    def observe(self, lag: float) -> None:
        """One tick's reading: the timer woke ``lag`` seconds later than asked."""
        lag = max(0.0, lag)
        self.lag = lag if lag > self.lag else 0.5 * self.lag + 0.5 * lag
        self.ticks += 1
        self._window_max = max(self._window_max, lag)
        if self.ticks % 100 == 0:
            self.max_recent, self._window_max = self._window_max, 0.0
        else:
            self.max_recent = max(self.max_recent, lag)
        late = self.late
        if late:
            self.late_at = self.clock()
            self.late_ticks += 1
        for listener in self.listeners:
            listener(lag, late)

    def late_since(self, since: float) -> bool:
        return self.late or self.late_at >= since

    async def run(self) -> None:
        """The timer: sleep ``interval``, record how much later it woke (until cancelled)."""
        interval = self.config.interval
        while True:
            asked = self.clock()
            await asyncio.sleep(interval)
            self.observe(self.clock() - asked - interval)

    def snapshot(self) -> dict[str, object]:
        return {"lag_ms": round(self.lag * 1000, 1), "max_recent_ms": round(self.max_recent * 1000, 1),
                "late": self.late, "bound_ms": round(self.config.lag_bound * 1000, 1),
                "late_ticks": self.late_ticks, "ticks": self.ticks}


class Admission:
    """Admit or shed a router request, by the rate the loop's CPU share allows (module docstring)."""

    def __init__(self, config: LoadConfig, lag: LoopLag, cpu_clock: Callable[[], float] = time.thread_time
                 ) -> None:
        self.config = config
        self.lag = lag
        self.clock = lag.clock
        self.cpu_clock = cpu_clock
        self.in_flight = 0
        self.shed = 0
        self.busy = 0.0  # the loop's CPU share, smoothed (fast up, slow down)
        self.rate = 0.0  # requests a second admitted while limiting (0 until measured)
        self.limiting = False
        self._cpu_rate = 0.0  # CPU seconds a second, smoothed
        self._request_rate = 0.0  # requests seen a second, smoothed
        self._seen = 0.0  # requests seen since the last tick (a half at entry, a half at leaving)
        self._admitted = 0  # requests admitted since the last tick
        self._tokens = 0.0
        self._bucket = 0.0  # the tokens the bucket holds when full
        self._filled_at = self.clock()
        self._tick_wall = self._filled_at
        self._tick_cpu = cpu_clock()
        lag.listeners.append(self._tick)

    def _tick(self, _: float, __: bool) -> None:
        c = self.config
        wall, cpu = self.clock(), self.cpu_clock()
        elapsed, spent = wall - self._tick_wall, cpu - self._tick_cpu
        self._tick_wall, self._tick_cpu = wall, cpu
        if elapsed <= 0:
            return
        self._cpu_rate += SMOOTHING * (spent / elapsed - self._cpu_rate)
        self._request_rate += SMOOTHING * (self._seen / elapsed - self._request_rate)
        self._seen = 0.0
        per_request = self._cpu_rate / self._request_rate if self._request_rate > 0 else 0.0
        # Charged when admitted: a streamed answer's CPU comes over its next second, too late to stop
        # the onset's arrivals.
        committed, self._admitted = self._admitted * per_request, 0
        # A late loop is full whatever its CPU clock says: the core is shared with another process,
        # or taken by the worker's other threads, and the loop gets less of it than the wall.
        share = 1.0 if self.lag.late else min(1.0, max(spent, committed) / elapsed)
        # Fast up, slow down: at the onset of overload every tick it waits admits a tick's arrivals
        # the worker cannot serve, and the requests shed after them wait behind that backlog.
        self.busy += (RISE if share > self.busy else SMOOTHING) * (share - self.busy)
        if per_request > 0:
            sized = c.target_cpu / per_request
            self.rate = c.target_cpu * self._request_rate if self.lag.late else sized  # late: falls until on time
            self._bucket = max(1.0, sized * c.burst_seconds)
        limiting = self.busy >= c.target_cpu - BUSY_MARGIN and self.rate > 0
        if limiting and not self.limiting:  # a full bucket to start: a burst is absorbed, not shed
            self._tokens, self._filled_at = self._bucket, wall
        self.limiting = limiting

    def try_enter(self) -> bool:
        """Take a place for one request, or False: shed it (the caller answers 503 overloaded)."""
        c = self.config
        if c.enabled:
            if self.in_flight >= c.max_in_flight:
                self.shed += 1
                return False
            if self.limiting and self.in_flight >= ALWAYS_ADMITTED_IN_FLIGHT:
                now = self.clock()
                self._tokens = min(self._bucket, self._tokens + (now - self._filled_at) * self.rate)
                self._filled_at = now
                if self._tokens < 1:
                    self.shed += 1
                    return False
                self._tokens -= 1
        self.in_flight += 1
        self._admitted += 1
        self._seen += 0.5
        return True

    def leave(self) -> None:
        self.in_flight -= 1
        self._seen += 0.5

    @property
    def retry_after(self) -> int:
        """Seconds a shed client is told to wait (the load balancer tries another host first)."""
        return 1

    def reading(self) -> dict[str, object]:
        """What the door is deciding on (the shed warning's fields)."""
        cpu_ms = 1000 * self._cpu_rate / self._request_rate if self._request_rate > 0 else None
        return {"cpu_busy": round(self.busy, 3), "limiting": self.limiting, "rate": round(self.rate, 1),
                "cpu_ms_per_request": None if cpu_ms is None else round(cpu_ms, 3),
                "loop_lag_ms": round(self.lag.lag * 1000, 1)}

    def snapshot(self) -> dict[str, object]:
        return {"enabled": self.config.enabled, "in_flight": self.in_flight, "max_in_flight": self.config.max_in_flight,
                "shed_total": self.shed, "target_cpu": self.config.target_cpu, **self.reading(),
                "loop": self.lag.snapshot()}
