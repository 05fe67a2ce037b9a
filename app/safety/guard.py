"""The output checks, in code, on every answer before it leaves: one `AnswerGuard` per request.

Text (plain answers, streamed or not, and a lead-insights summary) goes through `TextFilter`:
a stream is checked chunk by chunk before any of it is shown. Words that could begin a run of
the system text are held until the run is decided, so no word of a leaked run reaches the
client; links are checked in whole tokens. A whole answer is the same filter fed once, so JSON
and the stream give the same text.

An email draft is checked field by field: `to` is one of the lead's own addresses, subject and
body lose markup and foreign links, and a leak anywhere replaces the draft's text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from app.safety.flags import SafetyReport
from app.safety.leak import NGRAM, REFUSAL, LeakCheck, ascii_words, words
from app.safety.links import strip_links
from app.safety.markup import strip_markup
from app.safety.recipient import check_recipient

# The spotlighting mark (app/providers/prompts.py) a model may copy into its answer.
DATAMARK = "\u02c6"


# Knowledge-base texts whose verdict `AnswerGuard.knowledge_snippet` keeps: far above the KB's
# sections (46 shipped), so it only bounds what an IVY_KNOWLEDGE_DIR of any size could pin.
KNOWLEDGE_VERDICTS_KEPT = 4096


@dataclass(frozen=True, slots=True)
class OutputPolicy:
    """Per process: the hosts anyone may link to (the KB's and the allow-list) and the leak check."""

    domains: frozenset[str]
    leak: LeakCheck
    # knowledge-base text -> it holds no link or address these domains alone would remove
    knowledge_clean: dict[str, bool] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def build(cls, *, allowed_domains: Iterable[str], kb_hosts: Iterable[str], leak: LeakCheck) -> OutputPolicy:
        return cls(frozenset(d.lower().strip(".") for d in (*allowed_domains, *kb_hosts) if d), leak)


class AnswerGuard:
    """One request's checks: the lead's own addresses and hosts on top of the policy's."""

    def __init__(self, policy: OutputPolicy, *, addresses: frozenset[str], primary: str, hosts: frozenset[str],
                 correspondents: frozenset[str] = frozenset(), report: SafetyReport) -> None:
        self.policy = policy
        self.addresses = addresses  # where a draft may go: the lead's own
        # addresses an answer may name (the emails' senders too); a union copies, so only when it adds
        self.mentionable = addresses | correspondents if correspondents else addresses
        self.primary = primary
        self.domains = policy.domains | hosts if hosts else policy.domains
        self.report = report

    def text_filter(self) -> TextFilter:
        return TextFilter(self)

    def text(self, answer: str) -> str:
        """A whole answer through the same filter a stream uses."""
        f = self.text_filter()
        shown = f.whole(answer)
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

    def knowledge_snippet(self, text: str) -> str:
        """`snippet` of a knowledge-base passage's text. The KB does not change while the process
        runs, and a guard's domains and addresses only add to the policy's (`allowed` is
        monotone in them): a text from which the policy's domains alone remove nothing loses
        nothing to any request's guard, so it is returned as it is, found so once per text."""
        verdicts = self.policy.knowledge_clean
        clean = verdicts.get(text)
        if clean is None:
            if len(verdicts) >= KNOWLEDGE_VERDICTS_KEPT:
                verdicts.clear()
            clean = verdicts[text] = not strip_links(text, self.policy.domains)[1]
        return text if clean else self.snippet(text)

    def clean(self, text: str) -> str:
        """Answer text: foreign links and addresses removed (whole tokens only: see TextFilter)."""
        cleaned, removed = strip_links(text, self.domains, self.mentionable)
        if removed:
            self.report.links_removed += removed
            self.report.flag("link_removed")
        return cleaned


class TextFilter:
    """Feed chunks, get back what may be shown; `finish` releases the rest. Words are held only
    while the words from the first of them on are the start of a run of the system text; after a
    leak nothing more is released and `leaked` is set (the answer becomes the refusal).

    Each chunk is checked whole, never word by word: only whole whitespace-delimited tokens are
    checked (the unfinished last one waits for the next chunk, so a link or the canary split
    across chunks is read whole), links by one pattern search over them, the system text's runs
    by one set test over their word 8-grams; the canary is looked for in the words run together,
    with the end of the previous chunk's, so a canary written in pieces is caught too."""

    __slots__ = ("_guard", "_held", "_leak", "_run", "_seen", "_starts", "_tail", "leaked")

    def __init__(self, guard: AnswerGuard) -> None:
        self._guard = guard
        self._leak = guard.policy.leak
        self._tail: list[str] = []  # the unfinished last token, in pieces (no whitespace yet)
        self._held = ""  # checked text not shown yet: from the first word of `_run` on
        self._run: list[str] = []  # the words held: a proper prefix of a run of the system text
        self._starts: list[int] = []  # where each one's token starts in `_held` (the first at 0)
        self._seen = ""  # the last characters of the words seen so far, run together
        self.leaked = False

    def feed(self, chunk: str) -> str:
        if self.leaked or not chunk:
            return ""
        if DATAMARK in chunk:
            chunk = chunk.replace(DATAMARK, " ")
        tail = self._tail
        if chunk[-1].isspace():
            complete, rest = chunk, ""
        else:
            last = chunk.rsplit(None, 1)[-1]  # scans from the end: linear whatever the chunk holds
            if len(last) == len(chunk):
                tail.append(chunk)
                return ""
            complete, rest = chunk[:len(chunk) - len(last)], last
        if tail:
            tail.append(complete)
            complete = "".join(tail)
        self._tail = [rest] if rest else []
        return self._take(complete, final=False)

    def whole(self, text: str) -> str:
        """A whole answer in one piece: what `feed` then `finish` would show, with nothing to hold."""
        if self.leaked:
            return ""
        if DATAMARK in text:
            text = text.replace(DATAMARK, " ")
        rest, self._tail = "".join(self._tail), []
        return self._take(rest + text, final=True)

    def finish(self) -> str:
        if self.leaked:
            return ""
        rest = "".join(self._tail)
        self._tail = []
        return self._take(rest, final=True)

    def _take(self, text: str, *, final: bool) -> str:
        # The hot path of every stream (a chunk is a word or two): ASCII text that cannot hold a
        # link (a few memchr scans) skips the link check, and its words are one translate.
        leak = self._leak
        if text.isascii():
            lowered = text.lower()
            if "." in text or ":" in text or "@" in text or "/" in text or "ww" in lowered:
                text = self._guard.clean(text)
                lowered = text.lower()
            ws = ascii_words(lowered)
        else:
            text = self._guard.clean(text)
            ws = words(text)
        seen = self._seen + (ws[0] if len(ws) == 1 else "".join(ws))
        held = self._run
        run = held + ws if held else ws
        for mark in leak.marks:
            if mark in seen:
                self._leaked()
                return ""
        if len(run) >= NGRAM and leak.repeats(run):
            self._leaked()
            return ""
        self._seen = seen[-leak.overlap:] if leak.overlap else ""
        base = len(self._held)
        shown = self._held + text if base else text
        if final or not run:
            n = 0
        elif len(run) == 1:  # most chunks of a stream: one word, nothing held before it
            n = 1 if (run[0],) in leak.prefixes else 0
        else:
            n = leak.held(run)
        if not n:
            if base:
                self._held, self._run, self._starts = "", [], []
            return shown
        # Where each of the n words held starts: those of this text found from its end, the
        # others kept from before (never a walk back through all that is held).
        m = min(n, len(ws))
        starts = [base + i for i in _token_starts(text, m)] if m else []
        if m < n:
            starts = self._starts[len(self._starts) - (n - m):] + starts
        cut = starts[0]
        self._held, self._run, self._starts = shown[cut:], run[-n:], [i - cut for i in starts]
        return shown[:cut]

    def _leaked(self) -> None:
        self.leaked = True
        self._held, self._run, self._starts, self._tail = "", [], [], []
        self._guard.report.flag("prompt_leak")


_TOKEN = re.compile(r"\S+")


def _token_starts(text: str, n: int) -> list[int]:
    """Where the whitespace-delimited token of each of the last ``n`` words of ``text`` starts
    (a whole token, so a word is never cut): the tokens are read from the end, as few as needed."""
    stripped = text.rstrip()
    last = stripped.rsplit(None, 1)[-1] if stripped else ""
    if last and len(words(last)) >= n:  # most often: the words held are the last token's
        return [len(stripped) - len(last)] * n
    k = n
    while True:
        parts = text.rsplit(None, k)
        base = len(parts[0]) if len(parts) > k else 0
        starts: list[int] = []
        for token in _TOKEN.finditer(text, base):
            starts.extend([token.start()] * len(words(token.group())))
        if len(starts) >= n or not base:
            break
        k *= 2
    if len(starts) < n:  # the text's words read whole and token by token differ: hold it all
        return [0] * (n - len(starts)) + starts
    return starts[-n:]
