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

import re
import threading

REDACTED = "[REDACTED]"
FRAGMENT = 8  # the shortest run of a secret worth calling a leak
_SHAPES = r"sk-[A-Za-z0-9_\-*]{8,}|AIza[0-9A-Za-z_\-]{20,}|Bearer\s+[A-Za-z0-9._\-~+/]+=*"
_SHAPES_RE = re.compile(_SHAPES)


class _Registry:
    def __init__(self) -> None:
        self.secrets: tuple[str, ...] = ()
        self.pattern: re.Pattern[str] = _SHAPES_RE
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
            self.grams = frozenset(s[i:i + FRAGMENT] for s in self.secrets for i in range(len(s) - FRAGMENT + 1))

    def clear(self) -> None:
        with self._lock:
            self.secrets, self.pattern, self.grams = (), _SHAPES_RE, frozenset()


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
