"""The runbook's two text greps tell the truth by construction, whatever a line carries.

On-call runs `grep "429" logs/ai_router.log` for rate limiting and `grep -i error` for errors.
A log line carries things nobody chose: a client's X-Request-ID or X-User-ID (`rep-429`), a
caller's trace id, a timestamp's microseconds (`.429113`), a latency of 1429.37 ms, a fallback
reason such as `provider_error` on an answered request. So the serializer decides, per line:

- "429" is written as is only on a line about an HTTP 429: `status` 429 (our refusal) or
  `outcome` `rate_limited` (a provider's 429);
- "error" (any case) only on a line that reports one: level ERROR, or an `error` field (the
  failure's text: a provider call, Redis, the cache);

and everywhere else the same value is written in an equivalent JSON form that those two greps do
not match: in strings one character is \\u-escaped (`rep-4\\u00329`, `provider_\\u0065rror`), a
number gets its decimal point moved (`1429.37` -> `14.2937e2`). Every JSON reader (jq, Python)
reads the same values back; only a raw text grep for such a value misses that line, so on-call
matches ids with jq (RUNBOOK.md "Logs"). The ids we generate (request ids, trace and span ids)
never contain "429", and our field names contain neither token on lines where it is hidden.

Cost: one lowercase copy and two substring searches per line (about 1 us); the rewrite runs only
for the lines that carry a hidden token (about 1 in 200: timestamps and latencies).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import orjson

REFUSAL = "429"
ERROR = "error"

_BOTH = re.compile(r"(429|(?i:error))")
_REFUSAL_ONLY = re.compile(r"(429)")
_ERROR_ONLY = re.compile(r"((?i:error))")


def is_about_a_refusal(event: Mapping[str, Any]) -> bool:
    return event.get("status") == 429 or event.get("outcome") == "rate_limited"


def reports_an_error(event: Mapping[str, Any]) -> bool:
    return event.get("level") == "ERROR" or "error" in event


def guard(event: Mapping[str, Any], line: str) -> str:
    """`line` (the event rendered as JSON) as is, or re-rendered with the tokens it may not show hidden.
    (Searched as str, not bytes: twice as fast here.)"""
    hide_refusal = REFUSAL in line and not is_about_a_refusal(event)
    hide_error = ERROR in line.lower() and not reports_an_error(event)
    if not (hide_refusal or hide_error):
        return line
    pattern = _BOTH if hide_refusal and hide_error else _REFUSAL_ONLY if hide_refusal else _ERROR_ONLY
    return orjson.dumps(_Hider(pattern, hide_refusal).value(event), default=str).decode()


class _Hider:
    def __init__(self, pattern: re.Pattern[str], numbers: bool) -> None:
        self.pattern, self.numbers = pattern, numbers

    def value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.string(value) if self.pattern.search(value) else value
        if isinstance(value, bool) or value is None:
            return value
        if isinstance(value, int | float):
            raw = orjson.dumps(value)
            return _number(raw, self) if self.numbers and REFUSAL.encode() in raw else value
        if isinstance(value, Mapping):
            if any(self.pattern.search(str(k)) for k in value):
                # orjson writes keys as they are: write this object ourselves.
                items = (self.encoded(str(k)) + b":" + orjson.dumps(self.value(v), default=str)
                         for k, v in value.items())
                return orjson.Fragment(b"{" + b",".join(items) + b"}")
            return {k: self.value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.value(v) for v in value]
        # Anything else (a Path, an exception): hidden in the form orjson would have written.
        return self.value(orjson.loads(orjson.dumps(value, default=str)))

    def string(self, text: str) -> orjson.Fragment:
        return orjson.Fragment(self.encoded(text))

    def encoded(self, text: str) -> bytes:
        """`text` as a JSON string whose raw bytes hold no hidden token. "429" becomes `4\\u00329`
        and "error" `\\u0065rror`: no escape's own hex digits can rebuild either with a neighbour."""
        parts = self.pattern.split(text)
        out = []
        for i, part in enumerate(parts):
            if i % 2 == 0:
                out.append(orjson.dumps(part)[1:-1])
            elif part == REFUSAL:
                out.append(b"4\\u00329")
            else:
                out.append(b"\\u%04x" % ord(part[0]) + part[1:].encode())
        return b'"' + b"".join(out) + b'"'


def _number(raw: bytes, hider: _Hider) -> Any:
    """The same number with its decimal point inside the "429" (1429.37 -> 14.2937e2): one point
    breaks one occurrence; a number with two is written as a string instead."""
    sign, digit_tuple, exponent = Decimal(raw.decode()).as_tuple()
    digits = "".join(map(str, digit_tuple))
    at = digits.find(REFUSAL)
    if at == -1:
        return orjson.Fragment(raw)
    if not isinstance(exponent, int) or digits.find(REFUSAL, at + 1) != -1:
        return hider.string(raw.decode())
    point = at + 1  # between the 4 and the 2
    shifted = f"{'-' if sign else ''}{digits[:point]}.{digits[point:]}e{exponent + len(digits) - point}"
    return orjson.Fragment(shifted.encode())
