"""One request, top to bottom: admit -> plan (read the CRM context, classify, retrieve) -> cache
lookup -> generate -> tool -> output checks -> cache store, as ONE function, `answer`, for every
request: JSON, stream, modal, cache hit and the warm-up's refresh. It yields typed events
(app/domain.py: Meta, Delta..., Done or Failed); JSON folds them into the response (`fold`),
app/api/sse.py encodes them as server-sent events.

Each stage is a small named function over plain data; the endpoints only parse HTTP, call
`answer` and encode what it yields. Traced, each stage is a span (app/observability/tracing.py)
with its outcome as attributes, never open across a `yield` of `answer`: the generate stage's
span is current only while the chain works (`tracing.stage_over`), so it ends, after its
attempts, even when the client goes away mid-answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from typing import Any

from app.budget import NANO_PER_USD, Refusal, Tab
from app.cache import CachedAnswer, CacheKey, Recipe, answer_key
from app.config.runtime_flags import Flags
from app.crm import CrmRecord
from app.domain import (
    BudgetExhausted,
    Caller,
    CallUsage,
    Citation,
    Delta,
    Done,
    Event,
    Failed,
    Fallback,
    IntentInfo,
    Meta,
    Modal,
    RateLimitExceeded,
    RouterResponse,
    Safety,
    Saved,
    UsageInfo,
)
from app.drafts.email import make_email_json_fallback, parse_email
from app.intent.classifier import Classification, classify, lead_has_insights
from app.intent.normalise import Normalised, read
from app.observability import tracing
from app.observability.logging import get_logger
from app.providers import prompts
from app.providers.base import GenerationRequest, Passage, ProviderError
from app.providers.clock import Deadline
from app.providers.links import LinkFailure, Trace
from app.resilience.ratelimit import rate_limit_headers, retry_after_header
from app.retrieval.retriever import retrieve
from app.safety import REFUSAL, AnswerGuard, SafetyReport, injected
from app.state import State
from app.vocabulary import CacheStatus

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

    def elapsed_ms(self) -> float:
        return round((time.perf_counter() - self.started) * 1000, 3)

    def total(self) -> dict[str, float]:
        return {"total": self.elapsed_ms(), **self.stages}


# --- stage 1: rate limit -------------------------------------------------------------------------

async def admit(state: State, caller: Caller) -> dict[str, str]:
    """Take a token for this caller or raise RateLimitExceeded; returns the rate-limit headers."""
    started = time.perf_counter()
    try:
        decision = await state.limiter.check(caller.user_key, caller.org_key)
    except Exception as exc:  # Redis down or slow: the limiter must not take the service down with it
        return _limiter_failed(state, exc)
    finally:
        state.limiter_metrics.latency.observe(time.perf_counter() - started)
    if state.limiter_health.degraded or state.limiter_health.last_ok_at is None:
        state.limiter_metrics.up.set(1)
    state.limiter_health.last_ok_at = time.monotonic()
    outcome = "allowed" if decision.allowed else "refused"
    state.metrics.limiter_decisions.labels(outcome, decision.bucket or "none").inc()
    if tracing.on():  # off: one check, no attribute dicts built
        tracing.annotate(**{"ivy.rate_limit": outcome, "ivy.bucket": decision.bucket})
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
    if tracing.on():
        tracing.annotate(**{"ivy.rate_limit": "failed_open" if fail_open else "failed_closed"})
    (state.limiter_metrics.failed_open if fail_open else state.limiter_metrics.failed_closed).inc()
    state.limiter_metrics.up.set(0)
    if health.warnings.ready(now):  # one line per 10 s in a storm, with the count
        log.warning("rate_limiter_unavailable", backend=state.limiter.backend, fail_open=fail_open,
                    error=health.last_error, failures_so_far=health.failures)
    if fail_open:
        return {}
    raise RateLimitExceeded("rate limiter unavailable; failing closed", bucket="unavailable", retry_after=1,
                            fields={})


# --- stages 2-5 ----------------------------------------------------------------------------------

def _citations(p: Plan) -> list[Citation]:
    """Each passage's source and a snippet, links held to the same rule as the answer's."""
    guard = p.guard
    return [Citation(source=x.source, snippet=guard.knowledge_snippet(x.text[:300]) if x.source.startswith("kb/")
                     else guard.snippet(x.text[:300])) for x in p.passages]


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


@dataclass(frozen=True, slots=True)
class Plan:
    """What the question is, what the model will be asked (read from the CRM context once), and
    the checks its answer passes."""

    c: Classification
    passages: list[Passage]
    request: GenerationRequest
    question: Normalised  # the query normalised once: the classifier and the retriever
    record: CrmRecord
    report: SafetyReport
    guard: AnswerGuard

    @property
    def cacheable(self) -> bool:
        """Never an answer that outside text or the query tried to steer, or that the checks changed."""
        return not self.report.steered and "guard:prompt_injection" not in self.c.reasons


def plan(state: State, query: str, context: dict[str, Any], flags: Flags, timer: Timer) -> Plan:
    record = CrmRecord.read(context)
    report = SafetyReport(secrets_masked=record.secrets_masked)
    if record.secrets_masked:
        report.flag("secret_masked")
    if injected(text for _, text in record.outside):
        report.flag("untrusted_instructions")
    with tracing.stage("classify"):
        question = read(query)
        c = classify(query, record.context, modal_heuristics=flags.modal_heuristics,
                     modal_min_confidence=state.settings.ivy_modal_min_confidence, normalised=question)
        if tracing.on():
            tracing.annotate(**{"ivy.intent": c.intent, "ivy.confidence": c.confidence, "ivy.modal": c.modal_type})
    timer.lap("classify")
    with tracing.stage("retrieve"):
        passages = retrieve(query, record.context, state.kb, tokens=question.tokens) if c.intent == "rag" else []
        if tracing.on():
            tracing.annotate(**{"ivy.passages": len(passages)})
    timer.lap("retrieve")
    request = build_generation_request(state.canary, query, record.lead, c, passages,
                                       state.settings.max_output_tokens(c.intent))
    guard = AnswerGuard(state.output_policy, addresses=record.addresses, primary=record.primary,
                        hosts=record.hosts, correspondents=record.correspondents, report=report)
    return Plan(c, passages, request, question, record, report, guard)


# --- the one answer function -----------------------------------------------------------------------

async def answer(state: State, caller: Caller, query: str, context: dict[str, Any], flags: Flags, *,
                 stream: bool = False, use_cache: bool = True, warmup_key: str | None = None
                 ) -> AsyncIterator[Event]:
    """Every answer: Meta, Delta..., then Done (or Failed). ``stream`` yields a plain answer's
    text as it comes (after its first piece it can no longer fail over, so an error is a
    Failed); otherwise the answer is generated whole, one Delta. Every piece has passed the output
    checks (app/safety/guard.py): when the answer leaked the prompt nothing more is shown and
    `done.answer` is the refusal. ``warmup_key`` makes it the warm-up's refresh of that entry: no
    rate limit, no lookup, nothing yielded unless the request still builds exactly that key.

    RateLimitExceeded and BudgetExhausted are raised before Meta, so a streamed 429 is still a real 429."""
    timer = Timer()
    deadline = state.chain.deadline(flags.active_model)
    warmup = warmup_key is not None
    if warmup:
        rate_headers = {}
    else:
        with tracing.stage("rate_limit"):
            rate_headers = await admit(state, caller)
    timer.lap("rate_limit")
    p = plan(state, query, context, flags, timer)
    cache: CacheStatus = "bypass"
    hit: CachedAnswer | None = None
    tab = open_tab(state, None if warmup else caller, p)
    if warmup:
        key = cache_key(state, caller, p, flags)
        if key is None or key.digest != warmup_key:  # re-ask exactly the keyed prompt, or nothing
            return
        refusal = None  # the warm-up's tab is billed, not budgeted: nothing to reserve
    else:
        with tracing.stage("cache"):
            (key, cache, hit), refusal = await lookup_and_reserve(
                state, tab, cache_lookup(state, caller, p, flags, _recipe(caller, query, context, flags),
                                         use_cache=use_cache))
            if tracing.on():
                tracing.annotate(**{"ivy.cache": cache})
    if hit is not None:
        tab.close()  # a hit costs nothing: its first call's reservation goes back
    elif refusal is not None and state.budgets.exhausted == "refuse":
        retry = int(retry_after_header(refusal.retry_after))
        raise BudgetExhausted(f"{refusal.reason.replace('_', ' ')} for this org; retry in {retry}s",
                              reason=refusal.reason, retry_after=retry, fields=rate_headers)
    timer.lap("cache")
    try:
        c = p.c
        yield Meta(caller.request_id, c.intent, c.modal_type, cache, rate_headers, timer.elapsed_ms())
        if hit is not None:
            yield Delta(hit.answer)
            hit_trace = Trace(provider=hit.provider, model=hit.model)
            record_safety(state, p.report)
            response = respond(caller, p, flags, timer, hit.answer, cache="hit", trace=hit_trace,
                               saved=saved(state, hit))
            yield Done(response, hit_trace, safety=p.report)
            return
        trace = Trace()
        piecewise = stream and c.intent != "modal"  # a modal's payload is one JSON document: nothing to stream
        shown = None if c.modal_type == "email_composer" else p.guard.text_filter()  # a draft is checked whole
        parts: list[str] = []
        try:
            async with tracing.stage_over("generate", generate(state, p.request, flags, deadline, trace,
                                                               buffered=not piecewise, tab=tab),
                                          **{"ivy.streamed": piecewise}) as pieces:
                async for piece in pieces:
                    if shown is not None:
                        piece = shown.feed(piece)
                    parts.append(piece)
                    if piecewise and piece:
                        yield Delta(piece)
        except ProviderError as exc:
            # After the first piece there is no failing over: say so explicitly, never a silent truncated 200.
            log.warning("stream_interrupted", model_provider=exc.provider, reason=exc.reason, error=exc.message)
            yield Failed("provider_stream_interrupted", caller.request_id, provider=exc.provider, reason=exc.reason,
                         trace=trace)
            return
        if shown is not None and (rest := shown.finish()):
            parts.append(rest)
            if piecewise:
                yield Delta(rest)
        timer.lap("generate")
        text = REFUSAL if shown is not None and shown.leaked else "".join(parts)
        response = respond(caller, p, flags, timer, text, cache=cache, trace=trace)
        if response.fallback.reason is not None:
            state.metrics.fallbacks.labels(response.fallback.reason).inc()
        record_safety(state, p.report)
        with tracing.stage("cache_store"):
            stored = await cache_store(state, key if p.cacheable else None, trace, response)
            if tracing.on():
                tracing.annotate(**{"ivy.cache.stored": stored})
        if not piecewise:
            yield Delta(response.answer)
        yield Done(response, trace, stored, p.report)
    finally:
        tab.close()  # the request ended before the chain took its first call's reservation (the client left)


async def fold(events: AsyncIterator[Event]) -> tuple[Meta, Done]:
    """The events of a non-streamed answer, as its Meta and its Done (a JSON answer). Read to
    the end: a generator left suspended would be closed later by a task of its own."""
    meta: Meta | None = None
    done: Done | None = None
    async for event in events:
        if isinstance(event, Meta):
            meta = event
        elif isinstance(event, Done):
            done = event
        elif isinstance(event, Failed):
            raise RuntimeError(f"a whole answer failed after its first piece: {event.code}")
    if meta is None or done is None:
        raise RuntimeError("the answer ended without Meta and Done")
    return meta, done




# --- the answer cache (app/cache/): lookup before generating, store after --------------------------

def cache_key(state: State, caller: Caller, p: Plan, flags: Flags) -> CacheKey | None:
    """None when this request is never cached: cache off, only the offline provider, an email draft,
    or a request whose outside text (or query) tries to instruct the model."""
    if not state.cache.enabled or not state.chain.links or p.request.modal_type == "email_composer" \
            or not p.cacheable:
        return None
    return answer_key(org=caller.org_key, request=p.request, kb_version=state.kb.version,
                      provider=flags.active_model, model=state.settings.model_of(flags.active_model),
                      modal_heuristics=flags.modal_heuristics)


Looked = tuple[CacheKey | None, CacheStatus, CachedAnswer | None]


async def cache_lookup(state: State, caller: Caller, p: Plan, flags: Flags, recipe: Recipe,
                       *, use_cache: bool) -> Looked:
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


async def cache_store(state: State, key: CacheKey | None, trace: Trace, response: RouterResponse) -> bool:
    """Store a real model's answer: never the offline provider's, a degraded one or a draft (key None)."""
    if key is None or response.fallback.used or trace.provider == "local" or trace.degraded_reason is not None:
        return False
    return await state.cache.store(key, CachedAnswer(
        provider=trace.provider, model=state.settings.model_of(trace.provider), answer=response.answer,
        input_tokens=trace.input_tokens or 0, output_tokens=trace.output_tokens or 0, stored_at=time.time()))


def _recipe(caller: Caller, query: str, context: dict[str, Any], flags: Flags) -> Recipe:
    """What the warm-up needs to ask this question again."""
    return {"org": caller.org_key, "query": query, "context": context,
            "flags": [flags.modal_heuristics, flags.organic, flags.active_model]}


async def refresh_cached(state: State, recipe: Recipe) -> bool:
    """Answer a recorded question again and store it (the warm-up; off the request path)."""
    modal_heuristics, organic, active_model = recipe["flags"]
    flags = Flags(modal_heuristics=modal_heuristics, organic=organic, active_model=active_model)
    caller = Caller("cache-warmup", "ivy:cache-warmup", recipe["org"], None, recipe["org"])
    async for event in answer(state, caller, recipe["query"], recipe["context"], flags,
                              warmup_key=str(recipe.get("key") or "-")):
        if isinstance(event, Done):
            return event.stored
    return False


async def warm_cache(state: State) -> None:
    """The warm-up's background task (app/cache/warmup.py), from start."""
    await state.warmer.run(functools.partial(refresh_cached, state))


# --- generate, the tool, the response ------------------------------------------------------------

def generate(state: State, request: GenerationRequest, flags: Flags, deadline: Deadline, trace: Trace, *,
             buffered: bool, tab: Tab | None = None) -> AsyncIterator[str]:
    """The chain's answer (app/providers/chain.py): the draft as JSON text for the email composer."""
    return state.chain.stream(request, deadline=deadline, trace=trace, first=flags.active_model,
                              json_mode=request.modal_type == "email_composer", buffered=buffered, tab=tab)


# --- cost and budgets (app/budget/) ----------------------------------------------------------------

def open_tab(state: State, caller: Caller | None, p: Plan) -> Tab:
    """The request's tab (the warm-up's, caller None, is billed but not budgeted)."""
    request = p.request
    return state.budgets.tab(caller.org_key if caller is not None else None, request.system, request.prompt,
                             request.max_output_tokens, request.intent)


async def lookup_and_reserve(state: State, tab: Tab, lookup: Coroutine[Any, Any, Looked]
                             ) -> tuple[Looked, Refusal | None]:
    """The cache lookup, and the first call's reservation asked at the same time: both are a Redis
    round trip, so the reservation adds none to a miss (a hit gives it back, off the request's
    path). A refusal is the caller's 429 (IVY_BUDGET_EXHAUSTED=refuse) or the offline answer
    (offline: every call of the tab is refused, `fallback.reason` says why)."""
    if tab.org is None:
        return await lookup, None
    reserving = asyncio.ensure_future(tab.prepay([link.provider.model for link in state.chain.links]))
    try:
        looked = await lookup
        return looked, await reserving
    except BaseException:  # the client left meanwhile: the reservation, once made, goes back
        state.budgets.write(_release_once_reserved(tab, reserving))
        raise


async def _release_once_reserved(tab: Tab, reserving: asyncio.Future[Refusal | None]) -> None:
    with contextlib.suppress(BaseException):
        await reserving
    tab.close()


def usage_of(trace: Trace, saved: Saved | None = None) -> UsageInfo:
    """What the answer's calls cost (every billed call, hedges and failovers included)."""
    bills = trace.bills
    costs = [b.cost for b in bills]
    return UsageInfo(
        input_tokens=sum(b.input_tokens for b in bills), output_tokens=sum(b.output_tokens for b in bills),
        cost_usd=None if None in costs else sum(c or 0 for c in costs) / NANO_PER_USD,
        calls=[CallUsage(provider=b.provider, model=b.model, role=b.role, input_tokens=b.input_tokens,
                         cached_input_tokens=b.cached_tokens, output_tokens=b.output_tokens, cost_usd=b.cost_usd,
                         estimated=b.estimated) for b in bills],
        saved=saved)


def saved(state: State, hit: CachedAnswer) -> Saved:
    """What a cache hit did not spend: the entry's own usage at its model's price."""
    price = state.budgets.price(hit.model)
    cost = None if price is None else price.cost(hit.input_tokens, hit.output_tokens) / NANO_PER_USD
    return Saved(input_tokens=hit.input_tokens, output_tokens=hit.output_tokens, cost_usd=cost)


def respond(caller: Caller, p: Plan, flags: Flags, timer: Timer, text: str, *, cache: CacheStatus, trace: Trace,
            saved: Saved | None = None) -> RouterResponse:
    """The one builder of an answer, from a generation or a cache ``hit`` (never a draft: those
    are not cached): a JSON response and a stream's `done` are this same object."""
    c, request = p.c, p.request
    reason = trace.degraded_reason
    modal: Modal | None = None
    if c.modal_type == "email_composer":
        with tracing.stage("tool", **{"ivy.tool": "email_json"}):
            draft, reason = email_tool(text, request, trace)
            draft = p.guard.draft(draft)
            if tracing.on():
                tracing.annotate(**{"ivy.tool.fallback": reason})
        timer.lap("tool")
        modal = Modal(type="email_composer", payload=draft)
        text = f"I drafted an email to {draft.get('to') or 'the lead'}: \"{draft.get('subject', '')}\"."
    elif c.modal_type == "lead_insights":
        modal = Modal(type="lead_insights", payload=_insights_payload(request.lead, text))
    return RouterResponse(
        request_id=caller.request_id,
        intent=c.intent,
        provider=trace.provider,
        model=trace.model,
        answer=text,
        modal=modal,
        citations=_citations(p),
        fallback=_fallback(reason, trace.failures),
        intent_detail=IntentInfo(confidence=c.confidence, reasons=list(c.reasons)),
        suggestions=_suggestions(c, request.lead) if flags.organic else [],
        latency_ms=timer.total(),
        cache=cache,
        safety=Safety(flags=list(p.report.flags)),
        usage=usage_of(trace, saved),
    )


def record_safety(state: State, report: SafetyReport) -> None:
    if tracing.on():
        tracing.annotate(**{"ivy.safety.flags": len(report.flags)})  # the request's span: the whole answer's checks
    for flag in report.flags:
        state.metrics.safety_flags.labels(flag).inc()


def _fallback(reason: str | None, failures: list[LinkFailure]) -> Fallback:
    return Fallback(used=reason is not None, reason=reason, failures=[f"{f.provider}:{f.reason}" for f in failures])


def email_tool(text: str, request: GenerationRequest, trace: Trace) -> tuple[dict[str, Any], str | None]:
    """Validate the model's JSON, repair it, or fall back to the deterministic draft."""
    provider = trace.provider
    if provider == "local":
        return make_email_json_fallback(request.lead, request.query), "provider_unavailable"
    draft, check = parse_email(text)
    if draft is None:
        log.warning("email_json_fallback", reason=check, model_provider=provider)
        return make_email_json_fallback(request.lead, request.query), check
    payload = draft.model_dump()
    # A repaired draft is still the model's: the answer is not degraded, so no fallback reason.
    return payload, trace.degraded_reason


def _insights_payload(lead: dict[str, Any], summary: str) -> dict[str, Any]:
    return {
        "leadId": lead.get("id"),
        "leadScore": lead.get("leadScore"),
        "aiInsights": lead.get("aiInsights") or [],
        "summary": summary,
    }
