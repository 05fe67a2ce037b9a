"""The offline provider: deterministic answers from the request's data, no network.

It is the chain's explicit last resort (not a link: it is never raced, timed or broken), so a
provider outage degrades answers instead of failing requests. It never pretends to be a model:
responses say `provider: local`.
"""

from __future__ import annotations

import orjson

from app.drafts.email import make_email_json_fallback
from app.providers.base import GenerationRequest
from app.vocabulary import ProviderName

_GREETINGS = ("hi", "hello", "hey", "good morning", "good afternoon", "yo", "hiya")
_THANKS = ("thanks", "thank you", "thx", "ty", "cheers", "appreciate")

UNAVAILABLE = (
    "The AI provider is unavailable right now, so I can't give a full answer. "
    "I can still pull facts from this lead's record and our knowledge base: ask about the lead, "
    "pricing, security or integrations."
)


class LocalProvider:
    name: ProviderName = "local"
    model = "ivy-offline-1"

    def answer(self, request: GenerationRequest, *, json_mode: bool = False) -> str:
        """The whole answer at once (the email draft as JSON text in ``json_mode``)."""
        if json_mode:
            return orjson.dumps(make_email_json_fallback(request.lead, request.query)).decode()
        notes = " ".join(request.notes)
        if request.modal_type == "lead_insights":
            return self._insights(request)
        if request.intent == "rag":
            if not request.passages:
                return (notes + " " if notes else "") + (
                    "I couldn't find that in this lead's record or in our knowledge base."
                )
            facts = "\n".join(f"- {p.text[:400]} [{i}]" for i, p in enumerate(request.passages, 1))
            head = notes + "\n\n" if notes else ""
            return f"{head}Here is what the CRM data and our docs say:\n{facts}"
        q = request.query.strip().lower()
        if q.startswith(_GREETINGS):
            return "Hi! I'm Ivy. Ask me about a lead, our plans and policies, or ask me to draft an email."
        if any(t in q for t in _THANKS):
            return "You're welcome!"
        return (notes + " " if notes else "") + UNAVAILABLE

    def _insights(self, request: GenerationRequest) -> str:
        lead = request.lead
        score = lead.get("leadScore")
        insights = lead.get("aiInsights") or []
        if isinstance(insights, str):
            insights = [insights]
        parts = [f"{lead.get('name') or 'This lead'}: lead score {score}." if score is not None else ""]
        parts += [f"- {item}" for item in insights[:5]]
        return "\n".join(p for p in parts if p) or "This lead has no score or AI insights yet."
