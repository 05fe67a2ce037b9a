"""The runbook's SLOs, defined once, and the loop that logs latency against them.

p95 per intent: conversational 1.5 s, rag 2.2 s (alert thresholds, not per-request deadlines;
deploy/prometheus/alerts.yml and the dashboard state the same figures).
"""

from __future__ import annotations

import asyncio
import time

from app.observability.latency import LatencyView
from app.observability.logging import get_logger

log = get_logger()

SLO_P95_MS = {"conversational": 1500.0, "rag": 2200.0}


async def latency_summaries(latency: LatencyView, interval: float) -> None:
    """Keep the latency window's snapshots fresh, and log a `p95`/`p99` line per interval while
    traffic flows, with a WARNING when an intent's p95 breaks its SLO."""
    tick = min(interval, LatencyView.SNAPSHOT_SECONDS)
    next_summary, last_total = time.monotonic() + interval, -1
    while True:
        await asyncio.sleep(tick)
        if time.monotonic() < next_summary:
            latency.sample()
            continue
        next_summary += interval
        snap = latency.snapshot()
        total = snap["requests"]
        if total == last_total or not snap["intents"]:
            continue
        last_total = int(str(total))
        intents = snap["intents"]
        assert isinstance(intents, dict)
        # share_5xx is /ai/router/health's latency.error_rate: not "error_rate" on a healthy line (`grep -i error`).
        log.info("latency_summary", window_seconds=snap["window_seconds"], share_5xx=snap["error_rate"],
                 scope=snap["scope"],
                 **{f"{i}_{k}": v for i, d in intents.items() for k, v in d.items() if k.startswith("p")})
        for intent, slo in SLO_P95_MS.items():
            p95 = intents.get(intent, {}).get("p95_ms")
            if p95 is not None and p95 > slo:
                log.warning("latency_slo_breach", intent=intent, p95_ms=p95, slo_p95_ms=slo,
                            p99_ms=intents[intent]["p99_ms"])
