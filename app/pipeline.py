"""One request, top to bottom: rate limit -> read the CRM context -> classify -> retrieve -> cache lookup
-> generate -> JSON tool -> output checks -> cache store -> respond.

Each stage is a plain function over plain data; the routes only parse HTTP and call `answer`.
"""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from app.cache import CachedAnswer, CacheKey, CacheOutcome, Recipe, answer_key
from app.config.runtime_flags import Flags
from app.crm import CrmRecord
from app.domain import (
    Caller,
    Citation,
    Fallback,
    IntentInfo,
    Modal,
    Outcome,
    RateLimitExceeded,
    RouterResponse,
    Safety,
)
from app.intent.classifier import Classification, classify, lead_has_insights
from app.observability.logging import get_logger
from app.providers import prompts
from app.providers.base import GenerationRequest, Passage, ProviderError
from app.providers.chain import ChainResult, LinkFailure, Trace
from app.resilience.ratelimit import rate_limit_headers, retry_after_header
from app.retrieval.retriever import retrieve
from app.safety import REFUSAL, AnswerGuard, SafetyReport, injected
from app.state import State
from app.tools.email import make_email_json_fallback, parse_email

log = get_logger()


@dataclass(slots=True)
class Timer:
    started: float = field(default_factory=time.perf_counter)
    stages: dict[str, float] = field(default_factory=dict)
    _mark: float = field(default_factory=time.perf_counter)

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.stages[stage] = round((now - self._mark) * 1000, 3)
        self._mark = now

    def total(self) -> dict[str, float]:
        return {"total": round((time.perf_counter() - self.started) * 1000, 3), **self.stages}


# --- stage 1: rate limit -------------------------------------------------------------------------

async def admit(state: State, caller: Caller) -> dict[str, str]:
    """Take a token for this caller or raise RateLimitExceeded; returns the rate-limit headers."""
    started = time.perf_counter()
    backend = state.limiter.backend
    try:
        decision = await state.limiter.check(caller.user_key, caller.org_key)
    except Exception as exc:  # Redis down or slow: the limiter must not take the service down with it
        return _limiter_failed(state, exc)
    finally:
        state.metrics.limiter_latency.labels(backend).observe(time.perf_counter() - started)
    if state.limiter_health.degraded or state.limiter_health.last_ok_at is None:
        state.metrics.limiter_up.labels(backend).set(1)
    state.limiter_health.last_ok_at = time.monotonic()
    outcome = "allowed" if decision.allowed else "refused"
    state.metrics.limiter_decisions.labels(outcome, decision.bucket or "none").inc()
    headers = rate_limit_headers(decision)
    if decision.allowed:
        return headers
    retry = retry_after_header(decision.retry_after)
    state.metrics.rate_limited.labels(decision.bucket or "user").inc()
    raise RateLimitExceeded(f"rate limit exceeded for {decision.bucket}; retry in {retry}s",
                            bucket=decision.bucket, retry_after=int(retry), fields=headers)


def _limiter_failed(state: State, exc: Exception) -> dict[str, str]:
    health = state.limiter_health
    now = time.monotonic()
    health.last_error, health.last_error_at = f"{type(exc).__name__}: {exc}"[:200], now
    health.failures += 1
    fail_open = state.settings.ai_rate_limit_fail_open
    state.metrics.limiter_errors.labels(state.limiter.backend, "fail_open" if fail_open else "fail_closed").inc()
    state.metrics.limiter_up.labels(state.limiter.backend).set(0)
    if now - health.last_warned_at >= 10.0:  # one line per 10 s in a storm, with the count
        health.last_warned_at = now
        log.warning("rate_limiter_unavailable", backend=state.limiter.backend, fail_open=fail_open,
                    error=health.last_error, failures_so_far=health.failures)
    if fail_open:
        return {}
    raise RateLimitExceeded("rate limiter unavailable; failing closed", bucket="unavailable", retry_after=1,
                            fields={})


# --- stages 2-5 ----------------------------------------------------------------------------------

def _citations(p: Plan) -> list[Citation]:
    """Each passage's source and a snippet, links held to the same rule as the answer's."""
    return [Citation(source=x.source, snippet=p.guard.snippet(x.text[:300])) for x in p.passages]


def _suggestions(c: Classification, lead: dict[str, Any]) -> list[str]:
    """Follow-ups the frontend offers as buttons; each is sent back as a query, so each must
    classify as what it promises (a test holds them to that)."""
    if not lead:
        return []
    if c.modal_type == "email_composer":
        return ["Draft a shorter follow-up email", "Draft a follow-up email proposing a meeting"]
    if c.modal_type == "lead_insights":
        return ["Draft a follow-up email to this lead", "What are the next steps?"]
    follow_ups = ["Draft a follow-up email to this lead"]
    if lead_has_insights(lead):
        follow_ups.append("Show this lead's score and insights")
    return follow_ups


def build_generation_request(canary: str, query: str, lead: dict[str, Any], c: Classification,
                             passages: list[Passage], max_output_tokens: int = 512) -> GenerationRequest:
    notes: tuple[str, ...] = ()
    if "lead:no_score_or_insights" in c.reasons:
        notes = ("This lead has no lead score or AI insights yet.",)
    kind: prompts.PromptKind
    schema = None
    if c.modal_type == "email_composer":
        kind, schema = "email", prompts.EMAIL_SCHEMA
    elif c.modal_type == "lead_insights":
        kind = "insights"
    else:
        kind = "rag" if c.intent == "rag" else "chat"
    prompt = prompts.user_prompt(query, passages, lead)
    if notes:
        prompt = "Note: " + " ".join(notes) + "\n\n" + prompt
    return GenerationRequest(
        intent=c.intent, query=query, system=prompts.system_text(kind, canary), prompt=prompt, lead=lead,
        passages=tuple(passages), modal_type=c.modal_type, notes=notes, json_schema=schema,
        max_output_tokens=max_output_tokens, prompt_kind=kind,
    )


@dataclass(slots=True)
class Plan:
    """What the request will ask, read from its CRM context once; the checks its answer passes."""

    classification: Classification
    passages: list[Passage]
    request: GenerationRequest
    record: CrmRecord
    report: SafetyReport
    guard: AnswerGuard

    @property
    def cacheable(self) -> bool:
        """Never an answer that outside text or the query tried to steer."""
        return not self.report.steered and "guard:prompt_injection" not in self.classification.reasons


def plan(state: State, query: str, context: dict[str, Any], flags: Flags, timer: Timer) -> Plan:
    record = CrmRecord.read(context)
    report = SafetyReport(secrets_masked=record.secrets_masked)
    if record.secrets_masked:
        report.flag("secret_masked")
    if injected(text for _, text in record.outside):
        report.flag("untrusted_instructions")
    c = classify(query, record.context, modal_heuristics=flags.modal_heuristics,
                 modal_min_confidence=state.settings.ivy_modal_min_confidence)
    timer.lap("classify")
    passages = retrieve(query, record.context, state.kb) if c.intent == "rag" else []
    timer.lap("retrieve")
    request = build_generation_request(state.canary, query, record.lead, c, passages,
                                       state.settings.max_output_tokens(c.intent))
    guard = AnswerGuard(state.output_policy, addresses=record.addresses, primary=record.primary,
                        hosts=record.hosts, correspondents=record.correspondents, report=report)
    return Plan(c, passages, request, record, report, guard)


async def answer(state: State, caller: Caller, query: str, context: dict[str, Any], flags: Flags,
                 *, use_cache: bool = True) -> Outcome:
    timer = Timer()
    rate_headers = await admit(state, caller)
    timer.lap("rate_limit")
    p = plan(state, query, context, flags, timer)
    key, outcome, hit = await cache_lookup(state, caller, p, flags, _recipe(caller, query, context, flags),
                                           use_cache=use_cache)
    timer.lap("cache")
    if hit is not None:
        return Outcome(_response(caller, p, flags, timer, hit), rate_headers, _hit_trace(hit), p.report)
    response, trace = await respond(state, caller, p, flags, timer, cache=outcome)
    await cache_store(state, key if p.cacheable else None, trace, response.answer, degraded=response.fallback.used)
    return Outcome(response, rate_headers, trace, p.report)


# --- the answer cache (app/cache/): lookup before generating, store after --------------------------

def cache_key(state: State, caller: Caller, p: Plan, flags: Flags) -> CacheKey | None:
    """None when this request is never cached: cache off, only the offline provider, an email draft,
    or a request whose outside text (or query) tries to instruct the model."""
    request = p.request
    if not state.cache.enabled or not state.chain.links or request.modal_type == "email_composer" \
            or not p.cacheable:
        return None
    s = state.settings
    return answer_key(org=caller.org_key, request=request, kb_version=state.kb.version,
                      provider=flags.active_model,
                      model=s.gemini_model if flags.active_model == "gemini" else s.openai_model,
                      modal_heuristics=flags.modal_heuristics)


async def cache_lookup(state: State, caller: Caller, p: Plan, flags: Flags, recipe: Recipe,
                       *, use_cache: bool) -> tuple[CacheKey | None, CacheOutcome, CachedAnswer | None]:
    """The key (None: do not store), what the cache said, and the entry on a hit."""
    key = cache_key(state, caller, p, flags)
    if key is None:
        state.cache.count("bypass")
        return None, "bypass", None
    state.warmer.asked(key, {**recipe, "key": key.digest})
    if not use_cache:  # Cache-Control: no-cache: answer afresh, and refresh the entry
        state.cache.count("bypass")
        return key, "bypass", None
    outcome, hit = await state.cache.lookup(key)
    state.cache.count(outcome, hit)
    return (None if outcome == "bypass" else key), outcome, hit


async def cache_store(state: State, key: CacheKey | None, trace: Trace, text: str, *, degraded: bool) -> bool:
    """Store a real model's answer: never the offline provider's, a degraded one or a draft (key None)."""
    if key is None or degraded or trace.provider == "local" or trace.degraded_reason is not None:
        return False
    s = state.settings
    return await state.cache.store(key, CachedAnswer(
        provider=trace.provider, model=s.gemini_model if trace.provider == "gemini" else s.openai_model,
        answer=text, input_tokens=trace.input_tokens or 0, output_tokens=trace.output_tokens or 0,
        stored_at=time.time()))


def _recipe(caller: Caller, query: str, context: dict[str, Any], flags: Flags) -> Recipe:
    """What the warm-up needs to ask this question again."""
    return {"org": caller.org_key, "query": query, "context": context,
            "flags": [flags.modal_heuristics, flags.organic, flags.active_model]}


def _hit_trace(hit: CachedAnswer) -> Trace:
    return Trace(provider=hit.provider)


async def refresh_cached(state: State, recipe: Recipe) -> bool:
    """Answer a recorded question again and store it (the warm-up; off the request path)."""
    modal_heuristics, organic, active_model = recipe["flags"]
    flags = Flags(modal_heuristics=modal_heuristics, organic=organic, active_model=active_model)
    caller = Caller("cache-warmup", "ivy:cache-warmup", recipe["org"], None, recipe["org"])
    timer = Timer()
    p = plan(state, recipe["query"], recipe["context"], flags, timer)
    key = cache_key(state, caller, p, flags)
    # Re-ask exactly the keyed prompt: a recipe that no longer builds it (the KB changed) is dropped.
    if key is None or key.digest != recipe.get("key"):
        return False
    response, trace = await respond(state, caller, p, flags, timer)
    return await cache_store(state, key if p.cacheable else None, trace, response.answer,
                             degraded=response.fallback.used)


async def warm_cache(state: State) -> None:
    """The warm-up's background task (app/cache/warmup.py), from start."""
    await state.warmer.run(functools.partial(refresh_cached, state))


# --- generate --------------------------------------------------------------------------------------

async def respond(state: State, caller: Caller, p: Plan, flags: Flags, timer: Timer, *,
                  cache: CacheOutcome = "bypass") -> tuple[RouterResponse, Trace]:
    c, request, guard = p.classification, p.request, p.guard
    modal: Modal | None = None
    if c.modal_type == "email_composer":
        result = await state.chain.generate(request, json_mode=True, first=flags.active_model)
        timer.lap("generate")
        draft, reason = _email_payload(result, request)
        draft = guard.draft(draft)
        timer.lap("tool")
        modal = Modal(type="email_composer", payload=draft)
        text = f"I drafted an email to {draft.get('to') or 'the lead'}: \"{draft.get('subject', '')}\"."
    else:
        result = await state.chain.generate(request, first=flags.active_model)
        timer.lap("generate")
        reason = result.degraded_reason
        text = guard.text(result.generation.text)
        if c.modal_type == "lead_insights":
            modal = Modal(type="lead_insights", payload=_insights_payload(request.lead, text))

    if reason:
        state.metrics.fallbacks.labels(reason).inc()
    citations = _citations(p)
    record_safety(state, p.report)
    return RouterResponse(
        request_id=caller.request_id,
        intent=c.intent,
        provider=result.generation.provider,
        model=result.generation.model,
        answer=text,
        modal=modal,
        citations=citations,
        fallback=_fallback(reason, result.failures),
        intent_detail=IntentInfo(confidence=c.confidence, reasons=list(c.reasons)),
        suggestions=_suggestions(c, request.lead) if flags.organic else [],
        latency_ms=timer.total(),
        cache=cache,
        safety=Safety(flags=list(p.report.flags)),
    ), result.trace


def record_safety(state: State, report: SafetyReport) -> None:
    for flag in report.flags:
        state.metrics.safety_flags.labels(flag).inc()


def _response(caller: Caller, p: Plan, flags: Flags, timer: Timer, hit: CachedAnswer) -> RouterResponse:
    """A cache hit, answered as the model answered it (never a draft: those are not cached)."""
    c, request = p.classification, p.request
    modal = Modal(type="lead_insights", payload=_insights_payload(request.lead, hit.answer)) \
        if c.modal_type == "lead_insights" else None
    return RouterResponse(
        request_id=caller.request_id, intent=c.intent, provider=hit.provider,
        model=hit.model, answer=hit.answer, modal=modal, citations=_citations(p),
        fallback=Fallback(used=False), intent_detail=IntentInfo(confidence=c.confidence, reasons=list(c.reasons)),
        suggestions=_suggestions(c, request.lead) if flags.organic else [], latency_ms=timer.total(), cache="hit",
        safety=Safety(flags=list(p.report.flags)),
    )


def _fallback(reason: str | None, failures: list[LinkFailure]) -> Fallback:
    return Fallback(used=reason is not None, reason=reason, failures=[f"{f.provider}:{f.reason}" for f in failures])


def _email_payload(result: ChainResult, request: GenerationRequest) -> tuple[dict[str, Any], str | None]:
    """Validate the model's JSON, repair it, or fall back to the deterministic draft."""
    if result.generation.provider == "local":
        return make_email_json_fallback(request.lead, request.query), "provider_unavailable"
    draft, outcome = parse_email(result.generation.text)
    if draft is None:
        log.warning("email_json_fallback", reason=outcome, model_provider=result.generation.provider)
        return make_email_json_fallback(request.lead, request.query), outcome
    payload = draft.model_dump()
    # A repaired draft is still the model's: the answer is not degraded, so no fallback reason.
    return payload, result.degraded_reason


def _insights_payload(lead: dict[str, Any], summary: str) -> dict[str, Any]:
    return {
        "leadId": lead.get("id"),
        "leadScore": lead.get("leadScore"),
        "aiInsights": lead.get("aiInsights") or [],
        "summary": summary,
    }


# --- streaming -----------------------------------------------------------------------------------

def _sse(event: str, data: Any) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


async def answer_stream(
    state: State, caller: Caller, query: str, context: dict[str, Any], flags: Flags,
    on_trace: Callable[[Trace], None], *, use_cache: bool = True,
) -> tuple[AsyncIterator[bytes], dict[str, str], Classification, CacheOutcome, SafetyReport]:
    """Admit, plan and look up the cache now (so a 429 is a real 429), then stream: meta, delta...,
    done | error. A cache hit is streamed too: meta, one delta, done.

    Every delta has passed the output checks (app/safety/guard.py `TextFilter`); when the answer
    leaked the prompt the stream stops showing text and `done.answer` is the refusal, which
    replaces what was shown. ``on_trace`` learns what the chain did (who answered, hedges, tokens)
    once the stream ends, for the request's log line."""
    timer = Timer()
    rate_headers = await admit(state, caller)
    timer.lap("rate_limit")
    p = plan(state, query, context, flags, timer)
    c, request = p.classification, p.request
    key, outcome, hit = await cache_lookup(state, caller, p, flags, _recipe(caller, query, context, flags),
                                           use_cache=use_cache)
    timer.lap("cache")

    async def events() -> AsyncIterator[bytes]:
        yield _sse("meta", {"request_id": caller.request_id, "intent": c.intent, "modal_type": c.modal_type})
        if hit is not None or c.intent == "modal":  # a modal's payload is one JSON document: nothing to stream
            if hit is not None:
                response, trace = _response(caller, p, flags, timer, hit), _hit_trace(hit)
            else:
                response, trace = await respond(state, caller, p, flags, timer, cache=outcome)
                await cache_store(state, key if p.cacheable else None, trace, response.answer,
                                  degraded=response.fallback.used)
            on_trace(trace)
            yield _sse("delta", {"text": response.answer})
            yield _sse("done", response.model_dump(mode="json") if c.intent == "modal" else _done(response))
            return
        trace = Trace()
        provider, parts = "local", []
        shown = p.guard.text_filter()
        try:
            async for link_name, chunk in state.chain.stream(request, trace=trace, first=flags.active_model):
                provider = link_name
                if text := shown.feed(chunk):
                    parts.append(text)
                    yield _sse("delta", {"text": text})
        except ProviderError as exc:
            # After the first token we cannot fail over: say so explicitly, never a silent truncated 200.
            on_trace(trace)
            record_safety(state, p.report)
            log.warning("stream_interrupted", model_provider=exc.provider, reason=exc.reason, error=exc.message)
            yield _sse("error", {"code": "provider_stream_interrupted", "provider": exc.provider,
                                 "reason": exc.reason, "request_id": caller.request_id})
            return
        if rest := shown.finish():
            parts.append(rest)
            yield _sse("delta", {"text": rest})
        timer.lap("generate")
        failures = trace.failures
        reason = trace.degraded_reason
        if reason:
            state.metrics.fallbacks.labels(reason).inc()
        on_trace(trace)
        citations = _citations(p)
        record_safety(state, p.report)
        text = REFUSAL if shown.leaked else "".join(parts)
        await cache_store(state, key if p.cacheable else None, trace, text,
                          degraded=reason is not None or provider == "local")
        yield _sse("done", {
            "request_id": caller.request_id, "intent": c.intent, "provider": provider,
            "answer": text, "citations": [x.model_dump() for x in citations],
            "fallback": _fallback(reason, failures).model_dump(),
            "suggestions": _suggestions(c, request.lead) if flags.organic else [],
            "latency_ms": timer.total(), "cache": outcome, "safety": {"flags": list(p.report.flags)},
        })

    return events(), rate_headers, c, outcome, p.report


def _done(r: RouterResponse) -> dict[str, Any]:
    """The stream's done event, from a whole answer (a cache hit)."""
    return r.model_dump(mode="json", include={"request_id", "intent", "provider", "answer", "citations", "fallback",
                                              "suggestions", "latency_ms", "cache", "safety"})
