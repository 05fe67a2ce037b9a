"""Prometheus metrics, owned by the app (no module-level collectors).

Under several workers (`uvicorn --workers N`) set PROMETHEUS_MULTIPROC_DIR before start:
prometheus-client then keeps each worker's values in files there, and /metrics and
/ai/router/health aggregate the files of every worker, so any worker answers for the service.
Files of processes that are gone are removed when a worker starts (a restart starts from zero).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from app.vocabulary import CacheStatus

# Resolve the SLOs (conversational p95 1.5 s, rag p95 2.2 s sit on bucket edges) and an answer
# from the cache (1-2 ms: below 25 ms, the first edge used to be, every quantile was a guess).
LATENCY_BUCKETS = (0.0005, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75,
                   1.0, 1.25, 1.5, 1.75, 2.0, 2.2, 2.5, 3.0, 4.0, 6.0, 10.0)
FAST_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)

BREAKER_STATE_VALUE = {"closed": 0, "half_open": 1, "open": 2}
MAX_BOUND_CHILDREN = 1024  # (endpoint, intent, provider) kept bound; the vocabularies make far fewer


@dataclass(slots=True)
class Served:
    """One (endpoint, intent, provider)'s request metrics, children bound once: a `labels()` call per
    request costs a lock, a tuple and a dict lookup each."""

    requests: Counter
    labels: tuple[str, str, str]
    latency: Histogram
    by_status: dict[int, Counter]

    def count(self, status: int) -> None:
        child = self.by_status.get(status)
        if child is None:  # HTTP statuses: a handful per key
            child = self.by_status[status] = self.requests.labels(*self.labels, str(status))
        child.inc()


def multiproc_dir() -> Path | None:
    value = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    return Path(value) if value else None


def clean_dead_process_files(folder: Path) -> int:
    """Remove value files of pids that no longer run; returns how many went."""
    folder.mkdir(parents=True, exist_ok=True)
    removed = 0
    for path in folder.glob("*.db"):
        pid = path.stem.rsplit("_", 1)[-1]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        path.unlink(missing_ok=True)
        removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class EvalReportCollector(Collector):
    """The latest nightly eval report as gauges, so the "eval success rate < 80%" alert has a series.

    With no report, the timestamp is 0: the staleness alert fires, as it should.
    """

    def __init__(self, reports_dir: Path) -> None:
        self.reports_dir = reports_dir

    def collect(self) -> Iterator[Metric]:
        reports = sorted(self.reports_dir.glob("[0-9]" * 8 + ".json")) if self.reports_dir.is_dir() else []
        summary: dict[str, object] = {}
        stamp = 0.0
        if reports:
            try:
                summary = orjson.loads(reports[-1].read_bytes()).get("summary") or {}
                stamp = reports[-1].stat().st_mtime
            except (OSError, orjson.JSONDecodeError, AttributeError):
                summary = {}
        yield GaugeMetricFamily("ivy_eval_last_run_timestamp_seconds",
                                "When the latest nightly eval report was written (0: none).", value=stamp)
        for key, name, unit in (("success_rate", "ivy_eval_success_rate", " (0..1)"),
                                ("intent_accuracy", "ivy_eval_intent_accuracy", " (0..1)"),
                                ("false_modals", "ivy_eval_false_modals", ": modals opened where none was expected")):
            value = summary.get(key)
            if isinstance(value, int | float):
                yield GaugeMetricFamily(name, f"Latest nightly eval {key.replace('_', ' ')}{unit}.", value=value)


@dataclass(frozen=True, slots=True)
class LimiterMetrics:
    """The rate limiter's series for its one backend, bound once (Metrics.for_limiter)."""

    latency: Histogram
    up: Gauge
    failed_open: Counter
    failed_closed: Counter


@dataclass(frozen=True, slots=True)
class ShedMetrics:
    """What one shed request counts on one endpoint, bound once (Metrics.for_shed): a shed costs µs."""

    shed: Counter
    requests: Counter
    error: Counter

    def count(self) -> None:
        self.shed.inc()
        self.requests.inc()
        self.error.inc()


class Metrics:
    def __init__(self, *, eval_reports_dir: Path | None = None) -> None:
        self.multiproc_dir = multiproc_dir()
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "ivy_requests", "Requests answered, by endpoint, intent, provider and HTTP status.",
            ["endpoint", "intent", "provider", "status"], registry=r,
        )
        self.request_latency = Histogram(
            "ivy_request_latency_seconds", "End-to-end request latency.",
            ["endpoint", "intent", "provider"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.provider_latency = Histogram(
            "ivy_provider_latency_seconds", "Latency of one provider call, by outcome.",
            ["provider", "outcome"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.provider_first_token = Histogram(
            "ivy_provider_first_token_seconds", "Time to the first chunk of a provider call that won its race.",
            ["provider"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.hedges = Counter(
            "ivy_provider_hedges", "Hedged calls: fired (a hedge started), won (a hedge answered), cancelled "
            "(a call stopped because another answered first), deferred (a hedge due while the event loop was "
            "late, put off by one hedge delay).", ["provider", "event"], registry=r,
        )
        self.overtime = Counter(
            "ivy_provider_overtime", "Answers still flowing at the request's deadline, let run on to "
            "IVY_REQUEST_DEADLINE_MAX_SECONDS (a stalled one is cut at the deadline).", ["provider"], registry=r,
        )
        self.provider_tokens = Counter(
            "ivy_provider_tokens", "Tokens the providers reported, by direction (input or output).",
            ["provider", "model", "intent", "direction"], registry=r,
        )
        self.rate_limited = Counter(
            "ivy_rate_limited", "Requests refused with 429, by the bucket that refused.", ["bucket"], registry=r,
        )
        self.limiter_decisions = Counter(
            "ivy_ratelimit_decisions", "Rate limiter decisions by outcome and bucket.",
            ["outcome", "bucket"], registry=r,
        )
        self.limiter_latency = Histogram(
            "ivy_ratelimit_latency_seconds", "Time spent in the rate limiter per request.",
            ["backend"], buckets=FAST_BUCKETS, registry=r,
        )
        self.limiter_errors = Counter(
            "ivy_ratelimit_backend_errors", "Limiter backend failures (the request was failed open or closed).",
            ["backend", "action"], registry=r,
        )
        self.limiter_up = Gauge(
            "ivy_ratelimit_backend_up", "1 while the limiter's backend answers, 0 while it fails.",
            ["backend"], registry=r, multiprocess_mode="livemin",
        )
        self.fallbacks = Counter(
            "ivy_fallbacks", "Answers that did not come from the first provider as planned, by reason.",
            ["reason"], registry=r,
        )
        self.safety_flags = Counter(
            "ivy_safety_flags", "Answers the output checks changed or flagged, by flag (README 'Safety').",
            ["flag"], registry=r,
        )
        self.breaker_transitions = Counter(
            "ivy_circuit_breaker_transitions", "Circuit breaker state changes.",
            ["provider", "from_state", "to_state"], registry=r,
        )
        self.breaker_state = Gauge(
            "ivy_circuit_breaker_state", "Circuit breaker state: 0 closed, 1 half-open, 2 open.",
            ["provider"], registry=r, multiprocess_mode="livemax",
        )
        self.in_flight = Gauge("ivy_in_flight_requests", "Requests being processed now.", registry=r,
                               multiprocess_mode="livesum")
        self.admission_shed = Counter("ivy_admission_shed_total",
                                      "Router requests refused at the door (503 overloaded): this worker was full.",
                                      registry=r)
        self.admission_rate = Gauge(
            "ivy_admission_rate", "Router requests a second admitted while this worker is busy (target CPU share / "
            "CPU per request); 0 while it has room and nothing but the in-flight bound sheds.",
            registry=r, multiprocess_mode="livesum")
        self.loop_cpu_busy = Gauge("ivy_event_loop_cpu_busy", "The event loop thread's CPU share (0-1), smoothed.",
                                   registry=r, multiprocess_mode="livemax")
        self.loop_lag = Gauge("ivy_event_loop_lag_seconds", "The event loop's recent lag (fast rise, slow fall).",
                              registry=r, multiprocess_mode="livemax")
        self.loop_lag_seconds = Histogram(
            "ivy_event_loop_lag_tick_seconds", "How late each 50 ms tick of the loop-lag timer woke.", registry=r,
            buckets=(0.001, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28))
        self.errors = Counter(
            "ivy_request_errors", "Requests that ended in an error response, by code.", ["code"], registry=r,
        )
        self.cache_requests = Counter(
            "ivy_cache_requests", "Answer cache outcomes per request: hit, miss or bypass (no-cache, an email "
            "draft, or the backend failing open).", ["outcome"], registry=r,
        )
        self.cache_evictions = Counter(
            "ivy_cache_evictions", "Answers the in-process cache dropped to stay within IVY_CACHE_MAX_ENTRIES.",
            ["backend"], registry=r,
        )
        self.cache_tokens_saved = Counter(
            "ivy_cache_tokens_saved", "Provider tokens a cache hit did not spend (the entry's own usage).",
            ["direction"], registry=r,
        )
        self.cache_errors = Counter(
            "ivy_cache_backend_errors", "Answer cache backend failures (the request went on without the cache).",
            ["backend", "op"], registry=r,
        )
        self.cache_warmup = Counter(
            "ivy_cache_warmup_answers", "Warm-up provider calls: refreshed (stored) or not_cached (degraded).",
            ["outcome"], registry=r,
        )
        self.cost_usd = Counter(
            "ivy_provider_cost_usd", "What the providers billed, in USD (price table x reported or estimated usage).",
            ["provider", "model", "intent"], registry=r,
        )
        self.estimated_calls = Counter(
            "ivy_provider_estimated_calls", "Calls billed by estimate: stopped before the provider reported usage.",
            ["provider"], registry=r,
        )
        self.price_unknown = Counter(
            "ivy_price_unknown", "Calls of a model missing from the price table (cost unknown).", ["model"], registry=r,
        )
        self.budget_refusals = Counter(
            "ivy_budget_refusals", "Provider calls an org's budget refused, by reason (budget_exhausted, "
            "budget_unavailable: the store failed closed).", ["reason"], registry=r,
        )
        self.budget_crossings = Counter(
            "ivy_budget_threshold_crossings", "Org budgets that crossed a threshold this period (each once per "
            "org and period, fleet-wide): soft (IVY_BUDGET_SOFT_THRESHOLD) or exhausted.", ["level"], registry=r,
        )
        self.budget_store_errors = Counter(
            "ivy_budget_store_errors", "Budget store failures, by operation and what was done.", ["op", "action"],
            registry=r,
        )
        self.budget_overshoot = Counter(
            "ivy_budget_overshoot", "Settlements above their reservation (0 by construction).", registry=r,
        )
        # Children whose labels never change are bound once (a labels() call per request costs a
        # lock and a dict lookup); every series exists from the start too (dashboards, alerts).
        self.cache_request = {status: self.cache_requests.labels(status) for status in get_args(CacheStatus)}
        self.cache_saved_input = self.cache_tokens_saved.labels("input")
        self.cache_saved_output = self.cache_tokens_saved.labels("output")
        for level in ("soft", "exhausted"):
            self.budget_crossings.labels(level)
        for reason in ("budget_exhausted", "budget_unavailable"):
            self.budget_refusals.labels(reason)
        self._served: dict[tuple[str, str, str], Served] = {}
        self._eval = EvalReportCollector(eval_reports_dir) if eval_reports_dir is not None else None
        if self._eval is not None and self.multiproc_dir is None:
            r.register(self._eval)

    def served(self, endpoint: str, intent: str, provider: str) -> Served:
        """The request metrics of one (endpoint, intent, provider), bound once (up to
        MAX_BOUND_CHILDREN keys; past that, bound afresh per call)."""
        key = (endpoint, intent, provider)
        served = self._served.get(key)
        if served is None:
            served = Served(self.requests, key, self.request_latency.labels(*key), {})
            if len(self._served) < MAX_BOUND_CHILDREN:
                self._served[key] = served
        return served

    def for_limiter(self, backend: str) -> LimiterMetrics:
        return LimiterMetrics(self.limiter_latency.labels(backend), self.limiter_up.labels(backend),
                              self.limiter_errors.labels(backend, "fail_open"),
                              self.limiter_errors.labels(backend, "fail_closed"))

    def for_shed(self, endpoint: str) -> ShedMetrics:
        return ShedMetrics(self.admission_shed, self.requests.labels(endpoint, "none", "none", "503"),
                           self.errors.labels("overloaded"))

    def service_registry(self) -> CollectorRegistry:
        """What the whole service measured: every worker's files in multiprocess mode, else ours."""
        if self.multiproc_dir is None:
            return self.registry
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=str(self.multiproc_dir))  # type: ignore[no-untyped-call]
        if self._eval is not None:
            registry.register(self._eval)
        return registry

    def service_age_seconds(self) -> float | None:
        """Seconds since the service began counting: its oldest value file (multiprocess), else None."""
        if self.multiproc_dir is None:
            return None
        stamps = [p.stat().st_ctime for p in self.multiproc_dir.glob("*.db")]
        return max(0.0, time.time() - min(stamps)) if stamps else 0.0

    def render(self) -> bytes:
        return generate_latest(self.service_registry())

    def close(self) -> None:
        if self.multiproc_dir is not None:
            multiprocess.mark_process_dead(os.getpid(), path=str(self.multiproc_dir))  # type: ignore[no-untyped-call]
