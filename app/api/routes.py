"""HTTP routes. They parse, call the pipeline, and render; nothing else."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST

from app import __version__, pipeline
from app.api.deps import ROUTER_HEADERS, CurrentCall, IvyState, RouterCall
from app.api.errors import IvyError
from app.api.responses import FastJSONResponse
from app.api.schemas import ErrorResponse, RouterRequest, RouterResponse, V1Response
from app.config.runtime_flags import Flags

router = APIRouter()

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 413, 422, 429, 500)
}


def _remember(request: Request, response: RouterResponse) -> None:
    """What the request log line and metrics need (read by the middleware)."""
    request.state.intent = response.intent
    request.state.provider = response.provider
    request.state.fallback = response.fallback.reason
    request.state.model = response.model
    request.state.provider_ms = response.latency_ms.get("generate")
    request.state.overhead_ms = response.latency_ms["total"] - response.latency_ms.get("generate", 0.0)


async def _run(request: Request, call: RouterCall, body: RouterRequest, flags: Flags) -> pipeline.Outcome:
    try:
        return await pipeline.answer(call.state, call.caller, body.query, body.context, flags)
    except IvyError as exc:
        request.state.bucket = exc.details.get("bucket")
        request.state.retry_after = exc.details.get("retry_after")
        raise


@router.post("/ai/router/v2", response_model=RouterResponse, responses=_ERRORS,
             openapi_extra={"parameters": ROUTER_HEADERS},
             summary="Answer a rep's question (v2: intents, modals, citations, failover)")
async def route_v2(request: Request, body: RouterRequest, call: CurrentCall) -> Response:
    if body.stream:
        try:
            events, headers, c = await pipeline.answer_stream(
                call.state, call.caller, body.query, body.context, call.flags,
                on_provider=lambda name: setattr(request.state, "provider", name))
        except IvyError as exc:
            request.state.bucket = exc.details.get("bucket")
            raise
        request.state.intent = c.intent
        return StreamingResponse(events, media_type="text/event-stream",
                                 headers={**headers, "Cache-Control": "no-cache"})
    outcome = await _run(request, call, body, call.flags)
    _remember(request, outcome.response)
    return FastJSONResponse(outcome.response.model_dump(mode="json"), headers=outcome.rate_headers)


@router.post("/ai/router/", response_model=V1Response, responses=_ERRORS,
             openapi_extra={"parameters": ROUTER_HEADERS},
             summary="v1 contract (rollback target): never opens a modal, ignores v2 flags")
async def route_v1(request: Request, body: RouterRequest, call: CurrentCall) -> Response:
    v1_flags = Flags(modal_heuristics=False, organic=False, active_model=call.flags.active_model)
    outcome = await _run(request, call, body, v1_flags)
    r = outcome.response
    _remember(request, r)
    intent = "rag" if r.intent == "rag" else "conversational"
    v1 = V1Response(request_id=r.request_id, response=r.answer, intent=intent, provider=r.provider, model=r.model)
    return FastJSONResponse(v1.model_dump(mode="json"), headers=outcome.rate_headers)


@router.get("/health", summary="Can the service answer? (runbook: database connectivity)")
async def health(state: IvyState) -> FastJSONResponse:
    backend = state.limiter.backend
    try:
        latency: float | None = round(await state.limiter.ping(), 2)
        ok = True
        state.limiter_health.last_ok_at = time.monotonic()
    except Exception:
        latency, ok = None, False
    # Kept current by health checks too, so an idle service still reports a Redis outage.
    state.metrics.limiter_up.labels(backend).set(1 if ok else 0)
    degraded = not ok or state.limiter_health.degraded
    # Degraded is still 200: with the limiter failing open (and the offline provider last in the
    # chain) the service answers; 503 is kept for "cannot answer", e.g. failing closed.
    can_answer = ok or state.settings.ai_rate_limit_fail_open
    body = {
        "status": "degraded" if degraded else "ok",
        "checks": {"redis": {"ok": ok, "latency_ms": latency, "backend": backend}},
    }
    return FastJSONResponse(body, status_code=200 if can_answer else 503)


@router.get("/ai/router/health", summary="What on-call looks at: latency per intent, breakers, flags, limits")
async def router_health(state: IvyState) -> FastJSONResponse:
    s = state.settings
    return FastJSONResponse({
        "status": "ok",
        "version": __version__,
        "uptime_seconds": round(time.time() - state.started_at, 1),
        "latency": state.latency.snapshot(),
        "slo_p95_ms": {"conversational": 1500, "rag": 2200},
        "providers": {
            "chain": [link.provider.name for link in state.chain.ordered(state.flags.current.active_model)]
            + [state.chain.local.name],
            "active_model": state.flags.current.active_model,
            "configured": {
                name: {"model": s.gemini_model if name == "gemini" else s.openai_model,
                       "key_set": s.provider_key(name) is not None}
                for name in ("gemini", "openai")
            },
            "circuit_breakers": {name: b.snapshot() for name, b in state.breakers.items()},
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
        "knowledge_base": {"warm": state.kb.warm, "sections": len(state.kb.sections)},
    })


@router.get("/metrics", summary="Prometheus exposition")
async def metrics(state: IvyState) -> Response:
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
