"""A circuit breaker per provider, after resilience4j's count-based model.

CLOSED: calls flow; the last ``window`` outcomes are kept. Once at least ``min_calls`` are
recorded, a failure rate >= ``failure_rate`` or a slow-call rate >= ``slow_call_rate`` opens it,
and so do ``consecutive`` calls in a row that failed or were outrun (a provider that starts
hanging after an hour of successes is skipped after a few calls, not after the window fills).
What "slow" means is the caller's judgement against the provider's own norm (the chain: a
call outrun by a hedge started after the provider's own hedge delay), never a fixed number of
seconds, so a provider whose every call takes 2 s is not opened for being itself.
OPEN: calls are refused for ``open_seconds`` (or the provider's Retry-After on a 429).
HALF_OPEN: up to ``half_open_calls`` trial calls go through; all succeed -> CLOSED, any
failure or outrun trial -> OPEN again.

Generations (gobreaker v2): every change of state starts a new generation, and ``allow()``
hands the call the generation it was admitted in. An outcome is counted only in that same
generation: a 120 s stream admitted before a trip neither reopens nor closes the breaker, nor
counts as a half-open trial, when it ends after the trip.

The clock is injected so tests drive time instead of sleeping.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

State = Literal["closed", "open", "half_open"]
TransitionListener = Callable[[str, State, State, str], None]


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    window: int = 20
    min_calls: int = 5
    failure_rate: float = 0.5
    slow_call_rate: float = 0.8
    consecutive: int = 6
    open_seconds: float = 30.0
    half_open_calls: int = 2


class CircuitBreaker:
    def __init__(
        self,
        name: str,
        config: BreakerConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_transition: TransitionListener | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self.clock = clock
        self.on_transition = on_transition
        self.state: State = "closed"
        self.reason: str | None = None
        self._outcomes: deque[tuple[bool, bool]] = deque(maxlen=config.window)  # (failed, slow)
        self._streak = 0  # calls in a row that failed or were outrun
        self._open_until = 0.0
        self._trials_started = 0
        self._trials_ok = 0
        self.generation = 1  # never 0, so an admitted call's generation is truthy

    def _move(self, to: State, reason: str) -> None:
        if to == self.state:
            return
        before, self.state, self.reason = self.state, to, reason
        self.generation += 1
        self._trials_started = self._trials_ok = 0
        if to == "closed":
            self._outcomes.clear()
        self._streak = 0
        if self.on_transition is not None:
            self.on_transition(self.name, before, to, reason)

    def current_state(self) -> State:
        if self.state == "open" and self.clock() >= self._open_until:
            self._move("half_open", "open period elapsed")
        return self.state

    def allow(self) -> int | None:
        """The generation the call is admitted in, or None when it may not go through now. In
        half-open, this reserves one of the trial calls."""
        state = self.current_state()
        if state == "closed":
            return self.generation
        if state == "half_open" and self._trials_started < self.config.half_open_calls:
            self._trials_started += 1
            return self.generation
        return None

    def _current(self, generation: int) -> bool:
        """Whether an outcome of a call admitted in ``generation`` still counts."""
        self.current_state()  # an open period that elapsed is a new generation
        return generation == self.generation

    def release(self, generation: int) -> None:
        """The call ended counting for nothing (a cancelled hedge): its half-open trial is free again."""
        if self._current(generation) and self.state == "half_open" and self._trials_started > self._trials_ok:
            self._trials_started -= 1

    def seconds_until_retry(self) -> float:
        return max(0.0, self._open_until - self.clock()) if self.state == "open" else 0.0

    def record_success(self, generation: int, *, slow: bool = False) -> None:
        if not self._current(generation):
            return
        if self.state == "half_open":
            self._trials_ok += 1
            if self._trials_ok >= self.config.half_open_calls:
                self._move("closed", "trial calls succeeded")
            return
        self._record(False, slow)

    def record_failure(self, generation: int, reason: str, *, open_for: float | None = None) -> None:
        """A failure; ``open_for`` forces the breaker open (429 Retry-After, rejected key)."""
        if not self._current(generation):
            return
        if open_for is not None or self.state == "half_open":
            self.trip(reason, open_for)
            return
        self._record(True, False, reason, troubled=True)

    def record_slow(self, generation: int, reason: str = "outrun") -> None:
        """A call abandoned for being slower than its norm (a hedge answered first): not a
        failure, but a half-open trial that is outrun proves nothing good."""
        if not self._current(generation):
            return
        if self.state == "half_open":
            self.trip(f"trial call {reason}")
            return
        self._record(False, True, reason, troubled=True)

    def trip(self, reason: str, open_for: float | None = None) -> None:
        self._open_until = self.clock() + (open_for if open_for is not None else self.config.open_seconds)
        self._move("open", reason)

    def _record(self, failed: bool, slow: bool, reason: str = "", *, troubled: bool = False) -> None:
        if self.state != "closed":
            return
        self._outcomes.append((failed, slow))
        self._streak = self._streak + 1 if troubled else 0
        if self._streak >= self.config.consecutive:
            self.trip(f"{self._streak} calls in a row failed or were outrun ({reason})")
            return
        n = len(self._outcomes)
        if n < self.config.min_calls:
            return
        failures = sum(1 for f, _ in self._outcomes if f)
        slows = sum(1 for _, s in self._outcomes if s)
        if failures / n >= self.config.failure_rate:
            self.trip(f"failure rate {failures}/{n} ({reason})")
        elif slows / n >= self.config.slow_call_rate:
            self.trip(f"slow call rate {slows}/{n}")

    def snapshot(self) -> dict[str, object]:
        state = self.current_state()
        failures = sum(1 for f, _ in self._outcomes if f)
        return {
            "state": state,
            "reason": self.reason,
            "calls_in_window": len(self._outcomes),
            "failures_in_window": failures,
            "retry_in_seconds": round(self.seconds_until_retry(), 1),
        }
