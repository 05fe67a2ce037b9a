"""OpenAI's chat-completions wire format: the request read into a Call, answers, SSE chunks, errors.

``POST /v1/chat/completions``; ``"stream": true`` answers with SSE events ending ``data: [DONE]``.
Bodies, error bodies and headers are shaped as the real API shapes them, so the SDK parses them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import orjson
from aiohttp import web

from tools.fake_provider.answers import Call, estimate_tokens, out_tokens, positive_int

ERRORS: dict[int, tuple[str, str, str | None]] = {
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


def read_call(body: dict[str, Any]) -> Call:
    fmt = body.get("response_format") or {}
    json_schema = fmt.get("json_schema") if isinstance(fmt, dict) else None
    return Call(
        provider="openai",
        model=str(body.get("model") or ""),
        prompt=last_user_text(body.get("messages")),
        system=system_text(body.get("messages")),
        streaming=bool(body.get("stream")),
        json_mode=isinstance(fmt, dict) and fmt.get("type") in ("json_schema", "json_object"),
        schema=(json_schema or {}).get("schema") if isinstance(json_schema, dict) else None,
        include_usage=bool((body.get("stream_options") or {}).get("include_usage")),
        max_tokens=positive_int(body.get("max_completion_tokens") or body.get("max_tokens")),
    )


def refusal(request: web.Request, call: Call, body: dict[str, Any]) -> web.Response | None:
    """The real API's answer to a request without a key, a model or messages; None when it is fine."""
    auth = request.headers.get("Authorization", "")
    if not auth.startswith("Bearer ") or not auth[7:].strip():
        return error(
            401,
            message="You didn't provide an API key. You need to provide your API key in an "
            "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            code=None,
        )
    if not call.model:
        return error(400, message="you must provide a model parameter", param="model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return error(
            400, message="Invalid 'messages': empty array. Expected an array with minimum length 1.",
            param="messages", code="empty_array",
        )
    return None


def error(
    status: int, *, message: str | None = None, param: str | None = None, code: Any = ...,
    headers: dict[str, str] | None = None,
) -> web.Response:
    default_msg, err_type, default_code = ERRORS.get(
        status, ("Upstream error.", "server_error" if status >= 500 else "invalid_request_error", None)
    )
    payload = {"error": {"message": message or default_msg, "type": err_type, "param": param,
                         "code": default_code if code is ... else code}}
    return web.Response(status=status, body=orjson.dumps(payload), content_type="application/json",
                        headers=headers)


def rate_limited(call: Call, shown: str) -> web.Response:
    return error(
        429, message=f"Rate limit reached for {call.model} on requests per min (RPM): Limit 3, "
        f"Used 3, Requested 1. Please try again in {shown}s.",
        headers={"Retry-After": shown, "x-ratelimit-reset-requests": f"{shown}s"},
    )


def bad_key(request: web.Request) -> web.Response:
    key = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    # The real API masks most of the key; echoing it whole is the worst case adapters must scrub.
    return error(
        401, message=f"Incorrect API key provided: {key}. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
    )


def completion(call: Call, text: str, ids: Iterator[int]) -> dict[str, Any]:
    prompt_tokens, completion_tokens = estimate_tokens(call.prompt), out_tokens(call, text)
    return {
        "id": f"chatcmpl-fake{next(ids):06d}",
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


def stream_events(call: Call, deltas: list[str], ids: Iterator[int]) -> list[bytes]:
    """Every SSE event of a complete streamed answer: a role chunk, the deltas, stop, usage, [DONE]."""
    ident, created = f"chatcmpl-fake{next(ids):06d}", int(time.time())

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
    events.append(chunk({}, "stop"))
    if call.include_usage:
        prompt_tokens, completion_tokens = estimate_tokens(call.prompt), out_tokens(call, "".join(deltas))
        events.append({
            "id": ident, "object": "chat.completion.chunk", "created": created, "model": call.model,
            "choices": [], "usage": {"prompt_tokens": prompt_tokens,
                                     "completion_tokens": completion_tokens,
                                     "total_tokens": prompt_tokens + completion_tokens},
        })
    return [*(b"data: " + orjson.dumps(e) + b"\n\n" for e in events), b"data: [DONE]\n\n"]


def stream_error_event(status: int) -> bytes:
    message, err_type, code = ERRORS.get(status, ERRORS[500])
    body: dict[str, Any] = {"message": message, "type": err_type, "param": None, "code": code}
    return b"data: " + orjson.dumps({"error": body}) + b"\n\n"


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def system_text(messages: Any) -> str:
    if not isinstance(messages, list):
        return ""
    return "\n".join(_text_of(m.get("content")) for m in messages
                     if isinstance(m, dict) and m.get("role") in ("system", "developer"))


def last_user_text(messages: Any) -> str:
    if not isinstance(messages, list):
        return ""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return _text_of(message.get("content"))
    return ""
