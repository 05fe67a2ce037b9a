"""Every configured secret, removed from any text before it is cut, logged or answered.

Secrets are registered at start (provider keys, the admin token, the JWT secret, a Redis
password). Two ways to remove them:

- ``redact(text)``: every registered value, whole, plus the shapes no configuration names
  (``sk-...``, ``AIza...``, ``Bearer ...``). One regex pass; cheap enough for every log line.
- ``redact_fragments(text)``: also any run of 8+ characters copied from a secret, for texts that
  someone else may already have cut or masked (a provider echoing part of a key). A window scan,
  so for error paths only.

Both must run before any truncation: a cut key no longer matches itself.
"""

from __future__ import annotations

import math
import re
import threading

import re2

REDACTED = "[REDACTED]"
FRAGMENT = 8  # the shortest run of a secret worth calling a leak
# Key shapes no configuration names: provider (OpenAI, Google, Anthropic), cloud (AWS access key
# ids), VCS (GitHub, GitLab), Slack, Stripe, JWTs, PEM private keys, bearer tokens.
_SHAPES = (
    r"-----BEGIN [A-Z ]{0,40}PRIVATE KEY-----(?:(?s:.)*?-----END [A-Z ]{0,40}PRIVATE KEY-----)?"
    r"|\b(?:sk|rk|pk)_(?:live|test)_[0-9A-Za-z]{10,}|sk-[A-Za-z0-9_\-*]{8,}|AIza[0-9A-Za-z_\-]{20,}"
    r"|\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[0-9A-Z]{16}\b|\bgh[pousr]_[A-Za-z0-9]{30,}"
    r"|\bgithub_pat_[A-Za-z0-9_]{20,}|\bglpat-[A-Za-z0-9_\-]{20,}|\bxox[abposr]-[A-Za-z0-9\-]{10,}"
    r"|\beyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}"
    r"|Bearer\s+[A-Za-z0-9._\-~+/]+=*"
)
_SHAPES_RE = re.compile(_SHAPES)
# A high-entropy token: 24+ characters of key alphabet mixing upper case, lower case and digits
# (an AWS secret, a pasted API token); UUIDs, hex digests and words are not.
_TOKEN_RE = re.compile(r"(?<![A-Za-z0-9+/_\-])[A-Za-z0-9+/_\-]{24,256}={0,2}(?![A-Za-z0-9+/_\-])")
_MIN_ENTROPY = 3.5
# RE2 answers "is there anything to mask?" in one linear pass; Python's engine, which the
# substitutions need, runs only when it says yes (CRM text rarely holds a key).
# RE2's \s is ASCII; Python's, which the substitutions use, is every Unicode space: widened so RE2
# never says "nothing" where Python finds "Bearer<no-break space>token".
_SHAPES_FOR_RE2 = _SHAPES.replace(r"\s", r"[\s\v\x1c-\x1f\x85\p{Z}]")
_SHAPES_QUICK = re2.compile(_SHAPES_FOR_RE2)
_LONG_RUN = re2.compile(r"[A-Za-z0-9+/_\-]{24}")


class _Registry:
    def __init__(self) -> None:
        self.secrets: tuple[str, ...] = ()
        self.pattern: re.Pattern[str] = _SHAPES_RE
        self.quick = _SHAPES_QUICK
        self.grams: frozenset[str] = frozenset()
        self._lock = threading.Lock()

    def add(self, *values: str | None) -> None:
        with self._lock:
            known = set(self.secrets)
            known.update(v for v in values if v and len(v) >= FRAGMENT)
            # Longest first, so a secret that contains another is removed whole.
            self.secrets = tuple(sorted(known, key=len, reverse=True))
            whole = "|".join(re.escape(s) for s in self.secrets)
            self.pattern = re.compile(f"{whole}|{_SHAPES}" if whole else _SHAPES)
            self.quick = re2.compile(f"{whole}|{_SHAPES_FOR_RE2}" if whole else _SHAPES_FOR_RE2)
            self.grams = frozenset(s[i:i + FRAGMENT] for s in self.secrets for i in range(len(s) - FRAGMENT + 1))

    def clear(self) -> None:
        with self._lock:
            self.secrets, self.pattern, self.quick, self.grams = (), _SHAPES_RE, _SHAPES_QUICK, frozenset()


_registry = _Registry()


def register_secrets(*values: str | None) -> None:
    """Remember secret values (None, empty and values under 8 characters are ignored)."""
    _registry.add(*values)


def forget_secrets() -> None:
    _registry.clear()


def has_secrets() -> bool:
    return bool(_registry.secrets)


def redact(text: str) -> str:
    """Every registered secret and every key-shaped run in ``text`` replaced by [REDACTED]."""
    return _registry.pattern.sub(REDACTED, text)


def _high_entropy(token: str) -> bool:
    if not (any(c.isdigit() for c in token) and any(c.isupper() for c in token)
            and any(c.islower() for c in token)):
        return False
    counts: dict[str, int] = {}
    for c in token:
        counts[c] = counts.get(c, 0) + 1
    n = len(token)
    return -sum(k / n * math.log2(k / n) for k in counts.values()) >= _MIN_ENTROPY


def redacts_nothing(text: str) -> bool:
    """True when ``redact(text)`` is ``text`` (one RE2 pass): callers with many short strings ask
    once for all of them, joined."""
    # As bytes: what RE2 searches either way, without the wrapper's str offset bookkeeping.
    return _registry.quick.search(text.encode()) is None


def may_hold_secret(text: str) -> bool:
    """False when ``text`` certainly holds nothing `mask_secrets` would mask (one RE2 pass):
    callers with many short strings ask once for all of them."""
    return bool(_registry.quick.search(text) or _LONG_RUN.search(text))


def mask_secrets(text: str) -> tuple[str, int]:
    """For text written by outsiders (CRM data): ``redact`` plus high-entropy tokens; how many were masked."""
    count = 0

    def sub(match: re.Match[str]) -> str:
        nonlocal count
        count += 1
        return REDACTED

    if _registry.quick.search(text):
        text = _registry.pattern.sub(sub, text)
    if len(text) >= 24 and _LONG_RUN.search(text):
        def entropy_sub(match: re.Match[str]) -> str:
            nonlocal count
            if not _high_entropy(match.group(0)):
                return match.group(0)
            count += 1
            return REDACTED

        text = _TOKEN_RE.sub(entropy_sub, text)
    return text, count


def redact_fragments(text: str) -> str:
    """``redact``, then any 8+ character run shared with a registered secret replaced too."""
    text = redact(text)
    grams = _registry.grams
    if not grams or len(text) < FRAGMENT:
        return text
    covered_to = -1
    runs: list[tuple[int, int]] = []
    for i in range(len(text) - FRAGMENT + 1):
        if text[i:i + FRAGMENT] in grams:
            if runs and i <= covered_to:
                runs[-1] = (runs[-1][0], i + FRAGMENT)
            else:
                runs.append((i, i + FRAGMENT))
            covered_to = i + FRAGMENT
    if not runs:
        return text
    out, last = [], 0
    for start, end in runs:
        out.append(text[last:start])
        out.append(REDACTED)
        last = end
    out.append(text[last:])
    return "".join(out)


def printable(value: str) -> str:
    """``value`` with every non-printable character escaped (``\\x85``, ``\\u2028``), for log lines:
    tools that split on Unicode line breaks must see one line per event."""
    if value.isprintable():
        return value
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in value)
