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

Text is folded (case, accents, curly quotes), tokenised, shorthand and common typos mapped to
their word, and misspellings of the few words the rules hinge on corrected by edit distance 1,
so "drfat a folow up emial" reads as "draft a followup email".
"""

from __future__ import annotations

import itertools
import re
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

Intent = Literal["conversational", "rag", "modal"]
ModalType = Literal["email_composer", "lead_insights"]

# --- normalisation -------------------------------------------------------------------------------

# Chat shorthand and typos too short (or too far) for the edit-distance pass to fix safely.
_SHORTHAND = {
    "u": "you", "ur": "your", "r": "are", "pls": "please", "plz": "please", "pleas": "please",
    "thx": "thanks", "thnx": "thanks", "ty": "thanks", "tks": "thanks", "msg": "message", "mtg": "meeting",
    "smth": "something", "sth": "something", "somthing": "something", "abt": "about", "convo": "conversation",
    "emal": "email", "emai": "email", "eml": "email", "mail": "email", "e-mail": "email", "emial": "email",
    "draf": "draft", "drat": "draft", "writ": "write", "wrte": "write", "rite": "write", "wirte": "write",
    "folow": "follow", "follw": "follow", "fllow": "follow", "fup": "followup", "f/u": "followup",
    "scor": "score", "socre": "score", "scroe": "score", "wat": "what", "wats": "whats", "wht": "what",
    "thier": "their", "ther": "their", "tehm": "them", "hte": "the", "repy": "reply", "rply": "reply",
    "analyse": "analyze", "analyses": "analyze", "analysing": "analyzing", "personalised": "personalized",
    "summarise": "summarize", "info": "information", "tmrw": "tomorrow",
}
# Contractions kept as one token; any other "'s" is a possessive and is dropped ("lead's" -> "lead").
_CONTRACTIONS = {
    "what's": "whats", "that's": "thats", "it's": "its", "he's": "hes", "she's": "shes", "who's": "whos",
    "there's": "theres", "let's": "lets", "how's": "hows", "where's": "wheres", "when's": "whens",
    "why's": "whys", "here's": "heres",
}
# Plurals and inflections the rules treat as one word; "emails" stays plural on purpose: "draft an
# email" asks for one, "did they open my emails" asks about existing ones.
_FORMS = {"followups": "followup", "insight": "insights", "scores": "score", "analysed": "analyzed", "drafts": "draft"}
# Two-word phrases the rules read as one word.
_BIGRAMS = {
    ("follow", "up"): "followup", ("thank", "you"): "thankyou", ("check", "in"): "checkin",
    ("deep", "dive"): "deepdive", ("sign", "on"): "signon", ("break", "down"): "breakdown",
    ("write", "back"): "writeback", ("get", "back"): "getback", ("put", "together"): "puttogether",
    ("whip", "up"): "whipup", ("draw", "up"): "drawup", ("fire", "off"): "fireoff",
    ("in", "general"): "ingeneral", ("last", "contact"): "lastcontact", ("pull", "up"): "pullup",
    ("decision", "maker"): "decisionmaker", ("cold", "calling"): "coldcalling",
}

_FOLD_QUOTES = str.maketrans({"’": "'", "‘": "'", "`": "'", "´": "'"})
_TOKEN = re.compile(r"[a-z0-9$]+(?:['/-][a-z0-9]+)*")
_CLAUSE_BREAK = re.compile(r"[?!;,\n]+|\.(?:\s|$)+")


def _fold(text: str) -> str:
    text = unicodedata.normalize("NFKD", text.translate(_FOLD_QUOTES).lower())
    return "".join(ch for ch in text if not unicodedata.combining(ch))


def _deletes(word: str) -> set[str]:
    return {word[:i] + word[i + 1:] for i in range(len(word))}


def _osa_distance(a: str, b: str) -> int:
    """Optimal-string-alignment distance: insertions, deletions, substitutions, adjacent swaps."""
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        prev2, prev = prev, cur
    return prev[-1]


# Words the rules hinge on: a one-edit misspelling of one of these is read as the word.
_FUZZY_TARGETS = frozenset({
    "email", "emails", "draft", "write", "compose", "prepare", "followup", "follow", "reply", "respond",
    "message", "analyze", "analysis", "insights", "score", "scored", "scoring", "breakdown", "explain",
    "budget", "pricing", "price", "refund", "refunds", "integration", "integrate", "onboarding",
    "migrate", "migration", "discount", "nonprofit", "subscription", "cancel", "invoice", "billing",
    "payment", "salesforce", "hubspot", "enterprise", "starter", "trial", "security", "summary",
    "summarize", "activity", "meeting", "competitor", "competitors", "playbook", "proposal", "thanks",
    "something", "please", "their", "quick", "intro", "recap", "timeline", "decision", "stage",
})
# Real words one edit away from a target: never "correct" these. Every word the rules below
# name is protected too (see _KNOWN), so "gmail" stays "gmail" rather than becoming "email".
_PROTECTED = frozenset({
    "wrote", "white", "writer", "writes", "trite", "scope", "store", "scare", "snore", "scorn", "scone",
    "shore", "swore", "spore", "scores", "scorer", "scared", "stored", "snored", "scoped", "storing",
    "snoring", "scoping", "scaring", "sent", "spent", "trail", "tribal", "triad", "trials", "there",
    "these", "theirs", "those", "craft", "drift", "graft", "drafty", "drafted", "drafting", "replay",
    "repay", "replied", "replies", "replying", "emailed", "emails", "mails", "gmail", "female", "stages",
    "staged", "state", "stale", "stake", "stave", "stags", "prize", "pride", "prime", "prick", "pricey",
    "prices", "priced", "prizing", "budgets", "budge", "budged", "plans", "plane", "pleased", "pleases",
    "lease", "pleat", "quack", "quirk", "quiet", "quite", "follows", "fellow", "hollow",
    "messages", "massage", "passage", "cancer", "cancels", "invoices", "invoiced", "killing", "filling",
    "willing", "milling", "billings", "smarter", "started", "starters", "starting", "stater", "melting",
    "meetings", "greeting", "composed", "composer", "compost", "compote", "prepared", "prepares",
    "responds", "analyzed", "analyzer", "explains", "refind", "integrated", "emigrate",
    "migrated", "migrates", "discounted", "thinks", "think", "thank", "tanks", "thanes", "intros",
    "nitro", "recaps", "remap", "timelines", "decisions", "something", "sometime", "nothing", "anything",
    "summery", "summer", "breakdowns", "proposals", "playbooks", "enterprises", "subscriptions",
    "nonprofits", "integrations", "competitors", "competitor", "activities", "summarized", "summarizes",
})


def _build_delete_index(words: frozenset[str]) -> dict[str, frozenset[str]]:
    index: dict[str, set[str]] = {}
    for word in words:
        for key in {word, *_deletes(word)}:
            index.setdefault(key, set()).add(word)
    return {k: frozenset(v) for k, v in index.items()}


_DELETE_INDEX = _build_delete_index(_FUZZY_TARGETS)


@lru_cache(maxsize=8192)
def _canonical(word: str) -> str:
    word = _SHORTHAND.get(word, word)
    if "'" in word:
        word = _CONTRACTIONS.get(word) or (word[:-2] if word.endswith("'s") else word.replace("'", ""))
    if "-" in word or "/" in word:
        joined = word.replace("-", "").replace("/", "")
        word = _SHORTHAND.get(joined, joined) if "-" in word else word
    word = _FORMS.get(word, word)
    if len(word) >= 5 and word.isalpha() and word not in _KNOWN:
        # SymSpell-style lookup (shared one-character deletes), confirmed by the real distance.
        candidates: set[str] = set(_DELETE_INDEX.get(word, ()))
        for key in _deletes(word):
            candidates |= _DELETE_INDEX.get(key, frozenset())
        close = sorted(c for c in candidates if abs(len(c) - len(word)) <= 1 and _osa_distance(word, c) == 1)
        if len(close) == 1:
            word = _FORMS.get(close[0], close[0])
    return word


def _tokens(folded: str) -> list[str]:
    out: list[str] = []
    for raw in _TOKEN.findall(folded):
        word = _canonical(raw)
        if out and (out[-1], word) in _BIGRAMS:
            out[-1] = _BIGRAMS[(out[-1], word)]
        else:
            out.append(word)
    return out


def normalise(text: str) -> list[str]:
    """Lower-cased, accent-folded tokens with shorthand, typos and key phrases mapped to one word."""
    return _tokens(_fold(text))


def _clauses(text: str) -> list[list[str]]:
    folded = _fold(text)
    return [t for part in _CLAUSE_BREAK.split(folded) if (t := _tokens(part))]


# --- lexicon ---------------------------------------------------------------------------------------

_FILLERS = frozenset({
    "hey", "hi", "hello", "ivy", "ok", "okay", "so", "and", "then", "also", "now", "quickly", "just",
    "please", "yo", "alright", "right", "great", "cool", "thanks", "um", "uh", "oh",
})
_QUESTION_START = frozenset({
    "how", "what", "whats", "when", "why", "which", "who", "whos", "where", "is", "are", "was", "were",
    "do", "does", "did", "should", "shall", "has", "have", "had", "any", "tips", "am", "isnt", "arent",
    "dont", "doesnt", "didnt", "hows", "wheres", "whens", "whys", "whom", "whose", "best", "advice",
})
_AUX = frozenset({"can", "could", "would", "will", "mind"})
_YOU = frozenset({"you", "ivy", "ya"})
# Openers that turn what follows into the rep's request: "help me", "i need to", "let's", "go ahead and".
_REQUEST_PREFIX = frozenset({
    "please", "help", "me", "i", "we", "need", "to", "want", "wanna", "gotta", "lets", "go", "ahead",
    "and", "id", "like", "have", "you", "quickly", "just", "also", "kindly", "pls", "now", "then",
})

_EMAIL_NOUNS = frozenset({
    "email", "message", "note", "reply", "followup", "response", "intro", "introduction", "letter", "recap",
    "thankyou", "nudge", "checkin", "line", "draft",
})
_GENERIC_OBJECT = frozenset({"something", "one", "anything", "it"})
# Nouns that, met before any email noun, say the artefact is not a message to the lead.
_NON_EMAIL_OBJECT = frozenset({
    "summary", "tips", "list", "script", "proposal", "agenda", "plan", "report", "post", "notes", "brief",
    "overview", "analysis", "breakdown", "outline", "template", "templates", "sequence", "table", "call",
    "question", "questions", "pitch", "slide", "deck", "contract", "quote", "task", "reminder", "meeting",
})
_COMPOSE_VERBS = frozenset({
    "draft", "write", "compose", "prepare", "craft", "create", "generate", "make", "puttogether", "whipup",
    "redo", "rewrite", "drawup", "type", "pen", "need", "get", "do", "give",
})
_LOOSE_COMPOSE_VERBS = frozenset({"draft", "compose", "write", "drawup", "whipup", "writeback"})
_OPEN_VERBS = frozenset({"open", "launch", "start", "pullup", "show", "bring"})
_SEND_VERBS = frozenset({"send", "shoot", "fireoff", "fire", "drop", "ping", "email", "message"})
_REPLY_VERBS = frozenset({"reply", "respond", "writeback", "getback", "followup", "answer"})
_RECIPIENTS = frozenset({
    "them", "him", "her", "they", "lead", "prospect", "client", "customer", "contact", "back",
})
_TERSE_MODIFIERS = frozenset({
    "a", "an", "the", "quick", "short", "brief", "polite", "warm", "friendly", "cold", "intro", "thankyou",
    "breakup", "followup", "new", "another", "nice", "formal", "casual", "personalized", "gentle", "final",
    "simple", "concise", "professional", "draft", "reply", "sales", "renewal", "pricing", "proposal",
    "reminder", "checkin", "email", "my",
})
_TERSE_TAIL = frozenset({
    "to", "for", "re", "about", "asking", "confirming", "thanking", "telling", "saying", "reminding", "with",
    "that", "on", "please", "asap", "now", "regarding", "mentioning", "inviting", "introducing", "following",
    "draft", "pls", "today", "tomorrow", "in", "offering", "explaining", "sharing", "letting",
})

_INSIGHT_NOUNS = frozenset({
    "score", "scoring", "scored", "insights", "rating", "rated", "rank", "ranked", "ranking", "grade",
    "graded",
})
_AI_OPINION = frozenset({"think", "thinks", "say", "says", "saying", "insights", "thought", "opinion"})
_RATE_VERBS = frozenset({"rate", "grade", "score", "rank"})
_ANALYZE = frozenset({"analyze", "analysis", "analyzing", "assess", "assessment"})
_TEMPERATURE = frozenset({"hot", "warm"})
_INSIGHT_VIEW = frozenset({
    "show", "open", "see", "explain", "view", "display", "pullup", "pull", "breakdown", "give", "walk",
    "tell", "check", "why", "what", "whats", "how", "driving", "drives", "drove", "drop", "dropped",
    "changed", "mean", "means", "high", "low", "behind", "look", "saying", "say", "says",
})
# A question about scoring as a product feature ("how does lead scoring work"), not this lead's score.
_FEATURE_MARKERS = frozenset({
    "work", "works", "working", "plan", "plans", "starter", "growth", "enterprise", "included", "include",
    "includes", "available", "feature", "features", "start", "starts", "enable", "turn", "setup", "leads",
})

# Product facts the knowledge base answers whoever asks.
_KB_TERMS = frozenset({
    "pricing", "price", "prices", "priced", "cost", "costs", "plan", "plans", "tier", "tiers", "starter",
    "growth", "enterprise", "seat", "seats", "license", "licenses", "sso", "saml", "oidc", "okta", "entra",
    "onelogin", "jumpcloud", "signon", "scim", "security", "soc", "soc2", "iso", "gdpr", "ccpa", "hipaa",
    "dpa", "encryption", "encrypted", "residency", "hosted", "hosting", "region", "aws", "byok", "2fa",
    "twofactor", "mfa", "audit", "retention", "deletion", "backups", "refund", "refunds", "cancel",
    "cancellation", "invoice", "invoices", "billing", "billed", "payment", "payments", "ach", "sepa",
    "paypal", "integration", "integrations", "integrate", "integrates", "sync", "syncs", "salesforce",
    "hubspot", "slack", "zapier", "stripe", "gmail", "outlook", "calendar", "api", "webhook", "webhooks",
    "onboarding", "import", "csv", "migrate", "migration", "migrating", "trial", "discount", "discounts",
    "nonprofit", "education", "csm", "training", "academy", "certification", "sla", "uptime", "sandbox",
    "credits", "overage", "addon", "downgrade", "upgrade", "subscription", "vat", "moneyback", "guarantee",
    "secure", "privacy", "policy", "policies", "export", "exports", "golive", "teams", "pipedrive", "compliance",
    "compliant",
})
# Sales-method words: our playbook when the rep says so ("our", "playbook"), generic advice otherwise.
_METHOD_TERMS = frozenset({
    "objection", "objections", "prospecting", "coldcalling", "discovery", "demo", "demos", "negotiation",
    "negotiate", "cadence", "meddicc", "bant", "qualification", "qualify", "pitch", "escalation",
    "approval", "playbook",
})
_OWNED = frozenset({"our", "playbook", "policy", "policies", "ivys", "process"})
_PRODUCT_QUESTION = re.compile(
    r"\b(?:do|does|can|will|is|are) (?:we|ivy|our product|our app|the product|ivy crm|you guys) "
    r"(?:support|offer|have|integrate|work|connect|include|sync|allow|provide|handle|track|charge)"
)

_PRONOUNS = frozenset({
    "they", "their", "them", "theirs", "he", "him", "his", "she", "her", "hers", "theyre", "theyve", "theyll",
    "hes", "shes",
})
_LEAD_NOUNS = frozenset({
    "lead", "deal", "contact", "prospect", "account", "opportunity", "opp", "client", "customer", "person",
    "guy", "company",
})
_LEAD_FACTS = frozenset({
    "budget", "stage", "title", "role", "position", "phone", "address", "website", "industry", "size",
    "employees", "revenue", "location", "timezone", "owner", "source", "status", "timeline", "deadline",
    "seats", "users", "decisionmaker", "champion", "authority", "competitor", "competitors", "pain",
    "requirements", "contract", "renewal", "notes", "note", "activity", "activities", "history", "call",
    "calls", "meeting", "meetings", "emails", "email", "thread", "replied", "respond", "responded",
    "reply", "said", "mention", "mentioned", "asked", "promise", "promised", "wrote", "opened", "sent",
    "contacted", "lastcontact", "close", "closing", "likely", "chance", "quarter", "objections",
    "concerns", "next", "steps", "interested", "interest", "decision", "spoke", "talked",
})
_SUMMARY = frozenset({
    "summary", "summarize", "recap", "brief", "briefing", "overview", "about", "background", "rundown",
    "prep", "deepdive", "remind", "know", "update", "status", "catch",
})
_ADVICE_OPENERS = (
    re.compile(r"^(?:how|what) (?:do|should|can|would) (?:i|we|you|reps?) "),
    re.compile(r"^how \w+ (?:should|do|does|can) "),
    re.compile(r"^(?:tips|advice|best|any tips|any advice|whats a good|whats the best|what makes|is it ok)\b"),
    re.compile(r"^(?:should i|do i|is it better)\b"),
)
_ABOUT_IVY = re.compile(
    r"^(?:what can you (?:do|help)|how can you help|what (?:are|do) you (?:do|able|capable|good)"
    r"|who (?:made|built|created|trained|are) you|are you (?:a|an|human|real|ai|chatgpt|gpt|bot|there|ok)"
    r"|(?:do|can|will) you (?:speak|remember|know|understand|learn|store|keep|see|access|read|talk)"
    r"|what are you|how do you work|whats your name|what model)"
)
_SMALL_TALK = frozenset({
    "hi", "hello", "hey", "ivy", "thanks", "thank", "thankyou", "ok", "okay", "cool", "lol", "haha", "nice",
    "nvm", "bye", "good", "morning", "afternoon", "evening", "great", "awesome", "sorry", "yes", "no", "yep",
    "nope", "sure", "got", "it", "that", "was", "helpful", "perfect", "k", "kk", "yo", "sup", "test",
    "health", "check", "hmm", "wrong", "chat", "night", "cheers", "appreciate", "you", "welcome", "np",
})
_GENERIC_LEAD_WORDS = frozenset({"the", "a", "an", "inc", "llc", "ltd", "group", "co", "corp", "company", "and", "of"})

_KB_PRODUCT_TOPICS = _KB_TERMS | _METHOD_TERMS | (_OWNED - {"process", "our"})

# Every word a rule names is a real word for the typo pass: only unknown words get corrected.
_KNOWN: frozenset[str] = frozenset().union(
    _FUZZY_TARGETS, _PROTECTED, _FILLERS, _QUESTION_START, _AUX, _YOU, _REQUEST_PREFIX, _EMAIL_NOUNS,
    _GENERIC_OBJECT, _NON_EMAIL_OBJECT, _OPEN_VERBS, _COMPOSE_VERBS, _SEND_VERBS, _REPLY_VERBS, _RECIPIENTS,
    _TERSE_MODIFIERS, _TERSE_TAIL, _INSIGHT_NOUNS, _ANALYZE, _TEMPERATURE, _INSIGHT_VIEW, _FEATURE_MARKERS,
    _KB_TERMS, _METHOD_TERMS, _RATE_VERBS, _OWNED, _PRONOUNS, _LEAD_NOUNS, _LEAD_FACTS, _SUMMARY, _SMALL_TALK,
    _AI_OPINION, *_SHORTHAND.values(), *_CONTRACTIONS.values(), *_FORMS.values(), *_BIGRAMS.values(),
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


def product_terms(tokens: list[str] | set[str]) -> frozenset[str]:
    """The words of a query that make it a question about our product or playbook (the KB's topics).

    Retrieval uses the same lexicon the router used, to decide whether the knowledge base is the
    subject of a rag question or only a bystander to a question about the lead.
    """
    return frozenset(set(tokens) & _KB_PRODUCT_TOPICS)


@lru_cache(maxsize=4096)
def _name_words(value: str) -> frozenset[str]:
    return frozenset(w for w in normalise(value) if len(w) > 2 and w not in _GENERIC_LEAD_WORDS)


def _lead_names(lead: dict[str, Any]) -> frozenset[str]:
    """The lead's own words (first/last name, company), so "who is dana" reads as being about the lead."""
    words: frozenset[str] = frozenset()
    for key in ("name", "firstName", "lastName", "company"):
        value = lead.get(key)
        if isinstance(value, str):
            words |= _name_words(value)
    return words


def _strip_fillers(clause: list[str]) -> list[str]:
    i = 0
    while i < len(clause) - 1 and clause[i] in _FILLERS:
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
    if first in _AUX:
        # "can you ...", "could you please ...": a polite request; "can I get a ..." too.
        polite = len(words) > 1 and words[1] in _YOU
        asks_for = len(words) > 2 and words[1] in ("i", "we") and words[2] in ("get", "have")
        if not (polite or asks_for):
            return None
        words = words[2:]
    elif first in _QUESTION_START:
        return None
    i = 0
    while i < len(words) - 1 and words[i] in _REQUEST_PREFIX and words[i] not in _COMPOSE_VERBS | _SEND_VERBS:
        i += 1
    return words[i:]


def _object_is_email(after: list[str], loose: bool) -> bool:
    """Does the verb's object read as a message (within a short window)?"""
    for word in after[:7]:
        if word in _EMAIL_NOUNS:
            return True
        if word in _NON_EMAIL_OBJECT:
            return False
        if loose and word in _GENERIC_OBJECT:
            return True
    return False


def _sent_to_lead(after: list[str], recipients: frozenset[str]) -> bool:
    """ "send over the case study to marcus": whatever is sent, it goes to the lead by email."""
    return any(w == "to" and nxt in recipients - {"back"} for w, nxt in itertools.pairwise(after))


def _email_rule(clause: list[str], names: frozenset[str]) -> str | None:
    body = _request_body(clause)
    if body:
        verb, after = body[0], body[1:]
        recipients = _RECIPIENTS | names
        if verb in _COMPOSE_VERBS and _object_is_email(after, loose=verb in _LOOSE_COMPOSE_VERBS):
            return "email:compose_verb"
        if verb in _LOOSE_COMPOSE_VERBS and (not after or after[0] in recipients | {"to", "up"}):
            return "email:compose_verb"
        if verb in _SEND_VERBS and after and (
            after[0] in recipients or _object_is_email(after, loose=False) or _sent_to_lead(after, recipients)
        ):
            return "email:send_verb"
        if verb in _REPLY_VERBS and (not after or after[0] in recipients | {"to", "with", "on", "for", "all"}):
            return "email:reply_verb"
        if verb in _OPEN_VERBS and "composer" in after[:4]:
            return "email:open_composer"
    # Terse noun phrase: "quick email to confirm the meeting", "followup email to dana", "draft email".
    words = _strip_fillers(clause)
    if words and words[0] not in _QUESTION_START and words[0] not in _AUX:
        i = 0
        while i < len(words) and words[i] in _TERSE_MODIFIERS and words[i] not in _EMAIL_NOUNS - {"draft"}:
            i += 1
        j = i
        while j < len(words) and words[j] in _EMAIL_NOUNS:
            j += 1
        head_ok = j > i or (i > 0 and words[i - 1] in _EMAIL_NOUNS)
        if head_ok and (j == len(words) or words[j] in _TERSE_TAIL or words[j] in names):
            return "email:terse"
    return None


def _joined(words: list[str]) -> str:
    return " ".join(words)


def classify(query: str, context: dict[str, Any], *, modal_heuristics: bool = True) -> Classification:
    clauses = _clauses(query)
    words = [w for c in clauses for w in c]
    word_set = set(words)
    lead = _lead(context)
    has_lead = bool(lead)
    has_insights = lead_has_insights(lead)
    has_activity = bool(context.get("activities") or context.get("emails") or context.get("notes"))
    names = _lead_names(lead) if has_lead else frozenset()
    lead_ref = bool(word_set & (_PRONOUNS | _LEAD_NOUNS | names)) or "this one" in _joined(words)
    signals = {
        "has_lead": has_lead, "lead_has_insights": has_insights, "has_activity": has_activity,
        "modal_heuristics": modal_heuristics, "mentions_lead": lead_ref,
    }
    reasons: list[str] = []

    def result(intent: Intent, confidence: float, modal: ModalType | None = None) -> Classification:
        return Classification(intent, confidence, tuple(reasons), modal, signals)

    # 1. An instruction to produce a message.
    email_rule = next((r for c in clauses if (r := _email_rule(c, names))), None)
    signals["email_request"] = email_rule is not None
    if email_rule:
        reasons.append(email_rule)
        if modal_heuristics:
            return result("modal", 0.92 if email_rule != "email:terse" else 0.85, "email_composer")
        reasons.append("flag:modal_heuristics_off")
        return result("conversational", 0.8)

    # 2. This lead's score or insights.
    text = _joined(words)
    insight_hits = word_set & _INSIGHT_NOUNS
    score = lead.get("leadScore")
    if score not in (None, "") and str(score) in word_set and word_set & {"why", "explain", "is", "a", "an"}:
        insight_hits = insight_hits | {"score_value"}
    body = _request_body(clauses[0]) if clauses else None
    if body and body[0] in _RATE_VERBS and lead_ref:
        insight_hits = insight_hits | {"rate"}
    if "ai" in word_set and word_set & _AI_OPINION:
        insight_hits = insight_hits | {"ai_opinion"}
    analyze = bool(word_set & _ANALYZE) and not word_set & {"emails", "email", "thread", "call", "notes", "meeting"}
    temperature = bool(word_set & _TEMPERATURE) and lead_ref and not word_set & _EMAIL_NOUNS
    feature_question = bool(insight_hits) and bool(word_set & _FEATURE_MARKERS) and not (
        word_set & (_PRONOUNS | names) or "this" in word_set
    )
    content = [w for w in words if w not in _FILLERS and w not in ("the", "a", "an", "me", "for", "my")]
    wants_insights = not feature_question and (
        analyze
        or temperature
        or (bool(insight_hits) and (bool(word_set & _INSIGHT_VIEW) or len(content) <= 3 or lead_ref))
    )
    signals["insights_request"] = wants_insights
    if wants_insights:
        tags = sorted(insight_hits | ({"analyze"} if analyze else set()) | ({"temperature"} if temperature else set()))
        reasons.append("insights:" + ",".join(tags))
        if has_insights and modal_heuristics:
            return result("modal", 0.9, "lead_insights")
        if has_insights:
            reasons.append("flag:modal_heuristics_off")
            return result("rag", 0.8)
        if has_lead:
            reasons.append("lead:no_score_or_insights")
            return result("rag", 0.8)
        reasons.append("lead:none_in_context")
        return result("conversational", 0.7)

    # 3. Product facts and our own playbook: the knowledge base.
    kb_words = set(words)
    for i, w in enumerate(words[:-1]):
        # "a price objection" is sales technique, not a question about our prices.
        if w in ("price", "pricing", "budget", "timing", "competitor") and words[i + 1] in ("objection", "objections"):
            kb_words.discard(w)
    kb_hits = kb_words & _KB_TERMS
    if feature_question:
        kb_hits |= insight_hits
    method_hits = word_set & _METHOD_TERMS
    owned = bool(word_set & _OWNED) or bool(_PRODUCT_QUESTION.search(text))
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
    first_clause = _joined(_strip_fillers(clauses[0])) if clauses else ""
    if _ABOUT_IVY.search(first_clause) or _ABOUT_IVY.search(text):
        reasons.append("chat:about_ivy")
        return result("conversational", 0.85)
    if not word_set - _SMALL_TALK:
        reasons.append("chat:small_talk")
        return result("conversational", 0.95)
    has_context = has_lead or has_activity
    if method_hits and not (lead_ref and has_context):  # "what objections has she raised" is about the lead
        reasons.append("advice:" + ",".join(sorted(method_hits)[:2]))
        return result("conversational", 0.75)

    # 5. The lead's record, notes, activity and emails.
    fact_hits = word_set & _LEAD_FACTS
    summary = bool(word_set & _SUMMARY)
    advice = any(p.search(first_clause) for p in _ADVICE_OPENERS) or generic
    if has_context and (lead_ref or ((fact_hits or summary) and not advice)):
        tag = sorted(fact_hits)[:3] or (["summary"] if summary else ["reference"])
        reasons.append("lead_data:" + ",".join(tag))
        return result("rag", 0.8 if fact_hits or lead_ref else 0.7)
    if advice:
        reasons.append("advice:generic")
        return result("conversational", 0.75)
    if fact_hits and not has_context:
        reasons.append("lead_data:no_lead_in_context")

    reasons.append("default:conversational")
    return result("conversational", 0.6)
