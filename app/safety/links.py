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

import re
from collections.abc import Iterable
from urllib.parse import urlsplit

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
    lowered = link.lower()
    if lowered.startswith("mailto:"):
        return lowered[7:].rpartition("@")[2].split("?")[0] or None
    if re.match(r"(?i)^(?:javascript|data|vbscript|file):", link):
        return None
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


def allowed(host: str | None, domains: Iterable[str]) -> bool:
    if not host:
        return False
    return any(host == d or host.endswith("." + d) for d in domains)


def _is_link(candidate: str) -> bool:
    if "/" in candidate or ":" in candidate or candidate.lower().startswith("www."):
        return True
    bare = _BARE.match(candidate)
    return bare is not None and bare.group(1).lower() in BARE_SUFFIXES


# What any link or address holds: a dot or colon before a letter, "//" or "www". Text without one
# (most words of most answers) skips the link pattern, the costly part.
MAYBE_LINK = re.compile(r"(?i)[.:@][a-z]|//|www")
_WORDS = re.compile(r"(\s+)")


def strip_links(text: str, domains: frozenset[str], addresses: frozenset[str] = frozenset()) -> tuple[str, int]:
    """``text`` with every link to a host outside ``domains`` replaced by "[link removed]", and every
    address neither in ``addresses`` nor at an allowed domain by "[address removed]"; how many.
    Word by word (a link never holds whitespace): only words that could hold one meet the pattern."""
    if not MAYBE_LINK.search(text):
        return text, 0
    parts = _WORDS.split(text)
    removed = 0
    for i in range(0, len(parts), 2):
        if MAYBE_LINK.search(parts[i]):
            parts[i], n = _strip_word(parts[i], domains, addresses)
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
