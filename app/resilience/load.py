"""Is this worker itself late? The event loop's lag, and the admission control built on it.

Busy is not slow: when the worker is past its CPU, every timer fires late, so a provider's first
token *looks* late, the chain would hedge (more calls, more CPU), judge healthy calls outrun and
open breakers. `LoopLag` measures the loop's own lateness with one periodic timer (every
``interval``: how much later than asked it woke up), kept as a fast-rising, slow-falling value
and the time it was last above the bound. Nothing of it runs per request.

- The chain asks ``late_since(t)``: was the loop late at any time since ``t`` (a call's start)?
  Then the call's timing is about the router, not the provider: no hedge, no outrun, no
  first-token or answer sample into the provider's norm, no deadline counted against its breaker.
- `Admission` sheds requests at the door (503 ``overloaded``) with an adaptive concurrency limit
  that only shrinks while the loop has been late for a while (over ``shed_factor`` x the bound for
  ``sustain`` seconds: a burst the worker clears within a second is absorbed, not shed). A slow
  but healthy provider legitimately holds many requests in flight on an idle CPU (Little: 50/s x
  5 s = 250), so in-flight work alone is no evidence that the worker is full; lag is.
  While full the limit falls towards what is in flight (x ``decrease`` per tick), so arrivals
  beyond what the worker completes are refused at once and nothing queues; once on time it grows
  back (+``increase`` of itself per tick) to ``max_in_flight``, the hard bound that also stops an
  unbounded pile-up. docs/PERFORMANCE.md has the measurements.

Both take their time from an injected clock and their lag from `observe`, so tests drive them
without sleeping (tests/resilience/test_load.py); `run()` is the real timer.
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


@dataclass(frozen=True, slots=True)
class LoadConfig:
    interval: float = 0.05  # seconds between the timer's ticks
    lag_bound: float = 0.04  # seconds of lag above which the worker is late
    max_in_flight: int = 1000  # hard bound on router requests in flight in this worker
    min_in_flight: int = 8  # the adaptive limit never shrinks below this
    decrease: float = 0.9  # the limit's factor per late tick
    shed_factor: float = 2.0  # the limit shrinks above shed_factor x lag_bound ...
    sustain: float = 1.0  # ... held for this many seconds
    increase: float = 0.02  # the limit's growth per on-time tick, as a share of itself (slower than the fall)
    enabled: bool = True


class LoopLag:
    """The loop's lag, measured by one timer (see the module docstring)."""

    def __init__(self, config: LoadConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self.lag = 0.0  # seconds: jumps to a higher reading, decays by half per on-time tick
        self.max_recent = 0.0  # the highest reading over the last ~100 ticks
        self.late_at = float("-inf")  # when a reading was last above the bound
        self.full_since: float | None = None  # since when the lag has stayed above shed_factor x bound
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
        if self.lag <= self.config.shed_factor * self.config.lag_bound:  # smoothed: one on-time tick is not relief
            self.full_since = None
        elif self.full_since is None:
            self.full_since = self.clock()
        if late:
            self.late_at = self.clock()
            self.late_ticks += 1
        for listener in self.listeners:
            listener(lag, late)

    def late_since(self, since: float) -> bool:
        return self.late or self.late_at >= since

    @property
    def full(self) -> bool:
        """Late beyond doubt: over shed_factor x the bound for ``sustain`` seconds."""
        return self.full_since is not None and self.clock() - self.full_since >= self.config.sustain

    async def run(self) -> None:
        """The timer: sleep ``interval``, record how much later it woke (until cancelled)."""
        interval = self.config.interval
        while True:
            asked = self.clock()
            await asyncio.sleep(interval)
            self.observe(self.clock() - asked - interval)

    def snapshot(self) -> dict[str, object]:
        return {"lag_ms": round(self.lag * 1000, 1), "max_recent_ms": round(self.max_recent * 1000, 1),
                "late": self.late, "full": self.full, "bound_ms": round(self.config.lag_bound * 1000, 1),
                "late_ticks": self.late_ticks, "ticks": self.ticks}


class Admission:
    """Admit or shed a router request, by an adaptive limit on in-flight work (module docstring)."""

    def __init__(self, config: LoadConfig, lag: LoopLag) -> None:
        self.config = config
        self.lag = lag
        self.limit = float(config.max_in_flight)
        self.in_flight = 0
        self.shed = 0
        lag.listeners.append(self._tick)

    def _tick(self, _: float, late: bool) -> None:
        c = self.config
        if self.lag.full:
            if self.in_flight:  # lag with nothing in flight is not the requests' doing (start-up, GC)
                # Faster the later it is (halved at most per tick): a tick comes only every interval + lag.
                factor = max(0.5, min(c.decrease, c.shed_factor * c.lag_bound / self.lag.lag))
                self.limit = max(float(c.min_in_flight), min(self.limit, float(self.in_flight)) * factor)
        elif not late and self.limit < c.max_in_flight:
            self.limit = min(float(c.max_in_flight), self.limit * (1 + c.increase) + 1)

    def try_enter(self) -> bool:
        """Take a place for one request, or False: shed it (the caller answers 503 overloaded)."""
        if self.config.enabled and self.in_flight >= self.limit:
            self.shed += 1
            return False
        self.in_flight += 1
        return True

    def leave(self) -> None:
        self.in_flight -= 1

    @property
    def retry_after(self) -> int:
        """Seconds a shed client is told to wait (the load balancer tries another host first)."""
        return 1

    def snapshot(self) -> dict[str, object]:
        return {"enabled": self.config.enabled, "in_flight": self.in_flight, "limit": int(self.limit),
                "max_in_flight": self.config.max_in_flight, "shed_total": self.shed, "loop": self.lag.snapshot()}
