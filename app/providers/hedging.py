"""What the chain knows about each provider's speed, and how many extra calls it may spend.

`LatencyNorm` keeps a provider's recent times to first token (and to the whole answer) from
calls that succeeded. The hedge delay is a percentile of those first-token times, clamped: a
call with no first token by then is slower than the provider's own norm. Calls that lost a
race are never recorded, so a brownout's stalled calls do not inflate the norm they are
judged against.

`HedgeBudget` caps the extra calls started because a call was slow: a share of the requests
seen over a rolling window, plus a small floor so that a quiet worker can still hedge.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class HedgeConfig:
    enabled: bool = True
    percentile: float = 97.0
    min_delay: float = 0.1
    max_delay: float = 3.0  # upper limit of the hedge delay and of the presumed-hung ceiling
    # A call with no first token after hung_factor x its provider's hedge delay is presumed hung;
    # never sooner than hung_floor (also the ceiling before the norm is known), never after max_delay.
    hung_factor: float = 4.0
    hung_floor: float = 3.0
    initial_delay: float = 1.0  # until a provider has `min_samples` first-token times
    min_samples: int = 20
    window: int = 256  # samples kept per provider
    budget_ratio: float = 0.3
    budget_floor: int = 5
    budget_window_seconds: float = 60.0
    # Share of recent calls outrun or failed that makes a provider suspect (not hedged onto). A fifth of
    # calls stalling (a brownout) reaches 7 in 10 about once in a thousand windows; a hang at once.
    suspect_share: float = 0.7
    recent: int = 10  # how many recent outcomes that share is taken over


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted, non-empty list."""
    index = min(len(sorted_values) - 1, max(0, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[index]


class LatencyNorm:
    """One provider's recent first-token and total times (successful calls only)."""

    def __init__(self, config: HedgeConfig) -> None:
        self.config = config
        self._first: deque[float] = deque(maxlen=config.window)
        self._total: deque[float] = deque(maxlen=config.window)
        self._recent: deque[bool] = deque(maxlen=config.recent)  # True: the call was outrun or failed
        self._sorted_first: list[float] | None = None
        self._delay: float | None = None  # cached; recomputed every REFRESH samples (a sort per request cost)
        self._since = 0
        self._answer_p99: float | None = None  # cached like the delay
        self._answers_since = 0

    REFRESH = 16

    def first_token(self, seconds: float) -> None:
        self._first.append(seconds)
        self._recent.append(False)
        self._since += 1
        if self._since >= self.REFRESH or not self.known:
            self._sorted_first, self._delay, self._since = None, None, 0

    def answered(self, seconds: float) -> None:
        self._total.append(seconds)
        self._answers_since += 1
        if self._answers_since >= self.REFRESH or len(self._total) < self.config.window:
            self._answer_p99, self._answers_since = None, 0

    def troubled(self) -> None:
        """The call was outrun by a hedge, failed, or hit the deadline."""
        self._recent.append(True)

    @property
    def known(self) -> bool:
        return len(self._first) >= self.config.min_samples

    @property
    def suspect(self) -> bool:
        """Most of the recent calls were outrun or failed: do not hedge onto this provider."""
        n = len(self._recent)
        return n >= min(3, self.config.recent) and sum(self._recent) / n >= self.config.suspect_share

    def _first_sorted(self) -> list[float]:
        if self._sorted_first is None:
            self._sorted_first = sorted(self._first)
        return self._sorted_first

    def hedge_delay(self) -> float:
        c = self.config
        if not self.known:
            return c.initial_delay
        if self._delay is None:
            self._delay = min(c.max_delay, max(c.min_delay, percentile(self._first_sorted(), c.percentile)))
        return self._delay

    def presumed_hung(self) -> float:
        """No first token after this long: presumed hung (the provider's norm, bounded)."""
        c = self.config
        if not self.known:
            return min(c.max_delay, c.hung_floor)
        return min(c.max_delay, max(c.hung_floor, c.hung_factor * self.hedge_delay()))

    def answer_p99(self) -> float | None:
        """The p99 of the whole answer's time, or None until the window is full: the first answers
        to arrive are the fastest of their cohort, and a p99 of them would cut a thinking model's
        slower answers (measured: 5 in 981 offline at 50/s with 20 samples)."""
        if len(self._total) < self.config.window:
            return None
        if self._answer_p99 is None:
            self._answer_p99 = percentile(sorted(self._total), 99)
        return self._answer_p99

    def expected(self, streamed: bool) -> float | None:
        """Median time to what the client waits for (the first chunk when streamed, else the
        whole answer), or None before there are enough samples to say."""
        values = self._first if streamed else self._total
        if len(values) < self.config.min_samples:
            return None
        return percentile(sorted(values), 50)

    def snapshot(self) -> dict[str, object]:
        first = sorted(self._first)
        total = sorted(self._total)

        def ms(values: list[float], q: float) -> float | None:
            return round(percentile(values, q) * 1000, 1) if values else None

        return {
            "hedge_delay_ms": round(self.hedge_delay() * 1000, 1),
            "presumed_hung_ms": round(self.presumed_hung() * 1000, 1),
            "norm_known": self.known,
            "suspect": self.suspect,
            "first_token_p50_ms": ms(first, 50), "first_token_p95_ms": ms(first, 95),
            "answer_p50_ms": ms(total, 50), "answer_p95_ms": ms(total, 95),
            "samples": len(first),
        }


class HedgeBudget:
    """At most ``ratio`` hedges per request over the window, plus ``floor``; one per process.

    Counts live in a ring of BUCKETS buckets (a sixtieth of the window each): memory is fixed
    whatever the traffic, and a request costs one increment (the window is summed only when a
    hedge is asked for or health is read)."""

    BUCKETS = 60

    def __init__(self, config: HedgeConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self._width = config.budget_window_seconds / self.BUCKETS
        self._slot = [-1] * self.BUCKETS  # which bucket of time (now // width) each place holds
        self._requests = [0] * self.BUCKETS
        self._hedges = [0] * self.BUCKETS

    @property
    def size(self) -> int:
        """How many counts are kept: fixed, whatever the traffic."""
        return len(self._requests) + len(self._hedges)

    def _place(self, now: float) -> int:
        slot = int(now // self._width)
        i = slot % self.BUCKETS
        if self._slot[i] != slot:
            self._slot[i], self._requests[i], self._hedges[i] = slot, 0, 0
        return i

    def _totals(self, now: float) -> tuple[int, int]:
        oldest = int(now // self._width) - self.BUCKETS
        live = [i for i, slot in enumerate(self._slot) if slot > oldest]
        return sum(self._requests[i] for i in live), sum(self._hedges[i] for i in live)

    def request(self) -> None:
        self._requests[self._place(self.clock())] += 1

    def allows(self) -> bool:
        """Would one more hedge fit now (nothing taken)?"""
        requests, hedges = self._totals(self.clock())
        return hedges + 1 <= self.config.budget_floor + self.config.budget_ratio * requests

    def try_spend(self) -> bool:
        if not self.allows():
            return False
        self._hedges[self._place(self.clock())] += 1
        return True

    def snapshot(self) -> dict[str, object]:
        requests, hedges = self._totals(self.clock())
        return {"window_seconds": self.config.budget_window_seconds, "requests": requests,
                "hedges": hedges, "ratio": self.config.budget_ratio, "floor": self.config.budget_floor}
