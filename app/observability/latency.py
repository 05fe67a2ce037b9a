"""A recent-window view of request latency per intent, for `/ai/router/health` and the log summary.

Prometheus histograms answer "p95 over 5 minutes" for dashboards; on-call curling the health
endpoint wants the same figure without a Prometheus, so we keep the raw samples of the window.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

MAX_SAMPLES_PER_INTENT = 20_000


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an already sorted list."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass(slots=True)
class _Sample:
    at: float
    latency_ms: float
    error: bool


class LatencyWindow:
    def __init__(self, window_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window_seconds
        self.clock = clock
        self._samples: dict[str, deque[_Sample]] = {}
        self.rate_limited: deque[float] = deque(maxlen=MAX_SAMPLES_PER_INTENT)

    def record(self, intent: str, latency_ms: float, *, error: bool = False) -> None:
        samples = self._samples.setdefault(intent, deque(maxlen=MAX_SAMPLES_PER_INTENT))
        samples.append(_Sample(self.clock(), latency_ms, error))

    def record_rate_limited(self) -> None:
        self.rate_limited.append(self.clock())

    def _prune(self) -> None:
        horizon = self.clock() - self.window
        for samples in self._samples.values():
            while samples and samples[0].at < horizon:
                samples.popleft()
        while self.rate_limited and self.rate_limited[0] < horizon:
            self.rate_limited.popleft()

    def snapshot(self) -> dict[str, object]:
        self._prune()
        intents: dict[str, dict[str, float | int]] = {}
        total = errors = 0
        for intent, samples in sorted(self._samples.items()):
            if not samples:
                continue
            values = sorted(s.latency_ms for s in samples)
            n_err = sum(1 for s in samples if s.error)
            total += len(values)
            errors += n_err
            intents[intent] = {
                "count": len(values),
                "errors": n_err,
                "p50_ms": round(percentile(values, 50), 2),
                "p95_ms": round(percentile(values, 95), 2),
                "p99_ms": round(percentile(values, 99), 2),
            }
        return {
            "window_seconds": self.window,
            "requests": total,
            "error_rate": round(errors / total, 4) if total else 0.0,
            "rate_limited": len(self.rate_limited),
            "intents": intents,
        }
