"""The output checks, in code, on every answer before it leaves: one `AnswerGuard` per request.

Text (plain answers, streamed or not, and a lead-insights summary) goes through `TextFilter`:
word by word, so a stream is checked before each word is shown. A word that could begin a run of
the system text is held until the run is decided, so no word of a leaked run reaches the client;
links are checked per word. A whole answer is the same filter fed once, so JSON and the stream
give the same text.

An email draft is checked field by field: `to` is one of the lead's own addresses, subject and
body lose markup and foreign links, and a leak anywhere replaces the draft's text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from app.safety.flags import SafetyReport
from app.safety.leak import NGRAM, REFUSAL, WORD_EDGES, LeakCheck
from app.safety.links import MAYBE_LINK, strip_links
from app.safety.markup import strip_markup
from app.safety.recipient import check_recipient

# The spotlighting mark (app/providers/prompts.py) a model may copy into its answer.
DATAMARK = "\u02c6"
_TOKENS = re.compile(r"\S+\s+")


@dataclass(frozen=True, slots=True)
class OutputPolicy:
    """Per process: the hosts anyone may link to (the KB's and the allow-list) and the leak check."""

    domains: frozenset[str]
    leak: LeakCheck

    @classmethod
    def build(cls, *, allowed_domains: Iterable[str], kb_hosts: Iterable[str], leak: LeakCheck) -> OutputPolicy:
        return cls(frozenset(d.lower().strip(".") for d in (*allowed_domains, *kb_hosts) if d), leak)


class AnswerGuard:
    """One request's checks: the lead's own addresses and hosts on top of the policy's."""

    def __init__(self, policy: OutputPolicy, *, addresses: frozenset[str], primary: str, hosts: frozenset[str],
                 correspondents: frozenset[str] = frozenset(), report: SafetyReport) -> None:
        self.policy = policy
        self.addresses = addresses  # where a draft may go: the lead's own
        self.mentionable = addresses | correspondents  # addresses an answer may name (the emails' senders too)
        self.primary = primary
        self.domains = policy.domains | hosts
        self.report = report

    def text_filter(self) -> TextFilter:
        return TextFilter(self)

    def text(self, answer: str) -> str:
        """A whole answer through the same filter a stream uses."""
        f = self.text_filter()
        shown = f.feed(answer) + f.finish()
        return REFUSAL if f.leaked else shown

    def draft(self, draft: dict[str, Any]) -> dict[str, Any]:
        out = dict(draft)
        to, replaced = check_recipient(str(draft.get("to") or ""), self.addresses, self.primary)
        out["to"] = to
        if replaced:
            self.report.flag("recipient_replaced")
        for name in ("subject", "body"):
            value, had_markup = strip_markup(str(draft.get(name) or ""))
            if had_markup:
                self.report.flag("markup_removed")
            if self.policy.leak.leaks(value):
                self.report.flag("prompt_leak")
                value = REFUSAL if name == "body" else "Follow-up"
            value, removed = strip_links(value.replace(DATAMARK, " "), self.domains, self.addresses)
            if removed:
                self.report.links_removed += removed
                self.report.flag("link_removed")
            out[name] = value
        return out

    def snippet(self, text: str) -> str:
        """A citation's snippet (CRM data shown to the rep): foreign links and addresses removed."""
        cleaned, removed = strip_links(text, self.domains, self.mentionable)
        if removed:
            self.report.links_removed += removed
            self.report.flag("link_removed")
        return cleaned

    def clean_word(self, token: str) -> str:
        if DATAMARK in token:
            token = token.replace(DATAMARK, " ")
        cleaned, removed = strip_links(token, self.domains, self.mentionable)
        if removed:
            self.report.links_removed += removed
            self.report.flag("link_removed")
        return cleaned


class TextFilter:
    """Feed chunks, get back what may be shown; `finish` releases the rest. A word is held only
    while the words from it on are the start of a run of the system text; after a leak nothing
    more is released and `leaked` is set (the answer becomes the refusal)."""

    __slots__ = ("_canary", "_grams", "_guard", "_held", "_prefixes", "_run", "_tail", "leaked")

    def __init__(self, guard: AnswerGuard) -> None:
        self._guard = guard
        leak = guard.policy.leak
        self._canary, self._grams, self._prefixes = leak.canary, leak.grams, leak.prefixes
        self._tail = ""
        self._held: list[tuple[str, str]] = []  # (text to show, normalised word or "")
        self._run: list[str] = []  # the normalised words held: a proper prefix of a system-text gram
        self.leaked = False

    def feed(self, chunk: str) -> str:
        if self.leaked:
            return ""
        text = self._tail + chunk
        out: list[str] = []
        end = 0
        for match in _TOKENS.finditer(text):
            self._take(match.group(0), out)
            end = match.end()
        self._tail = text[end:]
        return "" if self.leaked else "".join(out)

    def finish(self) -> str:
        if self.leaked:
            return ""
        out: list[str] = []
        if self._tail:
            self._take(self._tail, out)
            self._tail = ""
        if self.leaked:
            return ""
        out.extend(shown for shown, _ in self._held)
        self._held.clear()
        self._run.clear()
        return "".join(out)

    def _take(self, token: str, out: list[str]) -> None:
        # The per-word hot path of every answer: the cheap tests inline, the link pattern only for
        # words that could hold a link.
        if self._canary in token:
            self._leaked()
            return
        word = token.lower().strip(WORD_EDGES)
        shown = self._guard.clean_word(token) if MAYBE_LINK.search(token) or DATAMARK in token else token
        run = self._run
        if not run and (word,) not in self._prefixes:  # most words: nothing held, nothing to hold
            out.append(shown)
            return
        held = self._held
        held.append((shown, word))
        if not word:
            if not run:
                out.extend(shown for shown, _ in held)
                held.clear()
            return
        run.append(word)
        if len(run) == NGRAM and tuple(run) in self._grams:
            self._leaked()
            return
        prefixes = self._prefixes
        while run and (len(run) >= NGRAM or tuple(run) not in prefixes):
            run.pop(0)
            self._release_first_word(out)
        if not run:
            out.extend(shown for shown, _ in held)
            held.clear()

    def _release_first_word(self, out: list[str]) -> None:
        while self._held:
            shown, word = self._held.pop(0)
            out.append(shown)
            if word:
                return

    def _leaked(self) -> None:
        self.leaked = True
        self._held.clear()
        self._run.clear()
        self._guard.report.flag("prompt_leak")
