"""Ivy's vocabulary: every word list the intent rules and the retriever read, in one place.

Adding a synonym is a one-line change here. The lists are data, named for what the rules do with
them; the rules themselves live in `classifier.py` and the text normalisation in `normalise.py`.
Every word named here is also "known" to the typo pass (`KNOWN`), so it is never "corrected"
into another word.
"""

from __future__ import annotations

# Chat shorthand and typos too short (or too far) for the edit-distance pass to fix safely.
SHORTHAND = {
    "u": "you", "ur": "your", "r": "are", "pls": "please", "plz": "please", "pleas": "please",
    "thx": "thanks", "thnx": "thanks", "ty": "thanks", "tks": "thanks", "msg": "message", "mtg": "meeting",
    "smth": "something", "sth": "something", "somthing": "something", "abt": "about", "convo": "conversation",
    "emal": "email", "emai": "email", "eml": "email", "mail": "email", "e-mail": "email", "emial": "email",
    "draf": "draft", "drat": "draft", "writ": "write", "wrte": "write", "rite": "write", "wirte": "write",
    "folow": "follow", "follw": "follow", "fllow": "follow", "fup": "followup", "f/u": "followup",
    "scor": "score", "socre": "score", "scroe": "score", "wat": "what", "wats": "whats", "wht": "what",
    "thier": "their", "ther": "their", "tehm": "them", "hte": "the", "repy": "reply", "rply": "reply",
    "analyse": "analyze", "analyses": "analyze", "analysing": "analyzing", "personalised": "personalized",
    "summarise": "summarize", "info": "information", "tmrw": "tomorrow", "sayin": "saying", "tldr": "summary",
}
# Contractions kept as one token; any other "'s" is a possessive and is dropped ("lead's" -> "lead").
CONTRACTIONS = {
    "what's": "whats", "that's": "thats", "it's": "its", "he's": "hes", "she's": "shes", "who's": "whos",
    "there's": "theres", "let's": "lets", "how's": "hows", "where's": "wheres", "when's": "whens",
    "why's": "whys", "here's": "heres",
}
# Plurals and inflections the rules treat as one word; "emails" stays plural on purpose: "draft an
# email" asks for one, "did they open my emails" asks about existing ones.
FORMS = {"followups": "followup", "insight": "insights", "scores": "score", "analysed": "analyzed", "drafts": "draft"}
# Two-word phrases the rules read as one word.
BIGRAMS = {
    ("follow", "up"): "followup", ("thank", "you"): "thankyou", ("check", "in"): "checkin",
    ("deep", "dive"): "deepdive", ("sign", "on"): "signon", ("break", "down"): "breakdown",
    ("write", "back"): "writeback", ("get", "back"): "getback", ("put", "together"): "puttogether",
    ("whip", "up"): "whipup", ("draw", "up"): "drawup", ("fire", "off"): "fireoff",
    ("in", "general"): "ingeneral", ("last", "contact"): "lastcontact", ("pull", "up"): "pullup",
    ("decision", "maker"): "decisionmaker", ("cold", "calling"): "coldcalling",
}
# Words the rules hinge on: a one-edit misspelling of one of these is read as the word.
FUZZY_TARGETS = frozenset({
    "response",
    "email", "emails", "draft", "write", "compose", "prepare", "followup", "follow", "reply", "respond",
    "message", "analyze", "analysis", "insights", "score", "scored", "scoring", "breakdown", "explain",
    "budget", "pricing", "price", "refund", "refunds", "integration", "integrate", "onboarding",
    "migrate", "migration", "discount", "nonprofit", "subscription", "cancel", "invoice", "billing",
    "payment", "salesforce", "hubspot", "enterprise", "starter", "trial", "security", "summary",
    "summarize", "activity", "meeting", "competitor", "competitors", "playbook", "proposal", "thanks",
    "something", "please", "their", "quick", "intro", "recap", "timeline", "decision", "stage",
})
# Real words one edit away from a target: never "correct" these. Every word the rules below
# name is protected too (see KNOWN), so "gmail" stays "gmail" rather than becoming "email".
PROTECTED = frozenset({
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


FILLERS = frozenset({
    "hey", "hi", "hello", "ivy", "ok", "okay", "so", "and", "then", "also", "now", "quickly", "just",
    "please", "yo", "alright", "right", "great", "cool", "thanks", "um", "uh", "oh",
})
QUESTION_START = frozenset({
    "how", "what", "whats", "when", "why", "which", "who", "whos", "where", "is", "are", "was", "were",
    "do", "does", "did", "should", "shall", "has", "have", "had", "any", "tips", "am", "isnt", "arent",
    "dont", "doesnt", "didnt", "hows", "wheres", "whens", "whys", "whom", "whose", "best", "advice",
})
AUX = frozenset({"can", "could", "would", "will", "mind"})
YOU = frozenset({"you", "ivy", "ya"})
# Openers that turn what follows into the rep's request: "help me", "i need to", "let's", "go ahead and".
REQUEST_PREFIX = frozenset({
    "please", "help", "me", "i", "we", "need", "to", "want", "wanna", "gotta", "lets", "go", "ahead",
    "and", "id", "like", "have", "you", "quickly", "just", "also", "kindly", "pls", "now", "then",
})

EMAIL_NOUNS = frozenset({
    "email", "message", "note", "reply", "followup", "response", "intro", "introduction", "letter",
    "thankyou", "nudge", "checkin", "line", "draft",
})
GENERIC_OBJECT = frozenset({"something", "one", "anything", "it"})
# Nouns that, met before any email noun, say the artefact is not a message to the lead.
NON_EMAIL_OBJECT = frozenset({
    "invite", "invitation", "calendar", "event", "zoom", "appointment", "slot", "webinar",
    "summary", "tips", "list", "script", "proposal", "agenda", "plan", "report", "post", "notes", "brief",
    "overview", "analysis", "breakdown", "outline", "template", "templates", "sequence", "table", "call",
    "question", "questions", "pitch", "slide", "deck", "contract", "quote", "task", "reminder", "meeting",
})
COMPOSE_VERBS = frozenset({
    "draft", "write", "compose", "prepare", "craft", "create", "generate", "make", "puttogether", "whipup",
    "redo", "rewrite", "drawup", "type", "pen", "need", "get", "do", "give",
})
LOOSE_COMPOSE_VERBS = frozenset({"draft", "compose", "write", "drawup", "whipup", "writeback"})
OPEN_VERBS = frozenset({"open", "launch", "start", "pullup", "show", "bring"})
SEND_VERBS = frozenset({"send", "shoot", "fireoff", "fire", "drop", "ping", "email", "message"})
REPLY_VERBS = frozenset({"reply", "respond", "writeback", "getback", "followup", "answer"})
RECIPIENTS = frozenset({
    "them", "him", "her", "they", "lead", "prospect", "client", "customer", "contact", "back",
})
TERSE_MODIFIERS = frozenset({
    "a", "an", "the", "quick", "short", "brief", "polite", "warm", "friendly", "cold", "intro", "thankyou",
    "breakup", "followup", "new", "another", "nice", "formal", "casual", "personalized", "gentle", "final",
    "simple", "concise", "professional", "draft", "reply", "sales", "renewal", "pricing", "proposal",
    "reminder", "checkin", "email", "my",
})
TERSE_TAIL = frozenset({
    "to", "for", "re", "about", "asking", "confirming", "thanking", "telling", "saying", "reminding", "with",
    "that", "on", "please", "asap", "now", "regarding", "mentioning", "inviting", "introducing", "following",
    "draft", "pls", "today", "tomorrow", "in", "offering", "explaining", "sharing", "letting",
})

INSIGHT_NOUNS = frozenset({
    "signals", "signal",
    "score", "scoring", "scored", "insights", "rating", "rated", "rank", "ranked", "ranking", "grade",
    "graded",
})
AI_OPINION = frozenset({
    "think", "thinks", "say", "says", "saying", "insights", "thought", "opinion", "signals", "signal", "noticed",
    "notice", "picked", "spotted", "flagged", "detected", "see", "sees", "seeing", "found",
})
RATE_VERBS = frozenset({"rate", "grade", "score", "rank"})
ANALYZE = frozenset({"analyze", "analysis", "analyzing", "assess", "assessment"})
TEMPERATURE = frozenset({"hot", "warm"})
INSIGHT_VIEW = frozenset({
    "show", "open", "see", "explain", "view", "display", "pullup", "pull", "breakdown", "give", "walk",
    "tell", "check", "why", "what", "whats", "how", "driving", "drives", "drove", "drop", "dropped",
    "changed", "mean", "means", "high", "low", "behind", "look", "saying", "say", "says",
})
# A question about scoring as a product feature ("how does lead scoring work"), not this lead's score.
FEATURE_MARKERS = frozenset({
    "work", "works", "working", "plan", "plans", "starter", "growth", "enterprise", "included", "include",
    "includes", "available", "feature", "features", "start", "starts", "enable", "turn", "setup", "leads",
})

# Product facts the knowledge base answers whoever asks.
KB_TERMS = frozenset({
    "quarterly", "monthly", "annually",
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
METHOD_TERMS = frozenset({
    "objection", "objections", "prospecting", "coldcalling", "discovery", "demo", "demos", "negotiation",
    "negotiate", "cadence", "meddicc", "bant", "qualification", "qualify", "pitch", "escalation",
    "approval", "playbook",
})
OWNED = frozenset({"our", "playbook", "policy", "policies", "ivys", "process"})

PRONOUNS = frozenset({
    "they", "their", "them", "theirs", "he", "him", "his", "she", "her", "hers", "theyre", "theyve", "theyll",
    "hes", "shes",
})
LEAD_NOUNS = frozenset({
    "lead", "deal", "contact", "prospect", "account", "opportunity", "opp", "client", "customer", "person",
    "guy", "company",
})
LEAD_FACTS = frozenset({
    "budget", "stage", "title", "role", "position", "phone", "address", "website", "industry", "size",
    "employees", "revenue", "location", "timezone", "owner", "source", "status", "timeline", "deadline",
    "seats", "users", "decisionmaker", "champion", "authority", "competitor", "competitors", "pain",
    "requirements", "contract", "renewal", "notes", "note", "activity", "activities", "history", "call",
    "calls", "meeting", "meetings", "emails", "email", "thread", "replied", "respond", "responded",
    "reply", "said", "mention", "mentioned", "asked", "promise", "promised", "wrote", "opened", "sent",
    "contacted", "lastcontact", "close", "closing", "likely", "chance", "quarter", "objections",
    "concerns", "next", "steps", "interested", "interest", "decision", "spoke", "talked",
})
SUMMARY = frozenset({
    "summary", "summarize", "recap", "brief", "briefing", "overview", "about", "background", "rundown",
    "prep", "deepdive", "remind", "know", "update", "status", "catch",
})
SMALL_TALK = frozenset({
    "hi", "hello", "hey", "ivy", "thanks", "thank", "thankyou", "ok", "okay", "cool", "lol", "haha", "nice",
    "nvm", "bye", "good", "morning", "afternoon", "evening", "great", "awesome", "sorry", "yes", "no", "yep",
    "nope", "sure", "got", "it", "that", "was", "helpful", "perfect", "k", "kk", "yo", "sup", "test",
    "health", "check", "hmm", "wrong", "chat", "night", "cheers", "appreciate", "you", "welcome", "np",
})
GENERIC_LEAD_WORDS = frozenset({"the", "a", "an", "inc", "llc", "ltd", "group", "co", "corp", "company", "and", "of"})

KB_PRODUCT_TOPICS = KB_TERMS | METHOD_TERMS | (OWNED - {"process", "our"})

# Thanks and praise: a clause with one of these, and no drafting verb at its head, is feedback on
# something Ivy did ("the email you wrote was great, thanks"), never a request for a new one.
THANKS = frozenset({"thanks", "thank", "thankyou", "cheers", "appreciate", "appreciated", "grateful", "kudos"})
PRAISE = frozenset({
    "great", "perfect", "excellent", "love", "loved", "nice", "good", "awesome", "wonderful", "wow", "amazing",
    "brilliant", "helpful", "nailed", "fantastic", "better", "works", "job", "reads", "spot", "looks",
})
# What praise is about: the artefact Ivy produced.
ARTEFACTS = frozenset({"email", "emails", "draft", "reply", "message", "note", "followup", "it", "that", "this", "one"})
# A clause of artefacts and these is the rep reporting back ("email sent"), not asking for anything.
DONE = frozenset({"sent", "done", "shipped", "out", "off"})
# Verbs that make a clause a drafting request even next to a thanks ("thanks, draft one for marcus").
STRICT_COMPOSE_VERBS = frozenset({
    "draft", "write", "compose", "prepare", "craft", "redo", "rewrite", "send", "shoot", "reply", "respond",
    "writeback", "whipup", "drawup", "puttogether", "fireoff",
})
# Negations that take a drafting word in their next few words: "no email, just ...", "don't write to him".
NEGATIONS = frozenset({"no", "not", "dont", "without", "skip", "instead", "never", "nothing", "forget", "stop"})
# Things Ivy cannot do from the CRM panel: book, schedule, call, translate, calculate.
CANNOT_ACT_VERBS = frozenset({
    "schedule", "book", "set", "setup", "add", "invite", "dial", "call", "ring", "translate", "calculate",
    "compute", "convert", "play", "order", "put", "create", "send", "remind",
})
CALENDAR_NOUNS = frozenset({
    "meeting", "call", "invite", "invitation", "calendar", "event", "demo", "zoom", "reminder", "slot",
    "appointment", "webinar",
})
# Words without which a query is no prompt injection (the guard's pattern only runs when one is there).
INJECTION_CUES = frozenset({
    "ignore", "disregard", "forget", "override", "system", "developer", "jailbreak", "now", "dan", "pretend",
    "act", "reveal", "print", "dump", "repeat", "output", "prompt", "instructions", "api", "keys", "key", "admin",
    "password", "secret", "inst", "intent", "modal",
})
# Words the lead's own record uses that say nothing about a question's subject.
CONTEXT_STOP = frozenset({"the", "and", "for", "with", "this", "that", "our", "you", "your", "can", "thanks"})
# Four-letter hinge words and five-letter ones missing a letter: their slips ("sned", "drft") are
# read as the word; the real words among the slips are never touched.
SHORT_HINGES = ("send", "show", "note", "draft", "email", "write", "score", "reply", "quote")
SHORT_REAL_WORDS = frozenset({
    "raft", "drat", "dart", "daft", "core", "sore", "scor", "mail", "writ", "rite", "emil", "rely", "repl",
    "quot", "tone", "snow", "shoe", "shot", "shop", "slow", "stow", "shew", "nose",
})
# Every word a rule names is a real word for the typo pass: only unknown words get corrected.
KNOWN: frozenset[str] = frozenset().union(
    THANKS, PRAISE, ARTEFACTS, DONE, NEGATIONS, CANNOT_ACT_VERBS, CALENDAR_NOUNS,
    FUZZY_TARGETS, PROTECTED, FILLERS, QUESTION_START, AUX, YOU, REQUEST_PREFIX, EMAIL_NOUNS,
    GENERIC_OBJECT, NON_EMAIL_OBJECT, OPEN_VERBS, COMPOSE_VERBS, SEND_VERBS, REPLY_VERBS, RECIPIENTS,
    TERSE_MODIFIERS, TERSE_TAIL, INSIGHT_NOUNS, ANALYZE, TEMPERATURE, INSIGHT_VIEW, FEATURE_MARKERS,
    KB_TERMS, METHOD_TERMS, RATE_VERBS, OWNED, PRONOUNS, LEAD_NOUNS, LEAD_FACTS, SUMMARY, SMALL_TALK,
    AI_OPINION, *SHORTHAND.values(), *CONTRACTIONS.values(), *FORMS.values(), *BIGRAMS.values(),
)



def product_terms(tokens: list[str] | set[str]) -> frozenset[str]:
    """The words of a query that make it a question about our product or playbook (the KB's topics).

    The router and the retriever read the same lexicon: retrieval uses it to decide whether the
    knowledge base is the subject of a rag question or only a bystander to a question about the lead.
    """
    return frozenset(set(tokens) & KB_PRODUCT_TOPICS)

# --- retrieval ------------------------------------------------------------------------------------

# Words BM25 ignores in a query and in the documents.
STOP = frozenset({
    "a", "an", "the", "is", "are", "was", "were", "be", "been", "do", "does", "did", "of", "to", "in", "on", "for",
    "and", "or", "but", "with", "at", "by", "from", "it", "its", "this", "that", "these", "those", "what", "whats",
    "how", "when", "why", "who", "whos", "which", "can", "could", "would", "should", "will", "i", "me", "my", "we",
    "our", "you", "your", "they", "them", "their", "he", "she", "his", "her", "him", "us", "about", "tell", "give",
    "show", "any", "there", "have", "has", "had", "if", "so", "than", "then", "as", "into", "up", "per", "please",
    "ivy", "ivys", "crm", "product", "much", "many", "say", "says", "said", "get", "let", "know", "need", "want",
    "theres", "thats", "hes", "shes", "hi", "hey", "ok", "not", "no", "yes", "some", "all", "also", "just", "really",
    "quick", "quickly", "now", "like", "here", "take", "takes", "work", "works", "support", "supports", "supported",
    "offer", "offers", "allow", "allows", "provide", "provides",
})
# Words that name the lead itself rather than one of its facts: "tell me about this lead" matches
# every field equally, so it is answered by the lead's core record instead.
LEAD_GENERIC = frozenset({
    "lead", "deal", "prospect", "account", "person", "summary", "summarize", "overview", "recap", "brief",
    "briefing", "background", "rundown", "information", "everything", "deepdive", "analyze", "analysis", "insights",
    "before", "prep", "one", "guy", "client", "customer", "opportunity", "opp", "look", "looking", "update", "catch",
})
# Reps and the docs name the same things differently ("how much" / "costs", "users" / "seats"):
# each query word also searches for the docs' words for it.
EXPAND = {
    "cost": ("price",), "price": ("cost",), "pricing": ("price", "cost"), "charge": ("price", "cost"),
    "user": ("seat",), "seat": ("user",), "people": ("seat", "user"), "person": ("seat", "user"),
    "team": ("seat",), "rep": ("seat", "user"),
    "secure": ("security", "encryption"), "safe": ("security",), "pay": ("payment",), "paid": ("payment",),
    "hosted": ("region", "hosting"), "host": ("region", "hosting"), "cancel": ("cancellation",),
    "refund": ("moneyback",), "login": ("sso", "signon"), "sign": ("sso",),
}
# What each kind of context item is, searchable: "did they reply to my last email" is about the
# emails, not the lead's email address.
ITEM_WORDS = {"activities": "activity", "emails": "email message reply thread", "notes": "note"}
RECENT = frozenset({"last", "latest", "recent", "recently", "newest", "lastcontact"})
# Which context list a question about "the last ..." means.
COLLECTION_WORDS = {
    "emails": frozenset({"email", "emails", "reply", "replied", "wrote", "message", "thread", "respond",
                         "responded", "sent", "subject"}),
    "activities": frozenset({"call", "calls", "meeting", "meetings", "demo", "activity", "activities", "talk",
                             "talked", "spoke", "touch", "touchpoint", "conversation"}),
    "notes": frozenset({"note", "notes"}),
}
