"""HTTP routes for health and metrics. The router endpoints themselves (POST /ai/router/v2 and the v1
rollback target) are in router_endpoints.py: they carry all the traffic and skip FastAPI's layers."""

from __future__ import annotations

import time

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from app import __version__
from app.api.deps import IvyState
from app.api.responses import FastJSONResponse
from app.observability.slo import SLO_P95_MS
from app.state import State

router = APIRouter()

@router.get("/health", summary="Can the service answer? (runbook: database connectivity)")
async def health(state: IvyState) -> FastJSONResponse:
    backend = state.limiter.backend
    if state.settings.redis_url is None:
        # Nothing to connect to: the limiter (and the answer cache) run in this process. Said as
        # such, not as a Redis that answered.
        redis: dict[str, object] = {"configured": False, "ok": None, "latency_ms": None, "backend": backend}
        return FastJSONResponse({"status": "ok", "checks": {"redis": redis}})
    try:
        latency: float | None = round(await state.limiter.ping(), 2)
        ok = True
        state.limiter_health.last_ok_at = time.monotonic()
    except Exception:
        latency, ok = None, False
    # Kept current by health checks too, so an idle service still reports a Redis outage.
    state.limiter_metrics.up.set(1 if ok else 0)
    degraded = not ok or state.limiter_health.degraded
    # Degraded is still 200: with the limiter failing open (and the offline provider last in the
    # chain) the service answers; 503 is kept for "cannot answer", e.g. failing closed.
    can_answer = ok or state.settings.ai_rate_limit_fail_open
    body = {
        "status": "degraded" if degraded else "ok",
        "checks": {"redis": {"configured": True, "ok": ok, "latency_ms": latency, "backend": backend}},
    }
    return FastJSONResponse(body, status_code=200 if can_answer else 503)


def degraded_reasons(state: State) -> list[str]:
    """Why the router's answers are not the models' right now (empty: they are)."""
    remote = [link.provider.name for link in state.chain.ordered(state.flags.current.active_model)]
    if not remote:
        return ["no provider key set (GEMINI_API_KEY, OPENAI_API_KEY): every answer is the offline provider's"]
    if all(state.breakers[name].state == "open" for name in remote):
        return ["every provider's circuit breaker is open: answers are the offline provider's until one half-opens"]
    return []


@router.get("/ai/router/health", summary="What on-call looks at: latency per intent, breakers, flags, limits")
async def router_health(state: IvyState) -> FastJSONResponse:
    s = state.settings
    reasons = degraded_reasons(state)
    return FastJSONResponse({
        "status": "degraded" if reasons else "ok",
        "degraded_reasons": reasons,
        "version": __version__,
        "uptime_seconds": round(time.time() - state.started_at, 1),
        "latency": state.latency.snapshot(),
        "slo_p95_ms": {intent: round(ms) for intent, ms in SLO_P95_MS.items()},
        "providers": {
            "chain": [link.provider.name for link in state.chain.ordered(state.flags.current.active_model)]
            + [state.chain.local.name],
            "active_model": state.flags.current.active_model,
            "configured": {
                name: {"model": s.model_of(name),
                       "key_set": s.provider_key(name) is not None}
                for name in ("gemini", "openai")
            },
            "circuit_breakers": {name: b.snapshot() for name, b in state.breakers.items()},
            "hedging": state.chain.snapshot(),
        },
        "flags": {"IVY_MODAL_HEURISTICS": state.flags.current.modal_heuristics,
                  "IVY_ORGANIC_ENABLED": state.flags.current.organic},
        "runtime_flags": state.flags.describe(),
        "rate_limit": {
            "backend": state.limiter.backend,
            "AI_RATE_LIMIT_PER_MIN": s.ai_rate_limit_per_min,
            "AI_RATE_LIMIT_BURST": s.rate_limit_burst,
            "AI_ORG_RATE_LIMIT_PER_MIN": s.ai_org_rate_limit_per_min,
            "AI_RATE_LIMIT_FAIL_OPEN": s.ai_rate_limit_fail_open,
            "backend_degraded": state.limiter_health.degraded,
        },
        "budgets": await state.budgets.health(),
        # This host is full (loop on the CPU, shedding) or the provider is slow (its norm, hedging above)?
        "load": state.admission.snapshot(),
        "knowledge_base": {"warm": state.kb.warm, "sections": len(state.kb.sections), "version": state.kb.version},
        "cache": {**await state.cache.snapshot(), "warmup": state.warmer.snapshot()},
    })


@router.get("/metrics", summary="Prometheus exposition", response_class=PlainTextResponse,
            responses={200: {"description": "Prometheus text format",
                             "content": {"text/plain": {"schema": {"type": "string"}}}}})
async def metrics(state: IvyState) -> Response:
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
