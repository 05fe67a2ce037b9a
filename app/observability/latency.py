"""The service's recent latency per intent, for `/ai/router/health` and the p95/p99 log line.

Derived from the same Prometheus histograms the dashboards use (in multiprocess mode, the
files of every worker), so any worker's answer describes the whole service. Histograms are
cumulative; a 5-minute window is the difference between now and a snapshot taken 5 minutes
ago (snapshots every few seconds). Quantiles are interpolated within buckets exactly as
PromQL's histogram_quantile does.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from app.observability.metrics import Metrics


@dataclass(slots=True)
class Totals:
    """Cumulative counts at one moment."""

    buckets: dict[str, dict[float, float]] = field(default_factory=dict)  # intent -> le -> count
    requests: dict[str, float] = field(default_factory=dict)  # intent -> responses
    errors: dict[str, float] = field(default_factory=dict)  # intent -> 5xx responses
    rate_limited: float = 0.0


def read_totals(metrics: Metrics) -> Totals:
    totals = Totals()
    for family in metrics.service_registry().collect():
        if family.name == "ivy_request_latency_seconds":
            for s in family.samples:
                if s.name.endswith("_bucket"):
                    per_le = totals.buckets.setdefault(s.labels["intent"], {})
                    le = float(s.labels["le"])
                    per_le[le] = per_le.get(le, 0.0) + s.value
        elif family.name == "ivy_requests":
            for s in family.samples:
                if not s.name.endswith("_total"):
                    continue
                status, intent = s.labels["status"], s.labels["intent"]
                if status == "429":
                    totals.rate_limited += s.value
                    continue
                totals.requests[intent] = totals.requests.get(intent, 0.0) + s.value
                if status.startswith("5"):
                    totals.errors[intent] = totals.errors.get(intent, 0.0) + s.value
    return totals


def histogram_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """PromQL's histogram_quantile over cumulative bucket counts {le: count}; seconds."""
    edges = sorted(buckets)
    if not edges or buckets[edges[-1]] <= 0:
        return None
    total = buckets[edges[-1]]
    rank = q * total
    lower_edge, lower_count = 0.0, 0.0
    for edge in edges:
        count = buckets[edge]
        if count >= rank:
            if math.isinf(edge):
                return lower_edge  # beyond the last finite bucket: its upper edge is all we know
            if count == lower_count:
                return edge
            return lower_edge + (edge - lower_edge) * (rank - lower_count) / (count - lower_count)
        lower_edge, lower_count = edge, count
    return edges[-1]


K = TypeVar("K")


def _minus(now: dict[K, float], before: dict[K, float]) -> dict[K, float]:
    # A worker that restarted lowers the totals: count from zero rather than report negatives.
    return {k: v - before.get(k, 0.0) if v >= before.get(k, 0.0) else v for k, v in now.items()}


class LatencyView:
    SNAPSHOT_SECONDS = 5.0

    def __init__(self, metrics: Metrics, window_seconds: float, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self.metrics = metrics
        self.window = window_seconds
        self.clock = clock
        self._snapshots: deque[tuple[float, Totals]] = deque()
        # Everything counted so far happened since the service started (its files are cleaned at
        # start): a worker that joins late still sees the whole window, from zero at that moment.
        age = self.metrics.service_age_seconds()
        if age is not None and age < window_seconds:
            self._snapshots.append((self.clock() - age, Totals()))
        self.sample()

    def sample(self) -> Totals:
        """Take a snapshot now; keep what the window needs (one snapshot at or before its start)."""
        now = self.clock()
        totals = read_totals(self.metrics)
        if not self._snapshots or now - self._snapshots[-1][0] >= self.SNAPSHOT_SECONDS:
            self._snapshots.append((now, totals))
        while len(self._snapshots) > 1 and self._snapshots[1][0] <= now - self.window:
            self._snapshots.popleft()
        return totals

    def snapshot(self) -> dict[str, object]:
        current = self.sample()
        base = self._snapshots[0][1]
        requests = _minus(current.requests, base.requests)
        errors = _minus(current.errors, base.errors)
        intents: dict[str, dict[str, float | int]] = {}
        for intent, buckets in sorted(current.buckets.items()):
            per_le = _minus(buckets, base.buckets.get(intent, {}))
            count = int(max(per_le.values(), default=0))
            if count == 0:
                continue
            intents[intent] = {"count": count, "errors": int(errors.get(intent, 0))}
            for name, q in (("p50_ms", 0.5), ("p95_ms", 0.95), ("p99_ms", 0.99)):
                value = histogram_quantile(q, per_le)
                intents[intent][name] = round(value * 1000, 1) if value is not None else 0.0
        total = sum(requests.values())
        return {
            "window_seconds": self.window,
            "requests": int(total),
            "error_rate": round(sum(errors.values()) / total, 4) if total else 0.0,
            "rate_limited": int(current.rate_limited - base.rate_limited
                                if current.rate_limited >= base.rate_limited else current.rate_limited),
            "intents": intents,
            "scope": "all workers" if self.metrics.multiproc_dir else "this process",
            "method": "histogram_quantile over the request latency histogram",
        }
