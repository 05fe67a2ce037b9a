"""Heuristic intent classification: rules over normalised text plus context signals.

Explainable by construction: every decision carries the names of the rules that fired.
Order of precedence: an explicit request to draft a message, then a look at the lead's
score or insights (only if the lead has them), then anything that needs data, then chat.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Literal

Intent = Literal["conversational", "rag", "modal"]
ModalType = Literal["email_composer", "lead_insights"]

_TYPOS = {
    "emial": "email", "emal": "email", "eamil": "email", "e-mail": "email", "mail": "email",
    "emails": "email", "emails?": "email", "follwup": "followup", "folowup": "followup",
    "folow": "follow", "follwo": "follow", "followup": "followup", "fup": "followup",
    "drat": "draft", "darft": "draft", "drfat": "draft", "wirte": "write", "wrte": "write",
    "writ": "write", "compse": "compose", "anaylze": "analyze", "analyse": "analyze",
    "analize": "analyze", "anlayze": "analyze", "socre": "score", "scor": "score",
    "insigths": "insights", "insight": "insights", "insghts": "insights", "budjet": "budget",
    "buget": "budget", "pricng": "pricing", "pirce": "price", "wats": "whats", "wat": "what",
    "u": "you", "ur": "your", "pls": "please", "plz": "please", "thx": "thanks", "ty": "thanks",
    "msg": "message", "repy": "reply", "respone": "response", "thier": "their", "ther": "their",
}

_WORD = re.compile(r"[a-z0-9$]+(?:['-][a-z0-9]+)*")


def normalise(text: str) -> list[str]:
    text = unicodedata.normalize("NFKC", text).lower().replace("’", "'")
    words = _WORD.findall(text)
    out: list[str] = []
    for w in words:
        w = _TYPOS.get(w, w)
        if w in ("follow-up", "follow-ups"):
            w = "followup"
        out.append(w)
    # "follow up" as two words is the noun/verb we care about.
    joined: list[str] = []
    for w in out:
        if joined and joined[-1] == "follow" and w == "up":
            joined[-1] = "followup"
        else:
            joined.append(w)
    return joined


_EMAIL_VERBS = frozenset(
    {"draft", "write", "compose", "prepare", "send", "shoot", "craft", "create", "generate", "reply",
     "respond", "redo", "rewrite", "make", "put", "whip", "drop", "fire", "ping"}
)
_EMAIL_OBJECTS = frozenset(
    {"email", "message", "note", "reply", "followup", "response", "intro", "introduction", "letter",
     "outreach", "recap", "thank-you", "line"}
)
_POLITE = (
    "please", "can", "could", "would", "will", "you", "help", "me", "i", "need", "to", "want", "let's",
    "lets", "go", "ahead", "and", "id", "i'd", "like", "ivy", "hey", "hi", "ok", "okay", "now", "quickly",
    "quick", "just", "also", "then", "so", "we", "should", "must", "gotta", "wanna",
)
_QUESTION_START = frozenset(
    {"how", "what", "whats", "what's", "when", "why", "which", "who", "is", "are", "do", "does", "did",
     "should", "any", "tips", "best", "where", "was", "were", "has", "have"}
)
_INSIGHT_WORDS = frozenset(
    {"score", "scoring", "scored", "insights", "analyze", "analysis", "breakdown", "hot", "rating",
     "rated", "signals", "qualified", "qualify", "priority", "prioritize"}
)
_INSIGHT_VIEW = frozenset({"show", "open", "see", "explain", "view", "display", "pull", "break", "give",
                           "analyze", "why", "what", "whats", "what's", "walk", "how", "tell", "check"})
_LEAD_WORDS = frozenset(
    {"budget", "stage", "title", "company", "contact", "contacted", "call", "calls", "meeting", "meetings",
     "notes", "note", "activity", "activities", "history", "lead", "lead's", "they", "their", "them",
     "he", "she", "his", "her", "deal", "timeline", "decision", "champion", "role", "phone", "industry",
     "size", "employees", "last", "said", "mentioned", "asked", "replied", "wrote", "opened", "status",
     "owner", "pipeline", "next", "steps", "pain", "points", "competitor", "competitors", "who"}
)
_KB_WORDS = frozenset(
    {"pricing", "price", "prices", "plan", "plans", "cost", "costs", "tier", "tiers", "starter", "growth",
     "enterprise", "seat", "seats", "sso", "saml", "oidc", "okta", "scim", "security", "soc", "soc2",
     "gdpr", "encryption", "residency", "refund", "refunds", "cancel", "cancellation", "invoice",
     "invoices", "billing", "payment", "integration", "integrations", "integrate", "salesforce",
     "hubspot", "slack", "zapier", "gmail", "outlook", "api", "webhook", "webhooks", "onboarding",
     "import", "migrate", "migration", "trial", "discount", "discounts", "nonprofit", "csm", "playbook",
     "meddicc", "bant", "compliance", "2fa", "retention", "support", "supports", "annual"}
)
_OUR = frozenset({"our", "we", "ivy's", "policy", "policies"})


@dataclass(frozen=True, slots=True)
class Classification:
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


def _is_request(words: list[str]) -> bool:
    """Imperative or polite request ("draft...", "can you write...") rather than a question about it."""
    i = 0
    while i < len(words) and words[i] in _POLITE and words[i] not in _EMAIL_VERBS:
        i += 1
    if i < len(words) and words[i] in _EMAIL_VERBS:
        return not (words[0] in _QUESTION_START and words[0] not in ("can", "could", "would", "will"))
    return False


def _email_request(words: list[str], word_set: set[str]) -> str | None:
    if not word_set & _EMAIL_OBJECTS and "email" not in word_set:
        return None
    first = words[0] if words else ""
    if _is_request(words):
        return "email:request_verb"
    # Terse forms: "email draft", "followup email to dana", "draft email", "reply to dana".
    if first in _EMAIL_OBJECTS | {"email"} and word_set & {"draft", "to", "for", "asking", "about"} and (
        first not in _QUESTION_START
    ):
        return "email:terse"
    if first in ("email", "followup", "reply", "message") and len(words) <= 6:
        return "email:terse"
    if first in ("i", "we") and word_set & {"need", "want", "gotta"} and word_set & _EMAIL_VERBS:
        return "email:need_to_send"
    return None


def classify(query: str, context: dict[str, Any], *, modal_heuristics: bool = True) -> Classification:
    words = normalise(query)
    word_set = set(words)
    lead = _lead(context)
    has_lead = bool(lead)
    has_insights = lead_has_insights(lead)
    has_activity = bool(context.get("activities") or context.get("emails") or context.get("notes"))
    reasons: list[str] = []
    signals = {"has_lead": has_lead, "lead_has_insights": has_insights, "modal_heuristics": modal_heuristics}

    email_rule = _email_request(words, word_set)
    if email_rule:
        if modal_heuristics:
            return Classification("modal", 0.9, (email_rule,), "email_composer", signals)
        reasons.append(email_rule)
        reasons.append("flag:modal_heuristics_off")

    insight_words = word_set & _INSIGHT_WORDS
    wants_insights = bool(insight_words) and (
        bool(word_set & _INSIGHT_VIEW) or len(words) <= 3 or "this" in word_set or "lead" in word_set
    )
    if wants_insights and not email_rule:
        reasons.append("insights:" + ",".join(sorted(insight_words)))
        if has_insights and modal_heuristics:
            return Classification("modal", 0.85, tuple(reasons), "lead_insights", signals)
        if has_insights:
            reasons.append("flag:modal_heuristics_off")
        elif has_lead:
            reasons.append("lead:no_score_or_insights")
        if has_lead:
            return Classification("rag", 0.75, tuple(reasons), None, signals)

    kb_hits = word_set & _KB_WORDS
    if kb_hits and not email_rule:
        reasons.append("kb:" + ",".join(sorted(kb_hits)[:3]))
        return Classification("rag", 0.8, tuple(reasons), None, signals)

    lead_hits = word_set & _LEAD_WORDS
    if (has_lead or has_activity) and lead_hits and not email_rule:
        reasons.append("lead_data:" + ",".join(sorted(lead_hits)[:3]))
        return Classification("rag", 0.75, tuple(reasons), None, signals)
    if (has_lead or has_activity) and word_set & {"about", "summarize", "summary", "recap", "brief"} and not (
        email_rule
    ):
        reasons.append("lead_data:summary")
        return Classification("rag", 0.7, tuple(reasons), None, signals)

    reasons.append("default:conversational")
    return Classification("conversational", 0.6 if len(reasons) == 1 else 0.7, tuple(reasons), None, signals)
