"""Metrics that describe the whole service: several workers, and the nightly eval's latest report."""

from __future__ import annotations

import json
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.support import uvicorn_server


def _post(base: str, query: str, user: str) -> int:
    req = urllib.request.Request(base + "/ai/router/v2", data=json.dumps({"query": query}).encode(),
                                 headers={"Content-Type": "application/json", "X-User-ID": user}, method="POST")
    with urllib.request.urlopen(req, timeout=10) as r:
        return int(r.status)


def _samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    return [(s.labels, s.value) for f in text_string_to_metric_families(text) for s in f.samples if s.name == name]


def _v2_total(text: str) -> float:
    return sum(v for labels, v in _samples(text, "ivy_requests_total") if labels["endpoint"] == "v2")


def test_two_workers_metrics_and_health_count_every_request(tmp_path: Path) -> None:
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    stale = metrics_dir / "counter_999999.db"  # a previous run's file (no such pid)
    stale.write_bytes(b"\0" * 16)
    env = {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), "IVY_LOG_FILE": str(tmp_path / "ai_router.log"),
           "AI_RATE_LIMIT_PER_MIN": "100000"}
    with uvicorn_server(env, workers=2) as base:
        assert not stale.exists()  # cleaned at start
        # Concurrent batches until both workers have taken traffic (the kernel picks who accepts).
        n = 0
        with ThreadPoolExecutor(8) as pool:
            while n < 600:
                codes = list(pool.map(lambda i: _post(base, "hello" if i % 2 else "what does the growth plan cost",
                                                      f"rep-{i}"), range(n, n + 40)))
                assert codes == [200] * 40
                n += 40
                if len({p.stem.rsplit("_", 1)[-1] for p in metrics_dir.glob("counter_*.db")}) == 2:
                    break
        assert len({p.stem.rsplit("_", 1)[-1] for p in metrics_dir.glob("counter_*.db")}) == 2
        # A worker counts a request after its last byte is sent, so the client may read its answer
        # a moment before it is counted: wait (bounded) until every request is, then scrape.
        for _ in range(200):
            if _v2_total(urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()) == n:
                break
            time.sleep(0.05)
        scrapes = [urllib.request.urlopen(base + "/metrics", timeout=5).read().decode() for _ in range(6)]
        health = [json.loads(urllib.request.urlopen(base + "/ai/router/health", timeout=5).read())
                  for _ in range(6)]
    for text in scrapes:  # whichever worker answered the scrape counts all of it
        assert _v2_total(text) == n
    for body in health:
        latency = body["latency"]
        assert latency["scope"] == "all workers"
        assert latency["intents"]["conversational"]["count"] == n // 2
        assert latency["intents"]["rag"]["count"] == n // 2


def test_eval_report_is_exposed_as_gauges(make_client, tmp_path: Path) -> None:
    reports = tmp_path / "eval_reports"
    client = make_client(ivy_eval_reports_dir=reports)
    missing = client.get("/metrics").text
    assert _samples(missing, "ivy_eval_last_run_timestamp_seconds") == [({}, 0.0)]
    assert not _samples(missing, "ivy_eval_success_rate")

    reports.mkdir()
    (reports / "20261123.json").write_text(json.dumps({"summary": {"success_rate": 0.5, "intent_accuracy": 0.6}}))
    (reports / "20261124.json").write_text(json.dumps({"summary": {"success_rate": 0.97, "intent_accuracy": 0.96}}))
    text = client.get("/metrics").text
    assert _samples(text, "ivy_eval_success_rate") == [({}, 0.97)]  # the latest report
    assert _samples(text, "ivy_eval_intent_accuracy") == [({}, 0.96)]
    assert _samples(text, "ivy_eval_last_run_timestamp_seconds")[0][1] > 1.7e9


def test_limiter_backend_up_gauge_is_set_at_start(client) -> None:
    assert _samples(client.get("/metrics").text, "ivy_ratelimit_backend_up") == [({"backend": "memory"}, 1.0)]
