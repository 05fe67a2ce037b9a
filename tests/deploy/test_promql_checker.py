"""The checker the rules and dashboard tests rely on: it finds the metrics in PromQL and refuses
names, labels and values the real service does not export."""

from __future__ import annotations

import pytest

from tests.deploy.promql import Exported, Matcher, problems, references


def test_references_finds_metrics_matchers_and_grouping_labels_but_not_functions_or_keywords() -> None:
    refs = references(
        'histogram_quantile(0.95, sum by (le, intent) (rate(ivy_request_latency_seconds_bucket{intent="rag"}'
        '[$__rate_interval]))) > 2.2 and on (intent) sum without (provider) (ivy_requests_total offset 5m)'
        ' / ignoring (bucket) group_left sum(rate({__name__="ivy_rate_limited_total", bucket=~"u.*"}[1h:1m]))'
    )
    assert refs.metrics == [
        ("ivy_request_latency_seconds_bucket", [Matcher("intent", "=", "rag")]),
        ("ivy_requests_total", []),
        ("ivy_rate_limited_total", [Matcher("bucket", "=~", "u.*")]),
    ]
    assert refs.grouping_labels == {"le", "intent", "provider", "bucket"}


def test_a_constant_has_no_metrics() -> None:
    assert references("vector(1.5)").metric_names == set()


@pytest.mark.parametrize(("expr", "why"), [
    ("rate(ivy_request_total[5m])", "misspelt counter"),
    ("ivy_requests", "a counter's series is ivy_requests_total"),
    ("ivy_in_flight_requests_total", "a gauge has no _total series"),
    ('ivy_requests_total{state="200"}', "no label state"),
    ('ivy_requests_total{intent="RAG"}', "intents are lower case"),
    ("sum by (reason) (rate(ivy_rate_limited_total[5m]))", "429s are by bucket, not reason"),
    ('ivy_circuit_breaker_state{provider="anthropic"}', "no such provider"),
])
def test_checker_refuses_what_the_service_does_not_export(exported: Exported, expr: str, why: str) -> None:
    assert problems(expr, exported), why


@pytest.mark.parametrize("expr", [
    'histogram_quantile(0.95, sum by (le, provider) (rate(ivy_provider_latency_seconds_bucket{outcome="ok"}[5m])))',
    'sum(rate(ivy_requests_total{status=~"5..", endpoint="v1"}[5m]))',
    'max by (provider) (ivy_circuit_breaker_state{provider="gemini"})',
    'sum by (backend, action) (rate(ivy_ratelimit_backend_errors_total{action="fail_open"}[5m]))',
    "time() - max by (job) (ivy_eval_last_run_timestamp_seconds)",
])
def test_checker_accepts_what_the_service_exports(exported: Exported, expr: str) -> None:
    assert problems(expr, exported) == []


def test_checker_refuses_a_legend_label_the_metrics_do_not_carry(exported: Exported) -> None:
    assert problems("sum by (bucket) (rate(ivy_rate_limited_total[5m]))", exported, output_labels={"bucket"}) == []
    assert problems("sum by (bucket) (rate(ivy_rate_limited_total[5m]))", exported, output_labels={"user"})
