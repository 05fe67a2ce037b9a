"""Request metrics through children bound once per (endpoint, intent, provider): the same series a
`labels()` call per request gave, and a bounded number of keys kept."""

from __future__ import annotations

import pytest

from app.observability import metrics as metrics_module
from app.observability.metrics import Metrics


def _value(m: Metrics, name: str, labels: dict[str, str]) -> float | None:
    return m.registry.get_sample_value(name, labels)


def test_served_requests_land_in_the_same_series_by_status_and_their_latency_is_observed() -> None:
    m = Metrics()
    served = m.served("v2", "rag", "gemini")
    assert m.served("v2", "rag", "gemini") is served  # bound once
    served.count(200)
    served.count(200)
    served.count(502)
    served.latency.observe(0.3)
    labels = {"endpoint": "v2", "intent": "rag", "provider": "gemini"}
    assert _value(m, "ivy_requests_total", {**labels, "status": "200"}) == 2.0
    assert _value(m, "ivy_requests_total", {**labels, "status": "502"}) == 1.0
    assert _value(m, "ivy_request_latency_seconds_count", labels) == 1.0


def test_past_the_bound_keys_are_not_kept_yet_still_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics_module, "MAX_BOUND_CHILDREN", 2)
    m = Metrics()
    kept = [m.served("v2", "rag", p) for p in ("a", "b")]
    extra = m.served("v2", "rag", "c")
    assert m.served("v2", "rag", "a") is kept[0]
    assert m.served("v2", "rag", "c") is not extra  # bound afresh: the cache stays at its bound
    extra.count(200)
    m.served("v2", "rag", "c").count(200)
    assert _value(m, "ivy_requests_total", {"endpoint": "v2", "intent": "rag", "provider": "c", "status": "200"}) == 2.0
