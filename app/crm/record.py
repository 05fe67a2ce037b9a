"""One typed view of the request's CRM context, built once per request (`CrmRecord.read`).

Every piece is classed by who wrote it:

- ``query``: the rep's question (trusted input; the classifier's injection guard still reads it);
- ``computed``: fields the CRM itself computes or a rep sets from a list (`COMPUTED_FIELDS`:
  score, stage, budget, insights, dates, ids);
- ``outside``: everything else, above all what prospects write (emails, notes, activities, and any
  free-text field, the lead's name included): data for the prompt, never instructions. It is
  spotlighted in the prompt (app/providers/prompts.py), scanned for injected instructions
  (app/safety/injection.py), and what the output checks hold answers against never comes from it.

Secrets pasted into any string (keys, tokens: app/observability/redaction.py `mask_secrets`) are
masked here, before retrieval, the prompt and citations read the context.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from app.intent.normalise import MAX_CONTEXT_VALUES
from app.observability.redaction import mask_secrets, may_hold_secret
from app.safety.links import hosts_in
from app.safety.recipient import normalise_address
from app.safety.text import visible

Trust = Literal["query", "computed", "outside", "knowledge"]

COMPUTED_FIELDS = frozenset({
    "id", "leadScore", "score", "stage", "status", "budget", "aiInsights", "insights", "lastContact",
    "createdAt", "updatedAt", "owner", "ownerId", "dealValue", "probability", "source",
})
# The lead's own addresses: where a draft may go. Addresses quoted in notes or email bodies never count.
ADDRESS_FIELDS = ("email", "secondaryEmail", "alternateEmails", "additionalEmails")
# Fields naming the lead's own sites: links to their hosts (and the addresses' domains) may stay.
SITE_FIELDS = ("website", "domain", "companyDomain", "url", "linkedin", "linkedinUrl")
# An email's headers, set by the mail system: an answer may name these senders and recipients.
HEADER_FIELDS = ("from", "to", "cc")
MAX_DEPTH = 8
# One value's text at most (a long email is 2-3 KiB; in the prompt too).
MAX_VALUE_CHARS = 4096
MAX_LEAVES = 4_000


class Flatten:
    """Values as text ("key: value; key: value", list items joined by "; "), empty values left
    out, each cut at MAX_VALUE_CHARS; one per request, walking MAX_CONTEXT_VALUES values in all
    (the walk stops at either bound, so a wide or deep context costs no more). Methods, not nested
    functions: a recursive closure is a reference cycle per call, garbage only the GC frees (50,000
    objects and a 45 ms collection every few hundred requests)."""

    def __init__(self) -> None:
        self.left = MAX_CONTEXT_VALUES
        self._parts: list[str] = []
        self._size = 0

    def __call__(self, value: Any) -> str:
        if not isinstance(value, (dict, list)):  # a scalar, most values: what the walk makes of it, without the walk
            self.left -= 1
            return str(value)[:MAX_VALUE_CHARS]
        self._parts, self._size = [], 0
        self._walk(value)
        return "".join(self._parts)[:MAX_VALUE_CHARS]

    def _emit(self, text: str) -> None:
        self._parts.append(text)
        self._size += len(text)

    def _walk(self, node: Any) -> None:
        self.left -= 1
        if isinstance(node, dict):
            first = True
            for key, item in node.items():
                if self._size >= MAX_VALUE_CHARS or self.left <= 0:
                    return
                if item not in (None, "", [], {}):
                    self._emit(f"{key}: " if first else f"; {key}: ")
                    first = False
                    self._walk(item)
        elif isinstance(node, list):
            for i, item in enumerate(node):
                if self._size >= MAX_VALUE_CHARS or self.left <= 0:
                    return
                if i:
                    self._emit("; ")
                self._walk(item)
        else:
            self._emit(str(node)[:MAX_VALUE_CHARS])


def flatten(value: Any) -> str:
    """A context value as one line of text (`key: value; ...`), empty parts left out, bounded."""
    return Flatten()(value)


def trust_of(source: str) -> Trust:
    """The class of a passage or context path: `lead.budget` computed, `emails[0]` outside, `kb/...` knowledge."""
    if source.startswith("kb/"):
        return "knowledge"
    if source.startswith("lead."):
        field = source[5:].split("[", 1)[0].split(".", 1)[0]
        return "computed" if field in COMPUTED_FIELDS else "outside"
    return "outside"


@dataclass(frozen=True, slots=True)
class CrmRecord:
    context: dict[str, Any]  # the request's context, secrets masked: what retrieval and prompts read
    lead: dict[str, Any]
    outside: tuple[tuple[str, str], ...]  # (path, text) of every outside string, as written (for the scan)
    addresses: frozenset[str]  # the lead's own addresses, lowercased
    primary: str  # the lead's main address ("" when it has none)
    hosts: frozenset[str]  # hosts the lead's own record names (sites, address domains)
    correspondents: frozenset[str]  # the from/to/cc addresses of the request's emails (headers, not bodies)
    secrets_masked: int

    @classmethod
    def read(cls, context: dict[str, Any]) -> CrmRecord:
        if isinstance(context, dict) and not context:  # no lead open (most chat): what the walk finds in {}
            return cls(context=context, lead={}, outside=(), addresses=frozenset(), primary="", hosts=frozenset(),
                       correspondents=frozenset(), secrets_masked=0)
        walk = _Walk()
        walk.collect(context, "", 0)
        # One RE2 pass over every string tells whether any needs masking (almost never): only then
        # copy. Read without invisible characters: "AKIA\u200bIOSF..." is still a key to whoever reads it.
        masked = walk.masked_copy(context, "", 0) if may_hold_secret(visible("\n".join(walk.strings))) else context
        assert isinstance(masked, dict)
        lead = masked.get("lead") if isinstance(masked.get("lead"), dict) else {}
        assert isinstance(lead, dict)
        addresses: list[str] = []
        for name in ADDRESS_FIELDS:
            values = lead.get(name)
            for value in values if isinstance(values, list) else [values]:
                if isinstance(value, str) and (address := normalise_address(value)) is not None:
                    addresses.append(address)
        hosts = {a.rpartition("@")[2] for a in addresses}
        for name in SITE_FIELDS:
            if isinstance(lead.get(name), str):
                hosts.update(hosts_in(lead[name]))
        correspondents = set()
        emails = masked.get("emails")
        for email in emails if isinstance(emails, list) else []:
            for header in HEADER_FIELDS:
                value = email.get(header) if isinstance(email, dict) else None
                if isinstance(value, str) and (address := normalise_address(value)) is not None:
                    correspondents.add(address)
        return cls(context=masked, lead=lead, outside=tuple(walk.outside), addresses=frozenset(addresses),
                   primary=addresses[0] if addresses else "", hosts=frozenset(hosts),
                   correspondents=frozenset(correspondents), secrets_masked=walk.masked)


class _Walk:
    """The context's strings, the outside ones as written (for the injection scan: a base64-encoded
    instruction is also a high-entropy token), and, when asked, a copy with secrets masked."""

    __slots__ = ("leaves", "masked", "outside", "strings")

    def __init__(self) -> None:
        self.outside: list[tuple[str, str]] = []
        self.strings: list[str] = []
        self.masked = 0
        self.leaves = MAX_LEAVES

    def collect(self, value: Any, path: str, depth: int, trust: Trust | None = None) -> None:
        # A path's class is settled by its first one or two parts (`trust_of`): worked out there
        # once and handed down, not again for every string below.
        if trust is None and depth >= 1 and not (depth == 1 and path == "lead"):
            trust = trust_of(path)
        if isinstance(value, str):
            self.strings.append(value)
            if self.leaves > 0:
                self.leaves -= 1
                if (trust or trust_of(path)) == "outside":
                    self.outside.append((path, value))
        elif depth < MAX_DEPTH:
            if isinstance(value, dict):
                if trust is None and depth == 1 and path == "lead":  # the lead's fields: `trust_of`, inline
                    for key, item in value.items():
                        field = str(key).split("[", 1)[0].split(".", 1)[0]
                        self.collect(item, f"lead.{key}", 2, "computed" if field in COMPUTED_FIELDS else "outside")
                    return
                for key, item in value.items():
                    self.collect(item, f"{path}.{key}" if path else str(key), depth + 1, trust)
            elif isinstance(value, list):
                for i, item in enumerate(value):
                    self.collect(item, f"{path}[{i}]", depth + 1, trust)

    def masked_copy(self, value: Any, path: str, depth: int) -> Any:
        if isinstance(value, str):
            if len(value) < 8:
                return value
            text, n = mask_secrets(visible(value))
            self.masked += n
            return text if n else value
        if depth >= MAX_DEPTH:
            return value
        if isinstance(value, dict):
            return {key: self.masked_copy(item, path, depth + 1) for key, item in value.items()}
        if isinstance(value, list):
            return [self.masked_copy(item, path, depth + 1) for item in value]
        return value
