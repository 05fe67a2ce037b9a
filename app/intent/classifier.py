"""Heuristic intent classification: rules over normalised text plus context signals.

Explainable by construction: every decision carries the names of the rules that fired, and
the v2 response shows them (`intent_detail.reasons`).

Order of precedence, and why:

1. An instruction to produce a message (draft / write / send / reply ...) opens the email
   composer. It wins over everything else because the rep asked for an artefact; facts the
   email needs (a KB answer, the lead's data) are its content, not its intent.
2. A look at this lead's score or AI insights opens the insights modal, but only when the lead
   carries them; otherwise it is a rag answer that says there is nothing yet (the pipeline keys
   on the `lead:no_score_or_insights` reason).
3. Product facts (pricing, plans, policies, integrations, our playbook) are rag over the KB.
4. Questions about Ivy itself, greetings and generic sales advice are conversational.
5. Anything about the lead, its notes, activity or emails, with a lead in context, is rag.

`IVY_MODAL_HEURISTICS=false` keeps the same detection but never answers `modal`: drafting
requests become conversational, insight requests become rag (they need the lead's data).

The words the rules name are in `lexicon.py`; normalisation is in `normalise.py`.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from app.intent.guards import cannot_act, context_names, injection, is_feedback, strip_negated
from app.intent.lexicon import (
    AI_OPINION,
    ANALYZE,
    AUX,
    COMPOSE_VERBS,
    EMAIL_NOUNS,
    FEATURE_MARKERS,
    FILLERS,
    GENERIC_LEAD_WORDS,
    GENERIC_OBJECT,
    INSIGHT_NOUNS,
    INSIGHT_VIEW,
    KB_TERMS,
    LEAD_FACTS,
    LEAD_NOUNS,
    LOOSE_COMPOSE_VERBS,
    METHOD_TERMS,
    NON_EMAIL_OBJECT,
    OPEN_VERBS,
    OWNED,
    PRONOUNS,
    QUESTION_START,
    RATE_VERBS,
    RECIPIENTS,
    REPLY_VERBS,
    REQUEST_PREFIX,
    SEND_VERBS,
    SMALL_TALK,
    SUMMARY,
    TEMPERATURE,
    TERSE_MODIFIERS,
    TERSE_TAIL,
    YOU,
)
from app.intent.normalise import Normalised, normalise, read
from app.vocabulary import Intent, ModalType

# The default of IVY_MODAL_MIN_CONFIDENCE: a modal opens only at this confidence or above.
MODAL_MIN_CONFIDENCE = 0.8
# Taken off a modal's confidence when the query also thanks Ivy or negates a drafting request.
MIXED_SIGNAL_PENALTY = 0.1

_PRODUCT_QUESTION = re.compile(
    r"\b(?:do|does|can|will|is|are) (?:we|ivy|our product|our app|the product|ivy crm|you guys) "
    r"(?:support|offer|have|integrate|work|connect|include|sync|allow|provide|handle|track|charge)"
)

_ADVICE_OPENERS = (
    re.compile(r"^(?:how|what) (?:do|should|can|would) (?:i|we|you|reps?) "),
    re.compile(r"^how \w+ (?:should|do|does|can) "),
    re.compile(r"^(?:tips|advice|best|any tips|any advice|whats a good|whats the best|what makes|is it ok)\b"),
    re.compile(r"^(?:should i|do i|is it better)\b"),
)
# Unions and sets the rules test against, made once (not per request or per clause).
_COMPOSE_OR_SEND = COMPOSE_VERBS | SEND_VERBS
_EMAIL_NOUNS_BUT_DRAFT = EMAIL_NOUNS - {"draft"}
_LEAD_REFERENCES = PRONOUNS | LEAD_NOUNS
_REPLY_TAIL = frozenset({"to", "with", "on", "for", "all"})
_SCORE_QUESTION = frozenset({"why", "explain", "is", "a", "an"})
_CONVERSATION_NOUNS = frozenset({"emails", "email", "thread", "call", "notes", "meeting"})
_ABOUT_IVY = re.compile(
    r"^(?:what can you (?:do|help)|how can you help|what (?:are|do) you (?:do|able|capable|good)"
    r"|who (?:made|built|created|trained|are) you|are you (?:a|an|human|real|ai|chatgpt|gpt|bot|there|ok)"
    r"|(?:do|can|will) you (?:speak|remember|know|understand|learn|store|keep|see|access|read|talk)"
    r"|what are you|how do you work|whats your name|what model)"
)


# --- the decision ----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Classification:
    """The decision and its explanation: `reasons` names every rule that fired, in order
    (e.g. `insights:score`, `lead:no_score_or_insights`); `signals` are the context facts used."""

    intent: Intent
    confidence: float
    reasons: tuple[str, ...]
    modal_type: ModalType | None = None
    signals: dict[str, bool] = field(default_factory=dict)


def _lead(context: dict[str, Any]) -> dict[str, Any]:
    lead = context.get("lead")
    return lead if isinstance(lead, dict) else {}


def lead_has_insights(lead: dict[str, Any]) -> bool:
    return lead.get("leadScore") not in (None, "") or bool(lead.get("aiInsights"))


@lru_cache(maxsize=4096)
def _name_words(value: str) -> frozenset[str]:
    return frozenset(w for w in normalise(value) if len(w) > 2 and w not in GENERIC_LEAD_WORDS)


# A name or company longer than this is not one: the cache above must not hold 64 KiB keys.
MAX_NAME_CHARS = 200


def _lead_names(lead: dict[str, Any]) -> frozenset[str]:
    """The lead's own words (first/last name, company), so "who is dana" reads as being about the lead."""
    words: frozenset[str] = frozenset()
    for key in ("name", "firstName", "lastName", "company"):
        value = lead.get(key)
        if isinstance(value, str):
            words |= _name_words(value[:MAX_NAME_CHARS])
    return words


def _strip_fillers(clause: list[str]) -> list[str]:
    i = 0
    while i < len(clause) - 1 and clause[i] in FILLERS:
        i += 1
    return clause[i:]


def _request_body(clause: list[str]) -> list[str] | None:
    """The imperative part of a clause that asks Ivy to do something, or None for a question.

    "can you write ..." and "help me draft ..." are requests; "how do I write ..." and
    "should I email them" are questions about it.
    """
    words = _strip_fillers(clause)
    if not words:
        return None
    first = words[0]
    if first in AUX:
        # "can you ...", "could you please ...": a polite request; "can I get a ..." too.
        polite = len(words) > 1 and words[1] in YOU
        asks_for = len(words) > 2 and words[1] in ("i", "we") and words[2] in ("get", "have")
        if not (polite or asks_for):
            return None
        words = words[2:]
    elif first in QUESTION_START:
        return None
    i = 0
    while i < len(words) - 1 and words[i] in REQUEST_PREFIX and words[i] not in _COMPOSE_OR_SEND:
        i += 1
    return words[i:]


def _object_is_email(after: list[str], loose: bool) -> bool:
    """Does the verb's object read as a message (within a short window)?"""
    for word in after[:7]:
        if word in EMAIL_NOUNS:
            return True
        if word in NON_EMAIL_OBJECT:
            return False
        if loose and word in GENERIC_OBJECT:
            return True
    return False


def _sent_to_lead(after: list[str], recipients: frozenset[str]) -> bool:
    """ "send over the case study to marcus": whatever is sent, it goes to the lead by email."""
    return any(w == "to" and nxt != "back" and nxt in recipients for w, nxt in itertools.pairwise(after))


def _email_rule(clause: list[str], names: frozenset[str]) -> str | None:
    body = _request_body(clause)
    if body:
        verb, after = body[0], body[1:]
        recipients = RECIPIENTS | names if names else RECIPIENTS
        if verb in COMPOSE_VERBS and _object_is_email(after, loose=verb in LOOSE_COMPOSE_VERBS):
            return "email:compose_verb"
        if verb in LOOSE_COMPOSE_VERBS and (not after or after[0] in recipients or after[0] in ("to", "up")):
            return "email:compose_verb"
        if verb in SEND_VERBS and after and (
            after[0] in recipients or _object_is_email(after, loose=False) or _sent_to_lead(after, recipients)
        ):
            return "email:send_verb"
        if verb in REPLY_VERBS and (not after or after[0] in recipients or after[0] in _REPLY_TAIL):
            return "email:reply_verb"
        if verb in OPEN_VERBS and "composer" in after[:4]:
            return "email:open_composer"
    # Terse noun phrase: "quick email to confirm the meeting", "followup email to dana", "draft email".
    words = _strip_fillers(clause)
    if words and words[0] not in QUESTION_START and words[0] not in AUX:
        i = 0
        while i < len(words) and words[i] in TERSE_MODIFIERS and words[i] not in _EMAIL_NOUNS_BUT_DRAFT:
            i += 1
        j = i
        while j < len(words) and words[j] in EMAIL_NOUNS:
            j += 1
        head_ok = j > i or (i > 0 and words[i - 1] in EMAIL_NOUNS)
        if head_ok and (j == len(words) or words[j] in TERSE_TAIL or words[j] in names):
            return "email:terse"
    return None


def _joined(words: list[str]) -> str:
    return " ".join(words)


def classify(query: str, context: dict[str, Any], *, modal_heuristics: bool = True,
             modal_min_confidence: float = MODAL_MIN_CONFIDENCE, normalised: Normalised | None = None
             ) -> Classification:
    """The intent of `query` in `context`. A modal opens only at `modal_min_confidence` or above
    (IVY_MODAL_MIN_CONFIDENCE); below it the request is answered as rag or conversational.
    ``normalised``: the query already normalised (app/intent/normalise.py `read`), else done here."""
    raw_clauses = [list(c) for c in (normalised or read(query)).clauses]
    feedback = [c for c in raw_clauses if is_feedback(c)]
    stripped = [strip_negated(c) for c in raw_clauses]
    negated = [n for n in stripped if n is not None]
    clauses = [c for c, n in zip(raw_clauses, stripped, strict=True) if n is None and c not in feedback]
    words = [w for c in clauses + negated for w in c]
    word_set = set(words)
    lead = _lead(context)
    has_lead = bool(lead)
    has_insights = lead_has_insights(lead)
    has_activity = bool(context.get("activities") or context.get("emails") or context.get("notes"))
    names = _lead_names(lead) if has_lead else frozenset()
    lead_ref = bool(word_set & _LEAD_REFERENCES or word_set & names) or "this one" in _joined(words)
    signals = {
        "has_lead": has_lead, "lead_has_insights": has_insights, "has_activity": has_activity,
        "modal_heuristics": modal_heuristics, "mentions_lead": lead_ref,
    }
    reasons: list[str] = []

    def result(intent: Intent, confidence: float, modal: ModalType | None = None) -> Classification:
        return Classification(intent, confidence, tuple(reasons), modal, signals)

    def modal(confidence: float, modal_type: ModalType, otherwise: Intent) -> Classification:
        if feedback or negated:  # mixed signals: "thanks! now draft one for marcus" is less certain
            confidence = round(confidence - MIXED_SIGNAL_PENALTY, 2)
            reasons.append("confidence:mixed_signals")
        if not modal_heuristics:
            reasons.append("flag:modal_heuristics_off")
            return result(otherwise, 0.8)
        if confidence < modal_min_confidence:
            reasons.append(f"gate:modal_confidence_{confidence:.2f}_below_{modal_min_confidence:.2f}")
            return result(otherwise, confidence)
        return result("modal", confidence, modal_type)

    # 0. What the query is not: an injection, feedback, a negated request, or nothing at all.
    if injection(query, {w for c in raw_clauses for w in c}):
        reasons.append("guard:prompt_injection")
        return result("conversational", 0.9)
    if raw_clauses and not clauses and feedback:
        reasons.append("chat:feedback")
        return result("conversational", 0.9)
    if negated:
        reasons.append("guard:negated_request")

    # 1. An instruction to produce a message.
    bodies = [_request_body(c) for c in clauses]
    cannot = any(cannot_act(b, names) for b in bodies)
    email_rule = next((r for c, b in zip(clauses, bodies, strict=True)
                       if not cannot_act(b, names) and (r := _email_rule(c, names))), None)
    signals["email_request"] = email_rule is not None
    if email_rule:
        reasons.append(email_rule)
        single_word = email_rule == "email:terse" and len(words) == 1
        return modal(0.7 if single_word else 0.92 if email_rule != "email:terse" else 0.85, "email_composer",
                     "conversational")

    # 2. This lead's score or insights.
    first_clause = _joined(_strip_fillers(clauses[0])) if clauses else ""
    advice_question = any(p.search(first_clause) for p in _ADVICE_OPENERS)
    text = _joined(words)
    insight_hits = word_set & INSIGHT_NOUNS
    score = lead.get("leadScore")
    if score not in (None, "") and str(score) in word_set and word_set & _SCORE_QUESTION:
        insight_hits = insight_hits | {"score_value"}
    body = bodies[0] if bodies else None
    if body and body[0] in RATE_VERBS and lead_ref:
        insight_hits = insight_hits | {"rate"}
    if "ai" in word_set and word_set & AI_OPINION and not advice_question:
        insight_hits = insight_hits | {"ai_opinion"}
    analyze = bool(word_set & ANALYZE) and not word_set & _CONVERSATION_NOUNS
    temperature = bool(word_set & TEMPERATURE) and lead_ref and not word_set & EMAIL_NOUNS
    feature_question = bool(insight_hits) and bool(word_set & FEATURE_MARKERS) and not (
        word_set & PRONOUNS or word_set & names or "this" in word_set
    )
    content = [w for w in words if w not in FILLERS and w not in ("the", "a", "an", "me", "for", "my")]
    wants_insights = not feature_question and not (advice_question and not lead_ref) and (
        analyze
        or temperature
        or (bool(insight_hits) and (bool(word_set & INSIGHT_VIEW) or len(content) <= 3 or lead_ref))
    )
    signals["insights_request"] = wants_insights
    if wants_insights:
        tags = sorted(insight_hits | ({"analyze"} if analyze else set()) | ({"temperature"} if temperature else set()))
        reasons.append("insights:" + ",".join(tags))
        if has_insights:
            weak = (insight_hits and insight_hits <= {"signals", "signal"}) or tags == ["temperature"]
            return modal(0.85 if weak else 0.9,
                         "lead_insights", "rag")
        if has_lead:
            reasons.append("lead:no_score_or_insights")
            return result("rag", 0.8)
        reasons.append("lead:none_in_context")
        return result("conversational", 0.7)

    # 2b. Something Ivy cannot do from the CRM panel: say so, never open a panel for it.
    if cannot:
        reasons.append("chat:cannot_act")
        return result("conversational", 0.8)

    # 3. Product facts and our own playbook: the knowledge base.
    kb_words = set(words)
    for i, w in enumerate(words[:-1]):
        # "a price objection" is sales technique, not a question about our prices.
        if w in ("price", "pricing", "budget", "timing", "competitor") and words[i + 1] in ("objection", "objections"):
            kb_words.discard(w)
    kb_hits = kb_words & KB_TERMS
    if feature_question:
        kb_hits |= insight_hits
    method_hits = word_set & METHOD_TERMS
    owned = bool(word_set & OWNED) or bool(_PRODUCT_QUESTION.search(text))
    generic = "ingeneral" in word_set or "generally" in word_set
    if kb_hits and not (generic and not owned):
        reasons.append("kb:" + ",".join(sorted(kb_hits)[:3]))
        return result("rag", 0.85 if len(kb_hits) > 1 or owned else 0.8)
    if method_hits and owned and not generic:
        reasons.append("kb:playbook:" + ",".join(sorted(method_hits)[:2]))
        return result("rag", 0.8)
    if _PRODUCT_QUESTION.search(text):
        reasons.append("kb:product_question")
        return result("rag", 0.7)

    # 4. Ivy itself, small talk, generic advice.
    if _ABOUT_IVY.search(first_clause) or _ABOUT_IVY.search(text):
        reasons.append("chat:about_ivy")
        return result("conversational", 0.85)
    if word_set <= SMALL_TALK:
        reasons.append("chat:small_talk")
        return result("conversational", 0.95)
    has_context = has_lead or has_activity
    summary = bool(word_set & SUMMARY)
    # "what objections has she raised" and "recap the discovery call" are about the lead.
    if method_hits and not ((lead_ref or summary) and has_context):
        reasons.append("advice:" + ",".join(sorted(method_hits)[:2]))
        return result("conversational", 0.75)

    # 5. The lead's record, notes, activity and emails.
    fact_hits = word_set & LEAD_FACTS
    advice = advice_question or generic  # the same openers over the same first clause
    if has_context and (lead_ref or ((fact_hits or summary) and not advice)):
        tag = sorted(fact_hits)[:3] or (["summary"] if summary else ["reference"])
        reasons.append("lead_data:" + ",".join(tag))
        return result("rag", 0.8 if fact_hits or lead_ref else 0.7)
    question = bool(clauses) and (clauses[0][0] in QUESTION_START or query.rstrip().endswith("?"))
    if has_context and question and not advice and (named := context_names(word_set, context)):
        # "is Raj the CFO?": a name the lead's notes use makes the question about the lead.
        reasons.append("lead_data:context:" + ",".join(sorted(named)[:2]))
        return result("rag", 0.75)
    if advice:
        reasons.append("advice:generic")
        return result("conversational", 0.75)
    if fact_hits and not has_context:
        reasons.append("lead_data:no_lead_in_context")

    reasons.append("default:conversational")
    return result("conversational", 0.6)
