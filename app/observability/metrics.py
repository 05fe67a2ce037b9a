"""Prometheus metrics, owned by the app (one registry per app, no module-level collectors)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Resolve the SLOs: conversational p95 1.5 s, rag p95 2.2 s sit on bucket edges.
LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.2, 2.5, 3.0, 4.0, 6.0, 10.0)
FAST_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)

BREAKER_STATE_VALUE = {"closed": 0, "half_open": 1, "open": 2}


class Metrics:
    def __init__(self) -> None:
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
        self.fallbacks = Counter(
            "ivy_fallbacks", "Answers that did not come from the first provider as planned, by reason.",
            ["reason"], registry=r,
        )
        self.breaker_transitions = Counter(
            "ivy_circuit_breaker_transitions", "Circuit breaker state changes.",
            ["provider", "from_state", "to_state"], registry=r,
        )
        self.breaker_state = Gauge(
            "ivy_circuit_breaker_state", "Circuit breaker state: 0 closed, 1 half-open, 2 open.",
            ["provider"], registry=r,
        )
        self.in_flight = Gauge("ivy_in_flight_requests", "Requests being processed now.", registry=r)
        self.errors = Counter(
            "ivy_request_errors", "Requests that ended in an error response, by code.", ["code"], registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
