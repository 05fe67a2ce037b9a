"""Links in answers and drafts: a link reaches the frontend only when its host is one the lead's
own record names, one the knowledge base names, or one in IVY_ALLOWED_LINK_DOMAINS.

What counts as a link is what a renderer or a reader would follow: anything with a scheme
(`https://`, `//host`, `javascript:`, `data:`, `mailto:`), anything starting `www.`, and a bare
`host.tld/path`; a bare `host.tld` only for the suffixes link finders and readers take for sites
(`BARE_SUFFIXES`: "evil.com" is a link; "Node.js", "lead.email", "README.md" are not, though
.email and .md are top-level domains too). An address (`dana@acme.com`) is a mailto link to its
domain: it stays when it is one the request vouches for or its domain is allowed.
"""

from __future__ import annotations

import functools
import re
from urllib.parse import urlsplit

import re2

from app.safety.text import visible

REMOVED = "[link removed]"
ADDRESS_REMOVED = "[address removed]"
ADDRESS = re.compile(r"(?<![\w.+\-])[\w.+\-]{1,64}@[\w\-]{1,63}(?:\.[\w\-]{1,63})+")
_STOP = r"""[^\s<>"'`)\]}]"""
LINK = re.compile(
    rf"""(?ix)
      (?:\b[a-z][a-z0-9+.\-]{{0,15}}:)?//{_STOP}+                   # scheme://host..., //host...
    | \b(?:javascript|data|vbscript|mailto|file):{_STOP}+            # schemes without //
    | \bwww\.{_STOP}+
    | (?<![@\w.\-/#])(?:[a-z0-9](?:[a-z0-9\-]{{0,61}}[a-z0-9])?\.)+[a-z]{{2,63}}(?::\d{{1,5}})?(?:/{_STOP}*)?
    """
)
_BARE = re.compile(r"(?i)^(?:[a-z0-9\-]+\.)+([a-z]{2,63})$")
BARE_SUFFIXES = frozenset({
    "com", "net", "org", "io", "co", "ai", "app", "dev", "info", "biz", "xyz", "me", "us", "uk", "de", "fr", "es",
    "it", "nl", "ru", "cn", "jp", "br", "in", "ca", "au", "eu", "online", "site", "link", "click", "top", "shop",
    "live", "page", "website", "store", "tech", "cloud", "tk", "ml", "ga", "cf", "gq", "su", "ly", "to", "gl",
})
_TRAILING = ".,;:!?"
_HOSTLIKE = re.compile(r"(?i)(?<![@\w.\-])(?:[a-z0-9](?:[a-z0-9\-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}\b")


def host_of(link: str) -> str | None:
    """The host a link points at, lowercased; None for a scheme with no host (javascript:, data:)."""
    return _cached_host_of(link) if len(link) <= _CACHED_LINK else _host_of(link)


_CACHED_LINK = 512  # 4,096 links of at most this many characters: the cache holds at most 2 M of them


@functools.lru_cache(maxsize=4096)  # a pure function; the same few links (the KB's, the lead's) come back
def _cached_host_of(link: str) -> str | None:
    return _host_of(link)


def _host_of(link: str) -> str | None:
    lowered = link.lower()
    if lowered.startswith("mailto:"):
        return lowered[7:].rpartition("@")[2].split("?")[0] or None
    if re.match(r"(?i)^(?:javascript|data|vbscript|file):", link):
        return None
    # A browser reads "\\" as "/" in a web address: "https://evil.example\\@ours.com" goes to evil.example.
    link = link.replace("\\", "/")
    target = link if "//" in link else "//" + link
    try:
        host = urlsplit(target).hostname
    except ValueError:
        return None
    return host.rstrip(".") if host else None


def hosts_in(text: str) -> set[str]:
    """Every host named in ``text`` (links and bare hosts, addresses' domains too): what a record
    or a knowledge-base page vouches for."""
    found = {h.lower() for h in _HOSTLIKE.findall(text)}
    found.update(a.rpartition("@")[2].lower() for a in re.findall(r"[\w.+\-]+@[\w\-.]+\w", text))
    for match in LINK.finditer(text):
        host = host_of(match.group(0).rstrip(_TRAILING))
        if host:
            found.add(host)
    return found


def allowed(host: str | None, domains: frozenset[str]) -> bool:
    """Is ``host`` one of ``domains`` or below one? (One set lookup per label, however many domains.)"""
    if not host:
        return False
    while True:
        if host in domains:
            return True
        dot = host.find(".")
        if dot < 0:
            return False
        host = host[dot + 1:]


def _is_link(candidate: str) -> bool:
    if "/" in candidate or ":" in candidate or candidate.lower().startswith("www."):
        return True
    bare = _BARE.match(candidate)
    return bare is not None and bare.group(1).lower() in BARE_SUFFIXES


# What any link or address holds: a dot, colon or "@" before a letter, "//" or "www". Only the
# whitespace-delimited tokens holding one (few in most answers, none in most words) meet the link
# pattern, the costly part. ASCII text is found them in by byte search over its characters'
# classes (whitespace " ", "." ":" "@" ".", "/" "/", w "w", other letters "a", the rest "x"), a
# few C-level finds per token found; other text by one RE2 pass.
MAYBE_LINK = re.compile(r"(?i)[.:@][a-z]|//|www")
_CANDIDATES = re2.compile(r"\S*(?:[.:@][A-Za-z]|//|[Ww][Ww][Ww])\S*")
_CLASSES = bytes(
    32 if chr(b).isspace() else 46 if chr(b) in ".:@" else 47 if b == 47 else 119 if chr(b) in "wW"
    else 97 if chr(b).isalpha() else 120 for b in range(256))
_MARKS = (b".a", b".w", b"//", b"www")


def _candidate_spans(text: str) -> list[tuple[int, int]]:
    """The (start, end) of every whitespace-delimited token of ``text`` that could hold a link."""
    if not text.isascii():
        return [m.span() for m in _CANDIDATES.finditer(text)]
    if not ("." in text or ":" in text or "@" in text or "/" in text or "ww" in text.lower()):
        return []  # a few memchr scans: most chunks of a stream, a word or two, hold none of these
    classes = text.encode("ascii").translate(_CLASSES)
    spans: list[tuple[int, int]] = []
    hits = [classes.find(mark) for mark in _MARKS]
    while True:
        found = [h for h in hits if h >= 0]
        if not found:
            return spans
        at = min(found)
        start = classes.rfind(b" ", 0, at) + 1
        end = classes.find(b" ", at)
        if end < 0:
            end = len(classes)
        spans.append((start, end))
        # Each mark is searched again only once passed: linear in the text whatever it holds.
        hits = [classes.find(mark, end) if 0 <= h < end else h for h, mark in zip(hits, _MARKS, strict=True)]


_WORDS = re.compile(r"(\s+)")


def strip_links(text: str, domains: frozenset[str], addresses: frozenset[str] = frozenset()) -> tuple[str, int]:
    """``text`` with every link to a host outside ``domains`` replaced by "[link removed]", and every
    address neither in ``addresses`` nor at an allowed domain by "[address removed]"; how many.
    Token by token (a link never holds whitespace): only tokens that could hold one meet the pattern."""
    if not text.isascii() and visible(text) != text:
        return _strip_invisible(text, domains, addresses)
    spans = _candidate_spans(text)
    if not spans:
        return text, 0
    out: list[str] = []
    last = removed = 0
    for start, end in spans:
        cleaned, n = _strip_word(text[start:end], domains, addresses)
        if n:
            out += (text[last:start], cleaned)
            last = end
            removed += n
    if not removed:
        return text, 0
    out.append(text[last:])
    return "".join(out), removed


def _strip_invisible(text: str, domains: frozenset[str], addresses: frozenset[str]) -> tuple[str, int]:
    """Text with invisible characters: each word read without them ("attacker\u200b@evil.example"
    shows as an address), and kept as written when it holds nothing to remove."""
    parts = _WORDS.split(text)
    removed = 0
    for i in range(0, len(parts), 2):
        word = visible(parts[i])
        if MAYBE_LINK.search(word):
            cleaned, n = _strip_word(word, domains, addresses)
            if n:
                parts[i] = cleaned
                removed += n
    return ("".join(parts), removed) if removed else (text, 0)


def _strip_word(text: str, domains: frozenset[str], addresses: frozenset[str]) -> tuple[str, int]:
    removed = 0
    if "@" in text:
        def replace_address(match: re.Match[str]) -> str:
            nonlocal removed
            address = match.group(0).rstrip(".").lower()
            if address in addresses or allowed(address.rpartition("@")[2], domains):
                return match.group(0)
            removed += 1
            return ADDRESS_REMOVED

        text = ADDRESS.sub(replace_address, text)

    def replace(match: re.Match[str]) -> str:
        nonlocal removed
        raw = match.group(0)
        link = raw.rstrip(_TRAILING)
        if not _is_link(link) or allowed(host_of(link), domains):
            return raw
        removed += 1
        return REMOVED + raw[len(link):]

    return LINK.sub(replace, text), removed
