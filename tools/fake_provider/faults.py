"""The fake's faults: their kinds, the ``X-Fake-Fault`` header syntax, and the standing ones.

Header syntax: ``kind[; key=value ...]``, for example ``429; retry_after=2``, ``latency; ms=300``,
``stream_cut; after=3``, ``hang; seconds=5``, ``brownout; share=0.2; seconds=4``,
``malformed_json; variant=fenced``, ``503; latency_ms=200``. See ``FAULT_KINDS``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

FakeProvider = Literal["openai", "gemini"]

# kind -> what it does. Numeric aliases ("429", "503", ...) are accepted too.
FAULT_KINDS: dict[str, str] = {
    "latency": "answer normally after latency_ms (alias param: ms)",
    "rate_limit": "429 with Retry-After (OpenAI: header; Gemini: RetryInfo in the body); param retry_after",
    "http_error": "an error status with the provider's real error body; param status (500, 503, 401, ...), "
                  "message (the body's error message instead of the real one's)",
    "bad_key": "the provider's real 'invalid key' answer (OpenAI 401; Gemini 400 API_KEY_INVALID)",
    "hang": "hold the request for `seconds` (default 30) or until the server stops, then answer",
    "brownout": "a `share` of calls (default 0.2) stall `seconds` (default 4, times the realistic time scale) "
                "before their first byte; the rest answer normally",
    "reset": "abort the TCP connection (RST) before any response byte",
    "malformed_json": "JSON-mode only: broken JSON text; param variant = trailing_comma|truncated|fenced",
    "malformed_body": "200 whose body is not the provider's envelope (not JSON)",
    "empty": "200 with an empty answer text",
    "stream_cut": "streams only: send `after` chunks (default 2), then drop the connection",
    "stream_truncate": "streams only: send `after` chunks, then end cleanly without [DONE] / finishReason",
    "stream_stall": "streams only: send `after` chunks, pause `seconds` (default 30), then the rest",
    "stream_error": "streams only: send `after` chunks, then an in-stream error event (param status, 500)",
}
STREAM_FAULTS = ("stream_cut", "stream_truncate", "stream_stall", "stream_error")
_NUMERIC_ALIASES = {"429": "rate_limit", "timeout": "hang", "connection_reset": "reset"}
_MALFORMED_VARIANTS = ("trailing_comma", "truncated", "fenced")


@dataclass(frozen=True, slots=True)
class Fault:
    kind: str
    status: int | None = None  # http_error
    message: str | None = None  # http_error: the error body's message (None: the provider's own)
    retry_after: float = 1.0  # rate_limit
    latency_ms: int = 0  # any kind
    seconds: float = 30.0  # hang
    after: int = 2  # stream_cut / stream_truncate
    share: float = 0.2  # brownout
    variant: str = "trailing_comma"  # malformed_json
    times: int | None = None  # None: until cleared
    provider: FakeProvider | None = None  # None: both

    def applies_to(self, *, streaming: bool, json_mode: bool) -> bool:
        if self.kind in STREAM_FAULTS:
            return streaming
        if self.kind == "malformed_json":
            return json_mode
        return True


def make_fault(kind: str, **params: Any) -> Fault:
    """Build a Fault from a kind or alias ("429", "503", "timeout", ...) and its parameters."""
    kind = kind.strip().lower()
    kind = _NUMERIC_ALIASES.get(kind, kind)
    if kind.isdigit():
        params.setdefault("status", int(kind))
        kind = "http_error"
    if kind not in FAULT_KINDS:
        raise ValueError(f"unknown fault kind {kind!r}; known: {', '.join(FAULT_KINDS)}")
    if "ms" in params:
        params["latency_ms"] = params.pop("ms")
    if kind == "brownout":
        params.setdefault("seconds", 4.0)
    if kind == "http_error" and not params.get("status"):
        raise ValueError("http_error needs a status")
    if "variant" in params and params["variant"] not in _MALFORMED_VARIANTS:
        raise ValueError(f"variant must be one of {_MALFORMED_VARIANTS}")
    conv: dict[str, Callable[[Any], Any]] = {
        "status": int, "retry_after": float, "latency_ms": int, "seconds": float, "after": int,
        "variant": str, "times": lambda v: None if v is None else int(v), "provider": lambda v: v or None,
        "share": float, "message": str,
    }
    unknown = set(params) - set(conv)
    if unknown:
        raise ValueError(f"unknown fault parameter(s): {', '.join(sorted(unknown))}")
    if params.get("provider") not in (None, "", "openai", "gemini"):
        raise ValueError("provider must be openai, gemini or absent")
    return Fault(kind=kind, **{k: conv[k](v) for k, v in params.items()})


def parse_fault_header(value: str) -> Fault:
    """``"429; retry_after=2"`` -> Fault. Raises ValueError on nonsense."""
    head, *rest = [part.strip() for part in value.split(";") if part.strip()] or [""]
    params: dict[str, Any] = {}
    for item in rest:
        key, sep, val = item.partition("=")
        if not sep:
            raise ValueError(f"fault parameter {item!r} is not key=value")
        params[key.strip().lower()] = val.strip()
    return make_fault(head, **params)


class StandingFaults:
    """The standing faults: at most one per provider scope (None: both providers)."""

    def __init__(self) -> None:
        self._faults: dict[FakeProvider | None, Fault] = {}

    def install(self, fault: Fault) -> Fault:
        self._faults[fault.provider] = fault
        return fault

    def clear(self, provider: FakeProvider | None = None) -> None:
        """Clear every standing fault, or only the one scoped to ``provider``."""
        if provider is None:
            self._faults.clear()
        else:
            self._faults.pop(provider, None)

    def all(self) -> list[Fault]:
        return list(self._faults.values())

    def take(self, provider: FakeProvider, *, streaming: bool, json_mode: bool) -> Fault | None:
        """The fault for this call (the provider's own before an unscoped one), one use spent."""
        for scope in (provider, None):
            fault = self._faults.get(scope)
            if fault is None or not fault.applies_to(streaming=streaming, json_mode=json_mode):
                continue
            if fault.times is not None:
                if fault.times <= 1:
                    del self._faults[scope]
                else:
                    self._faults[scope] = replace(fault, times=fault.times - 1)
            return fault
        return None


def break_json(text: str, variant: str) -> str:
    """The ``malformed_json`` fault's text: fenced, cut in half, or with a trailing comma."""
    if variant == "fenced":
        return f"```json\n{text}\n```"
    if variant == "truncated":
        return text[: max(1, len(text) // 2)]
    # trailing_comma
    return text[:-1] + ",}" if text.endswith("}") else text + ","


class _Chance:
    """Brownout draws when realistic mode is off."""

    def __init__(self) -> None:
        self._rng = random.Random(0)

    def chance(self, share: float) -> bool:
        return self._rng.random() < share


DEFAULT_CHANCE = _Chance()
