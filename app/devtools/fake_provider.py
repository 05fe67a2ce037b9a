"""A fake OpenAI + Gemini server on loopback, for tests, the benchmark and the local demo.

It speaks both real wire formats (response bodies, SSE framing, error bodies) closely enough
that the official SDKs parse its answers, and it can be told to misbehave.

Run it::

    python -m app.devtools.fake_provider --port 9100 [--latency-ms 150] [--chunk-delay-ms 20]
    python -m app.devtools.fake_provider --port 9100 --realistic [--seed 7] [--time-scale 0.1]
    # then OPENAI_BASE_URL=http://127.0.0.1:9100/v1  GEMINI_BASE_URL=http://127.0.0.1:9100

Realistic mode (``realism.py``) answers after the published providers' time to first token and
output speed, with lognormal answer lengths capped by the request's max output tokens and the
sampled counts in ``usage``; ``GET /_fake/stats`` gives the planned service times per provider.

Or in a test::

    async with FakeProviderServer(port=0) as fake:
        fake.base_url            # http://127.0.0.1:<port>  (Gemini base URL)
        fake.openai_base_url     # http://127.0.0.1:<port>/v1
        fake.set_fault("429", retry_after=2, times=1, provider="gemini")
        fake.requests            # [CapturedRequest(path, headers, json), ...]

Endpoints:

- ``POST /v1/chat/completions`` (OpenAI; ``"stream": true`` answers with SSE ending ``data: [DONE]``)
- ``POST /v1beta/models/{model}:generateContent`` (Gemini; also under ``/v1/models/``, the
  google-genai 3.x default)
- ``POST /v1beta/models/{model}:streamGenerateContent?alt=sse`` (Gemini SSE, CRLF framing, no sentinel)
- admin, never captured: ``GET /_fake/health``, ``POST|DELETE /_fake/fault``, ``POST /_fake/answer``,
  ``GET|DELETE /_fake/requests``, ``POST /_fake/reset``, ``POST /_fake/realism``, ``GET /_fake/stats``

Faults come from the ``X-Fake-Fault`` request header (that request only) or from a standing
setting (``set_fault()`` / ``POST /_fake/fault``), optionally scoped to one provider and
optionally limited to N uses. Header syntax: ``kind[; key=value ...]``, for example
``429; retry_after=2``, ``latency; ms=300``, ``stream_cut; after=3``, ``hang; seconds=5``,
``brownout; share=0.2; seconds=4``,
``malformed_json; variant=fenced``, ``503; latency_ms=200``. See ``FAULT_KINDS``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import re
import socket
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from types import TracebackType
from typing import Any, Literal, NamedTuple, Self

import orjson
from aiohttp import web

from app.devtools.realism import Realism, pad_to_tokens

FakeProvider = Literal["openai", "gemini"]

# kind -> what it does. Numeric aliases ("429", "503", ...) are accepted too.
FAULT_KINDS: dict[str, str] = {
    "latency": "answer normally after latency_ms (alias param: ms)",
    "rate_limit": "429 with Retry-After (OpenAI: header; Gemini: RetryInfo in the body); param retry_after",
    "http_error": "an error status with the provider's real error body; param status (500, 503, 401, ...)",
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
_STREAM_FAULTS = ("stream_cut", "stream_truncate", "stream_stall", "stream_error")
_NUMERIC_ALIASES = {"429": "rate_limit", "timeout": "hang", "connection_reset": "reset"}
_MALFORMED_VARIANTS = ("trailing_comma", "truncated", "fenced")

_OPENAI_ERRORS: dict[int, tuple[str, str, str | None]] = {
    # status -> (message, type, code), as the real API words them
    400: ("Invalid request: the request body could not be processed.", "invalid_request_error", None),
    401: ("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"),
    403: ("Country, region, or territory not supported", "request_forbidden", "unsupported_country"),
    404: ("The model does not exist or you do not have access to it.", "invalid_request_error",
          "model_not_found"),
    429: ("Rate limit reached for requests. Please try again in 1s.", "requests", "rate_limit_exceeded"),
    500: ("The server had an error while processing your request. Sorry about that!", "server_error", None),
    502: ("Bad gateway.", "server_error", None),
    503: ("The engine is currently overloaded, please try again later.", "server_error", None),
    504: ("Gateway timeout.", "server_error", None),
}
_GEMINI_ERRORS: dict[int, tuple[str, str]] = {
    # status -> (message, status string)
    400: ("Request contains an invalid argument.", "INVALID_ARGUMENT"),
    401: ("Request had invalid authentication credentials.", "UNAUTHENTICATED"),
    403: ("The caller does not have permission", "PERMISSION_DENIED"),
    404: ("models/unknown is not found for API version v1beta.", "NOT_FOUND"),
    429: ("You exceeded your current quota, please check your plan and billing details.",
          "RESOURCE_EXHAUSTED"),
    500: ("An internal error has occurred. Please retry or report in "
          "https://developers.generativeai.google/guide/troubleshooting", "INTERNAL"),
    502: ("Bad gateway.", "UNAVAILABLE"),
    503: ("The model is overloaded. Please try again later.", "UNAVAILABLE"),
    504: ("The request timed out. Please try again.", "DEADLINE_EXCEEDED"),
}


class CapturedRequest(NamedTuple):
    """One provider request as the fake received it. ``path`` includes the query string."""

    path: str
    headers: dict[str, str]  # names lowercased
    json: Any  # parsed body, or None when it was not JSON


@dataclass(frozen=True, slots=True)
class Fault:
    kind: str
    status: int | None = None  # http_error
    retry_after: float = 1.0  # rate_limit
    latency_ms: int = 0  # any kind
    seconds: float = 30.0  # hang
    after: int = 2  # stream_cut / stream_truncate
    share: float = 0.2  # brownout
    variant: str = "trailing_comma"  # malformed_json
    times: int | None = None  # None: until cleared
    provider: FakeProvider | None = None  # None: both

    def applies_to(self, *, streaming: bool, json_mode: bool) -> bool:
        if self.kind in _STREAM_FAULTS:
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
        "share": float,
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


# --------------------------------------------------------------------------------------------
# Answer synthesis


def _estimate_tokens(text: str) -> int:
    return max(1, (len(text) + 3) // 4)


def _chunks(text: str) -> list[str]:
    """Split an answer into stream deltas: words for prose, short slices for compact JSON."""
    words = re.findall(r"\S+\s*", text)
    if len(words) >= 4 and "".join(words) == text:
        return words
    size = max(1, min(16, len(text) // 4 or 1))
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


_EMAIL_RE = re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+")


class _SchemaFiller:
    """Builds a small valid instance of a JSON Schema (or Gemini Schema, whose types are upper case)."""

    def __init__(self, root: dict[str, Any], prompt: str) -> None:
        self.root = root
        self.prompt = prompt
        self.summary = prompt[:80]

    def _resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        seen = 0
        while "$ref" in schema and seen < 20:
            ref = str(schema["$ref"])
            node: Any = self.root
            for part in ref.removeprefix("#/").split("/"):
                node = node.get(part, {}) if isinstance(node, dict) else {}
            schema = node if isinstance(node, dict) else {}
            seen += 1
        return schema

    def build(self, schema: Any, name: str = "", depth: int = 0) -> Any:
        if not isinstance(schema, dict) or depth > 12:
            return None
        schema = self._resolve(schema)
        if "const" in schema:
            return schema["const"]
        if schema.get("enum"):
            return schema["enum"][0]
        for key in ("anyOf", "oneOf"):
            options = [s for s in schema.get(key) or [] if self._type_of(s) != "null"]
            if options:
                return self.build(options[0], name, depth + 1)
        if schema.get("allOf"):
            merged: dict[str, Any] = {}
            for part in schema["allOf"]:
                merged.update(self.build(part, name, depth + 1) or {})
            return merged
        kind = self._type_of(schema)
        if kind == "object" or (kind is None and "properties" in schema):
            props: dict[str, Any] = schema.get("properties") or {}
            declared = list(schema.get("propertyOrdering") or schema.get("property_ordering") or [])
            order = declared + [k for k in props if k not in declared]
            return {key: self.build(props[key], key, depth + 1) for key in order if key in props}
        if kind == "array":
            count = max(1, int(schema.get("minItems", 1)))
            count = min(count, int(schema.get("maxItems", count)))
            singular = name[:-1] if name.endswith("s") else name
            return [self.build(schema.get("items") or {"type": "string"}, singular, depth + 1)
                    for _ in range(count)]
        if kind in ("integer", "number"):
            low = schema.get("minimum", schema.get("exclusiveMinimum", 0))
            value = max(0, low) if isinstance(low, int | float) else 0
            if "exclusiveMinimum" in schema:
                value += 1
            maximum = schema.get("maximum")
            if isinstance(maximum, int | float) and value > maximum:
                value = maximum
            return int(value) if kind == "integer" else float(value)
        if kind == "boolean":
            return True
        if kind == "null":
            return None
        return self._string(schema, name)

    @staticmethod
    def _type_of(schema: Any) -> str | None:
        if not isinstance(schema, dict):
            return None
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if str(k).lower() != "null"), "null")
        return str(kind).lower() if kind else None

    def _string(self, schema: dict[str, Any], name: str) -> str:
        key = name.lower()
        fmt = str(schema.get("format", "")).lower()
        emails = _EMAIL_RE.findall(self.prompt)
        if fmt == "email" or key in ("to", "email", "recipient", "cc", "from"):
            value = emails[0] if emails else "jordan.lee@example.com"
        elif fmt == "date-time":
            value = "2025-01-15T09:30:00Z"
        elif fmt == "date":
            value = "2025-01-15"
        elif fmt in ("uri", "url") or key in ("url", "link"):
            value = "https://example.com/"
        elif key == "subject":
            value = "Following up on our conversation"
        elif key == "body":
            value = (f"Hi Jordan,\n\nThanks for your time earlier. Fake answer to: {self.summary}\n\n"
                     "Would Thursday at 10am work for a short call?\n\nBest regards,\nAlex")
        elif key in ("summary", "answer", "text", "content", "reasoning", "explanation"):
            value = f"Fake answer to: {self.summary}"
        else:
            value = f"fake {name or 'value'}"
        min_len = int(schema.get("minLength", 0))
        if len(value) < min_len:
            value = value + "x" * (min_len - len(value))
        max_len = schema.get("maxLength")
        if isinstance(max_len, int):
            value = value[:max_len]
        return value


def build_json_answer(schema: dict[str, Any] | None, prompt: str) -> Any:
    """A deterministic instance of ``schema`` (an email for to/subject/body schemas)."""
    if not schema:
        return {"answer": f"Fake answer to: {prompt[:80]}"}
    return _SchemaFiller(schema, prompt).build(schema)


def _break_json(text: str, variant: str) -> str:
    if variant == "fenced":
        return f"```json\n{text}\n```"
    if variant == "truncated":
        return text[: max(1, len(text) // 2)]
    # trailing_comma
    return text[:-1] + ",}" if text.endswith("}") else text + ","


# --------------------------------------------------------------------------------------------
# The server


@dataclass(slots=True)
class _Call:
    """What one provider request asks for, in provider-neutral terms."""

    provider: FakeProvider
    model: str
    prompt: str
    streaming: bool
    json_mode: bool
    schema: dict[str, Any] | None
    include_usage: bool = False
    fault: Fault | None = None
    max_tokens: int | None = None
    stall: float = 0.0  # brownout seconds, before time scale
    output_tokens: int | None = None  # realistic mode: the planned answer length


class FakeProviderServer:
    """The fake, usable as an async context manager. ``port=0`` picks a free port."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        latency_ms: int = 0,
        chunk_delay_ms: int = 0,
        answer_text: str | None = None,
        shutdown_timeout: float = 1.0,
        max_captured: int = 10_000,
        realism: Realism | None = None,
    ) -> None:
        self.realism = realism  # None: answers at once (plus latency_ms), else published timings
        self.host = host
        self.port = port
        self.latency_ms = latency_ms
        self.chunk_delay_ms = chunk_delay_ms
        self.answer_text = answer_text  # None: "Fake answer to: <prompt>"
        self.json_answer: Any = None  # None: built from the schema
        self.requests: list[CapturedRequest] = []  # oldest dropped beyond max_captured (benchmarks)
        self.max_captured = max_captured
        self._faults: dict[FakeProvider | None, Fault] = {}
        self._ids = itertools.count(1)
        self._closing = asyncio.Event()
        self._shutdown_timeout = shutdown_timeout
        self._runner: web.AppRunner | None = None
        self.app = self._build_app()

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """Root URL; this is the Gemini base URL (google-genai appends /v1beta/...)."""
        return f"http://{self.host}:{self.port}"

    @property
    def openai_base_url(self) -> str:
        return f"{self.base_url}/v1"

    async def start(self) -> None:
        self._closing.clear()
        self._runner = web.AppRunner(
            self.app, access_log=None, handler_cancellation=True, shutdown_timeout=self._shutdown_timeout
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        self._closing.set()  # releases hanging handlers
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # -- programmatic control ----------------------------------------------------------------

    def set_fault(self, kind: str, **params: Any) -> Fault:
        """Install a standing fault, e.g. ``set_fault("503", times=2, provider="openai")``.

        A fault scoped to one provider replaces that provider's previous one; the provider's own
        fault wins over an unscoped one. Faults that do not apply to a request (``stream_cut`` on a
        non-streaming call, ``malformed_json`` on a plain call) leave it alone and are not used up.
        """
        return self.install_fault(make_fault(kind, **params))

    def install_fault(self, fault: Fault) -> Fault:
        self._faults[fault.provider] = fault
        return fault

    def clear_faults(self, provider: FakeProvider | None = None) -> None:
        """Clear every standing fault, or only the one scoped to ``provider``."""
        if provider is None:
            self._faults.clear()
        else:
            self._faults.pop(provider, None)

    @property
    def faults(self) -> list[Fault]:
        return list(self._faults.values())

    def set_answer(self, text: str | None = None, *, json_answer: Any = None) -> None:
        """Fix the answer text (plain calls) and/or the JSON document (JSON-mode calls)."""
        self.answer_text = text
        self.json_answer = json_answer

    def requests_for(self, provider: FakeProvider) -> list[CapturedRequest]:
        if provider == "openai":
            return [r for r in self.requests if r.path.startswith("/v1/chat/")]
        return [r for r in self.requests if "/models/" in r.path]

    def reset(self) -> None:
        self.requests.clear()
        self._faults.clear()
        self.answer_text = None
        self.json_answer = None

    # -- routing -----------------------------------------------------------------------------

    def _build_app(self) -> web.Application:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._openai_chat)
        app.router.add_post("/v1beta/models/{model_action}", self._gemini)
        # google-genai >= 3 defaults to the v1 surface; serve it the same way.
        app.router.add_post("/v1/models/{model_action}", self._gemini)
        app.router.add_get("/_fake/health", self._admin_health)
        app.router.add_post("/_fake/fault", self._admin_set_fault)
        app.router.add_delete("/_fake/fault", self._admin_clear_fault)
        app.router.add_post("/_fake/answer", self._admin_answer)
        app.router.add_get("/_fake/requests", self._admin_requests)
        app.router.add_delete("/_fake/requests", self._admin_clear_requests)
        app.router.add_post("/_fake/reset", self._admin_reset)
        app.router.add_post("/_fake/realism", self._admin_realism)
        app.router.add_get("/_fake/stats", self._admin_stats)
        return app

    async def _capture(self, request: web.Request) -> Any:
        raw = await request.read()
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = None
        headers = {k.lower(): v for k, v in request.headers.items()}
        self.requests.append(CapturedRequest(request.path_qs, headers, body))
        if len(self.requests) > self.max_captured:
            del self.requests[: len(self.requests) - self.max_captured]
        return body

    def _pick_fault(self, request: web.Request, call: _Call) -> Fault | None:
        header = request.headers.get("X-Fake-Fault")
        if header:
            return parse_fault_header(header)  # ValueError -> 400 from the caller
        for scope in (call.provider, None):
            fault = self._faults.get(scope)
            if fault is None or not fault.applies_to(streaming=call.streaming, json_mode=call.json_mode):
                continue
            if fault.times is not None:
                if fault.times <= 1:
                    del self._faults[scope]
                else:
                    self._faults[scope] = replace(fault, times=fault.times - 1)
            return fault
        return None

    # -- OpenAI ------------------------------------------------------------------------------

    async def _openai_chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._capture(request)
        if not isinstance(body, dict):
            return self._openai_error(400, message="We could not parse the JSON body of your request.")
        messages = body.get("messages")
        fmt = body.get("response_format") or {}
        json_schema = fmt.get("json_schema") if isinstance(fmt, dict) else None
        call = _Call(
            provider="openai",
            model=str(body.get("model") or ""),
            prompt=_last_openai_user_text(messages),
            streaming=bool(body.get("stream")),
            json_mode=isinstance(fmt, dict) and fmt.get("type") in ("json_schema", "json_object"),
            schema=(json_schema or {}).get("schema") if isinstance(json_schema, dict) else None,
            include_usage=bool((body.get("stream_options") or {}).get("include_usage")),
            max_tokens=_positive_int(body.get("max_completion_tokens") or body.get("max_tokens")),
        )
        early = await self._apply_fault(request, call)
        if early is not None:
            return early
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or not auth[7:].strip():
            return self._openai_error(
                401,
                message="You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                code=None,
            )
        if not call.model:
            return self._openai_error(400, message="you must provide a model parameter", param="model")
        if not isinstance(messages, list) or not messages:
            return self._openai_error(
                400, message="Invalid 'messages': empty array. Expected an array with minimum length 1.",
                param="messages", code="empty_array",
            )
        return await self._answer(request, call)

    def _openai_error(
        self, status: int, *, message: str | None = None, param: str | None = None, code: Any = ...,
        headers: dict[str, str] | None = None,
    ) -> web.Response:
        default_msg, err_type, default_code = _OPENAI_ERRORS.get(
            status, ("Upstream error.", "server_error" if status >= 500 else "invalid_request_error", None)
        )
        payload = {"error": {"message": message or default_msg, "type": err_type, "param": param,
                             "code": default_code if code is ... else code}}
        return web.Response(status=status, body=orjson.dumps(payload), content_type="application/json",
                            headers=headers)

    def _openai_completion(self, call: _Call, text: str) -> dict[str, Any]:
        prompt_tokens, completion_tokens = _estimate_tokens(call.prompt), _out_tokens(call, text)
        return {
            "id": f"chatcmpl-fake{next(self._ids):06d}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": call.model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None, "annotations": []},
                "logprobs": None,
                "finish_reason": "stop",
            }],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
                "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                              "accepted_prediction_tokens": 0,
                                              "rejected_prediction_tokens": 0},
            },
            "service_tier": "default",
            "system_fingerprint": "fp_fake",
        }

    def _openai_chunks(self, call: _Call, deltas: list[str], *, finish: bool) -> list[bytes]:
        ident, created = f"chatcmpl-fake{next(self._ids):06d}", int(time.time())

        def chunk(delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
            payload: dict[str, Any] = {
                "id": ident, "object": "chat.completion.chunk", "created": created, "model": call.model,
                "service_tier": "default", "system_fingerprint": "fp_fake",
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
            }
            if call.include_usage:
                payload["usage"] = None
            return payload

        events = [chunk({"role": "assistant", "content": "", "refusal": None}, None)]
        events += [chunk({"content": d}, None) for d in deltas]
        if finish:
            events.append(chunk({}, "stop"))
            if call.include_usage:
                prompt_tokens, completion_tokens = _estimate_tokens(call.prompt), _out_tokens(call, "".join(deltas))
                events.append({
                    "id": ident, "object": "chat.completion.chunk", "created": created, "model": call.model,
                    "choices": [], "usage": {"prompt_tokens": prompt_tokens,
                                             "completion_tokens": completion_tokens,
                                             "total_tokens": prompt_tokens + completion_tokens},
                })
        return [b"data: " + orjson.dumps(e) + b"\n\n" for e in events]

    # -- Gemini ------------------------------------------------------------------------------

    async def _gemini(self, request: web.Request) -> web.StreamResponse:
        body = await self._capture(request)
        model, _, action = request.match_info["model_action"].partition(":")
        if action not in ("generateContent", "streamGenerateContent"):
            return self._gemini_error(404, message=f"Method not found: {action or '(none)'}.")
        if not isinstance(body, dict):
            return self._gemini_error(400, message="Invalid JSON payload received.")
        config = body.get("generationConfig") or {}
        json_mode = isinstance(config, dict) and config.get("responseMimeType") == "application/json"
        schema = (config.get("responseJsonSchema") or config.get("responseSchema")) if json_mode else None
        call = _Call(
            provider="gemini",
            model=model,
            prompt=_last_gemini_user_text(body.get("contents")),
            streaming=action == "streamGenerateContent",
            json_mode=json_mode,
            schema=schema if isinstance(schema, dict) else None,
            max_tokens=_positive_int(config.get("maxOutputTokens") if isinstance(config, dict) else None),
        )
        early = await self._apply_fault(request, call)
        if early is not None:
            return early
        if not (request.headers.get("x-goog-api-key") or request.query.get("key")):
            return self._gemini_error(
                403, message="Method doesn't allow unregistered callers (callers without established "
                "identity). Please use API Key or other form of API consumer identity to call this API.",
            )
        contents = body.get("contents")
        if not isinstance(contents, list) or not contents:
            return self._gemini_error(
                400, message="* GenerateContentRequest.contents: contents is not specified"
            )
        if call.streaming and request.query.get("alt") != "sse":
            # The real API would answer a JSON array; neither the SDK nor our adapter asks for that.
            return self._gemini_error(400, message="this fake only streams with ?alt=sse")
        return await self._answer(request, call)

    def _gemini_error(
        self, status: int, *, message: str | None = None, details: list[Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> web.Response:
        default_msg, status_text = _GEMINI_ERRORS.get(
            status, ("Upstream error.", "UNAVAILABLE" if status >= 500 else "FAILED_PRECONDITION")
        )
        error: dict[str, Any] = {"code": status, "message": message or default_msg, "status": status_text}
        if details:
            error["details"] = details
        return web.Response(status=status, body=orjson.dumps({"error": error}),
                            content_type="application/json", headers=headers)

    def _gemini_response(self, call: _Call, text: str, *, finish: bool = True, so_far: str | None = None
                         ) -> dict[str, Any]:
        # Each chunk of a real stream carries the running totals; `so_far` is the text until now.
        prompt_tokens = _estimate_tokens(call.prompt)
        out_tokens = _out_tokens(call, text) if so_far is None or (finish and call.output_tokens) else \
            _estimate_tokens(so_far)
        candidate: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"}, "index": 0}
        if finish:
            candidate["finishReason"] = "STOP"
        return {
            "candidates": [candidate],
            "usageMetadata": {
                "promptTokenCount": prompt_tokens,
                "candidatesTokenCount": out_tokens,
                "totalTokenCount": prompt_tokens + out_tokens,
                "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt_tokens}],
            },
            "modelVersion": call.model,
            "responseId": f"fake-{next(self._ids):06d}",
        }

    # -- shared answering --------------------------------------------------------------------

    async def _apply_fault(self, request: web.Request, call: _Call) -> web.StreamResponse | None:
        """Sleep the latency, and answer right away for faults that replace the answer."""
        try:
            fault = self._pick_fault(request, call)
        except ValueError as exc:
            return self._error(call.provider, 400, message=f"bad X-Fake-Fault header: {exc}")
        call.fault = fault
        delay = self.latency_ms + (fault.latency_ms if fault else 0)
        if delay:
            await asyncio.sleep(delay / 1000)
        if fault is None:
            return None
        if fault.kind == "rate_limit":
            return self._rate_limited(call, fault)
        if fault.kind == "http_error":
            assert fault.status is not None
            return self._error(call.provider, fault.status)
        if fault.kind == "bad_key":
            return self._bad_key(request, call)
        if fault.kind == "brownout":
            rng = self.realism or _DEFAULT_CHANCE
            if rng.chance(fault.share):
                call.stall = fault.seconds
            return None
        if fault.kind == "hang":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), fault.seconds)
            return None  # a very slow provider eventually answers
        if fault.kind == "reset":
            _abort_connection(request, rst=True)
            return web.Response(status=500)  # never reaches the client
        if fault.kind == "malformed_body":
            return web.Response(
                status=200, body=b'{"id": "broken", "choices": [', content_type="application/json"
            )
        return None

    def _error(self, provider: FakeProvider, status: int, *, message: str | None = None) -> web.Response:
        if provider == "openai":
            return self._openai_error(status, message=message)
        return self._gemini_error(status, message=message)

    def _rate_limited(self, call: _Call, fault: Fault) -> web.Response:
        seconds = fault.retry_after
        shown = f"{seconds:g}"
        if call.provider == "openai":
            return self._openai_error(
                429, message=f"Rate limit reached for {call.model} on requests per min (RPM): Limit 3, "
                f"Used 3, Requested 1. Please try again in {shown}s.",
                headers={"Retry-After": shown, "x-ratelimit-reset-requests": f"{shown}s"},
            )
        # Gemini puts the delay in the body (google.rpc.RetryInfo), not in a Retry-After header.
        return self._gemini_error(429, details=[
            {"@type": "type.googleapis.com/google.rpc.QuotaFailure",
             "violations": [{
                 "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                 "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
             }]},
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{shown}s"},
        ])

    def _bad_key(self, request: web.Request, call: _Call) -> web.Response:
        if call.provider == "openai":
            key = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
            # The real API masks most of the key; echoing it whole is the worst case adapters must scrub.
            return self._openai_error(
                401, message=f"Incorrect API key provided: {key}. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
            )
        # Gemini does not echo the key; a gateway in front of it may, so this fake does (the worst case).
        key = request.headers.get("x-goog-api-key", "")
        return self._gemini_error(400, message=f"API key not valid: {key}. Please pass a valid API key.", details=[
            {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
             "domain": "googleapis.com", "metadata": {"service": "generativelanguage.googleapis.com"}},
        ])

    def _answer_text(self, call: _Call, fault: Fault | None) -> str:
        if call.json_mode:
            doc = self.json_answer
            if doc is None:
                doc = build_json_answer(call.schema, call.prompt)
            # A str is the model's raw text (e.g. prose instead of JSON); anything else is serialised.
            text = doc if isinstance(doc, str) else orjson.dumps(doc).decode()
            if fault is not None and fault.kind == "malformed_json":
                text = _break_json(text, fault.variant)
        else:
            text = self.answer_text if self.answer_text is not None else f"Fake answer to: {call.prompt[:80]}"
        if fault is not None and fault.kind == "empty":
            text = ""
        return text

    async def _answer(self, request: web.Request, call: _Call) -> web.StreamResponse:
        fault = call.fault
        text = self._answer_text(call, fault)
        writing = 0.0
        loop = asyncio.get_running_loop()
        began = loop.time()
        plan = None
        if self.realism is not None:
            scale = self.realism.time_scale
            plan = self.realism.plan(call.provider, json_mode=call.json_mode, max_tokens=call.max_tokens,
                                     stall=call.stall)
            call.output_tokens = plan.tokens
            if not call.json_mode and text and self.answer_text is None:
                text = pad_to_tokens(text, plan.tokens)
            writing = plan.writing * scale
            await self._sleep((plan.total if not call.streaming else plan.ttft) * scale)
        elif call.stall:
            await self._sleep(call.stall)
        if not call.streaming:
            payload = (self._openai_completion(call, text) if call.provider == "openai"
                       else self._gemini_response(call, text))
            response = web.Response(body=orjson.dumps(payload), content_type="application/json")
            if plan is not None and self.realism is not None:
                took = loop.time() - began
                self.realism.measured(plan, first_byte=took, finished=took)
            return response

        deltas = _chunks(text) if text else []
        if self.realism is not None and len(deltas) > 8:
            # Providers send a few tokens a chunk; about 8 tokens (32 characters) keeps the fake cheap.
            deltas = _regroup(deltas, 32)
        events = self._stream_events(call, deltas)
        kind = fault.kind if fault is not None else None
        split = len(events)
        if fault is not None and kind in _STREAM_FAULTS:
            # Stop after `after` deltas, never after the last one (that would be a whole answer).
            stop_at = min(fault.after, max(len(deltas) - 1, 0))
            split = stop_at + (1 if call.provider == "openai" else 0)  # OpenAI leads with a role chunk
        head, tail = events[:split], events[split:]

        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                           "Cache-Control": "no-cache"})
        await resp.prepare(request)
        pace = writing / max(1, len(events) - 1)  # the first chunk is out at ttft, the rest at speed
        if plan is not None and self.realism is not None:
            self.realism.measured(plan, first_byte=loop.time() - began)
        await self._write_events(resp, head, pace)
        if kind == "stream_cut":
            # The chunks already written reach the client, then the connection drops without the
            # terminating zero-length chunk: the client sees an incomplete payload.
            _abort_connection(request, rst=False)
            return resp
        if kind == "stream_error":
            status = fault.status if fault is not None and fault.status else 500
            await resp.write(self._stream_error_event(call.provider, status))
        elif kind == "stream_stall":
            assert fault is not None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), fault.seconds)
            await self._write_events(resp, tail, pace)
        elif kind != "stream_truncate":
            await self._write_events(resp, tail, pace)
        await resp.write_eof()
        if plan is not None and self.realism is not None:
            self.realism.measured(plan, finished=loop.time() - began)
        return resp

    async def _write_events(self, resp: web.StreamResponse, events: list[bytes], pace: float = 0.0) -> None:
        loop = asyncio.get_running_loop()
        step = self.chunk_delay_ms / 1000 + pace
        start = loop.time()
        for i, event in enumerate(events):
            await resp.write(event)
            if step:
                # Absolute times, so the overhead of each write does not add up over a long answer.
                await asyncio.sleep(max(0.0, start + (i + 1) * step - loop.time()))

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake up when the server stops (a stalled answer must not block shutdown)."""
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), seconds)

    def _stream_events(self, call: _Call, deltas: list[str]) -> list[bytes]:
        """Every SSE event of a complete streamed answer, framed as the provider frames them."""
        if call.provider == "openai":
            return [*self._openai_chunks(call, deltas, finish=True), b"data: [DONE]\n\n"]
        pieces = deltas or [""]
        events, so_far = [], ""
        for i, piece in enumerate(pieces):
            so_far += piece
            payload = self._gemini_response(call, piece, finish=i == len(pieces) - 1, so_far=so_far)
            events.append(b"data: " + orjson.dumps(payload) + b"\r\n\r\n")
        return events

    def _stream_error_event(self, provider: FakeProvider, status: int) -> bytes:
        if provider == "openai":
            message, err_type, code = _OPENAI_ERRORS.get(status, _OPENAI_ERRORS[500])
            error: dict[str, Any] = {"message": message, "type": err_type, "param": None, "code": code}
            return b"data: " + orjson.dumps({"error": error}) + b"\n\n"
        message, status_text = _GEMINI_ERRORS.get(status, _GEMINI_ERRORS[500])
        error = {"code": status, "message": message, "status": status_text}
        return b"data: " + orjson.dumps({"error": error}) + b"\r\n\r\n"

    # -- admin -------------------------------------------------------------------------------

    async def _admin_health(self, _: web.Request) -> web.Response:
        return web.json_response({"ok": True, "faults": [asdict(f) for f in self.faults]})

    async def _admin_set_fault(self, request: web.Request) -> web.Response:
        try:
            params = orjson.loads(await request.read())
            if not isinstance(params, dict) or "kind" not in params:
                raise ValueError('body must be a JSON object with "kind"')
            fault = self.set_fault(str(params.pop("kind")), **params)
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"fault": asdict(fault)})

    async def _admin_clear_fault(self, request: web.Request) -> web.Response:
        provider = request.query.get("provider")
        if provider in ("openai", "gemini"):
            self.clear_faults("openai" if provider == "openai" else "gemini")
        else:
            self.clear_faults()
        return web.json_response({"faults": [asdict(f) for f in self.faults]})

    async def _admin_answer(self, request: web.Request) -> web.Response:
        try:
            params = orjson.loads(await request.read() or b"{}")
        except orjson.JSONDecodeError:
            return web.json_response({"error": "body must be JSON"}, status=400)
        if not isinstance(params, dict):
            return web.json_response({"error": "body must be a JSON object"}, status=400)
        self.set_answer(params.get("text"), json_answer=params.get("json"))
        return web.json_response({"text": self.answer_text, "json": self.json_answer})

    async def _admin_requests(self, _: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps([r._asdict() for r in self.requests]),
                            content_type="application/json")

    async def _admin_clear_requests(self, _: web.Request) -> web.Response:
        self.requests.clear()
        return web.json_response({"cleared": True})

    async def _admin_realism(self, request: web.Request) -> web.Response:
        """``{"enabled": true, "seed": 7, "time_scale": 1.0}``: switch realistic timings on or off."""
        try:
            params = orjson.loads(await request.read() or b"{}")
            if not isinstance(params, dict):
                raise ValueError("body must be a JSON object")
            if params.get("enabled", True):
                self.realism = Realism(seed=int(params.get("seed", 0)), time_scale=float(params.get("time_scale", 1.0)))
            else:
                self.realism = None
        except (ValueError, TypeError, orjson.JSONDecodeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"realistic": self.realism is not None})

    async def _admin_stats(self, _: web.Request) -> web.Response:
        """Per provider: calls planned in realistic mode and their service / first-token percentiles."""
        return web.json_response(self.realism.stats() if self.realism is not None else {})

    async def _admin_reset(self, _: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"reset": True})


class _Chance:
    """Brownout draws when realistic mode is off."""

    def __init__(self) -> None:
        import random

        self._rng = random.Random(0)

    def chance(self, share: float) -> bool:
        return self._rng.random() < share


_DEFAULT_CHANCE = _Chance()


def _regroup(pieces: list[str], size: int) -> list[str]:
    out: list[str] = []
    for piece in pieces:
        if out and len(out[-1]) + len(piece) <= size:
            out[-1] += piece
        else:
            out.append(piece)
    return out


def _positive_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _out_tokens(call: _Call, text: str) -> int:
    return call.output_tokens if call.output_tokens is not None else _estimate_tokens(text)


def _abort_connection(request: web.Request, *, rst: bool) -> None:
    transport = request.transport
    if transport is None:
        return
    if rst:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    else:
        transport.close()  # flushes what was written, then FIN


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def _last_openai_user_text(messages: Any) -> str:
    if not isinstance(messages, list):
        return ""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return _text_of(message.get("content"))
    return ""


def _last_gemini_user_text(contents: Any) -> str:
    if not isinstance(contents, list):
        return ""
    for content in reversed(contents):
        if isinstance(content, dict) and content.get("role", "user") == "user":
            parts = content.get("parts") or []
            return "".join(str(p.get("text", "")) for p in parts if isinstance(p, dict))
    return ""


# --------------------------------------------------------------------------------------------
# CLI


async def _serve(args: argparse.Namespace) -> None:
    fake = FakeProviderServer(
        host=args.host, port=args.port, latency_ms=args.latency_ms, chunk_delay_ms=args.chunk_delay_ms,
        answer_text=args.answer,
        realism=Realism(seed=args.seed, time_scale=args.time_scale) if args.realistic else None,
    )
    if args.fault:
        fake.install_fault(parse_fault_header(args.fault))
    async with fake:
        print(f"fake provider listening on {fake.base_url}", file=sys.stderr)
        print(f"  OPENAI_BASE_URL={fake.openai_base_url}  GEMINI_BASE_URL={fake.base_url}", file=sys.stderr)
        print(f"  faults: POST {fake.base_url}/_fake/fault {{\"kind\": \"503\", \"times\": 2}}",
              file=sys.stderr)
        await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m app.devtools.fake_provider", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--latency-ms", type=int, default=0, help="added before every answer")
    parser.add_argument("--chunk-delay-ms", type=int, default=0, help="pause between stream chunks")
    parser.add_argument("--answer", default=None, help="fixed plain answer text")
    parser.add_argument("--fault", default=None, help='standing fault, header syntax, e.g. "503; times=3"')
    parser.add_argument("--realistic", action="store_true",
                        help="published provider timings: TTFT, output speed, answer lengths (app/devtools/realism.py)")
    parser.add_argument("--seed", type=int, default=0, help="realistic mode: the random seed")
    parser.add_argument("--time-scale", type=float, default=1.0, help="realistic mode: multiply every sleep")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
