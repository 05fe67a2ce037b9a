"""Rate-limit keys: a user or org id from a request header turned into a bounded, safe key part."""

from __future__ import annotations

import hashlib
import unicodedata

MAX_ID_LENGTH = 64
_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._@-+")


def normalise_id(raw: str | None, *, kind: str) -> str | None:
    """Turn a header value into a bounded, collision-free key part.

    Plain ids (short, safe characters) stay readable as ``u:<id>``; anything else — long,
    exotic characters, braces that would hijack a Redis Cluster hash tag — becomes
    ``h:<sha256 prefix>``. The prefixes keep the two spaces apart, so no raw id can
    impersonate a hashed one.
    """
    if raw is None:
        return None
    value = unicodedata.normalize("NFKC", raw).strip()
    if not value:
        return None
    if len(value) <= MAX_ID_LENGTH and all(c in _SAFE for c in value):
        return f"{kind}:{value}"
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return f"{kind}h:{digest}"
