"""Gemini's generateContent wire format: the request read into a Call, answers, SSE chunks, errors.

``POST /v1beta/models/{model}:generateContent`` (also under ``/v1/models/``, the google-genai 3.x
default) and ``:streamGenerateContent?alt=sse`` (CRLF framing, no end sentinel). Bodies and error
bodies are shaped as the real API shapes them, so the SDK parses them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
from aiohttp import web

from tools.fake_provider.answers import Call, estimate_tokens, out_tokens, positive_int

ERRORS: dict[int, tuple[str, str]] = {
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
ACTIONS = ("generateContent", "streamGenerateContent")


def read_call(model: str, action: str, body: dict[str, Any]) -> Call:
    config = body.get("generationConfig") or {}
    json_mode = isinstance(config, dict) and config.get("responseMimeType") == "application/json"
    schema = (config.get("responseJsonSchema") or config.get("responseSchema")) if json_mode else None
    return Call(
        provider="gemini",
        model=model,
        prompt=last_user_text(body.get("contents")),
        system=system_text(body.get("systemInstruction") or body.get("system_instruction")),
        streaming=action == "streamGenerateContent",
        json_mode=json_mode,
        schema=schema if isinstance(schema, dict) else None,
        max_tokens=positive_int(config.get("maxOutputTokens") if isinstance(config, dict) else None),
    )


def refusal(request: web.Request, call: Call, body: dict[str, Any]) -> web.Response | None:
    """The real API's answer to a request without a key or contents; None when it is fine."""
    if not (request.headers.get("x-goog-api-key") or request.query.get("key")):
        return error(
            403, message="Method doesn't allow unregistered callers (callers without established "
            "identity). Please use API Key or other form of API consumer identity to call this API.",
        )
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        return error(
            400, message="* GenerateContentRequest.contents: contents is not specified"
        )
    if call.streaming and request.query.get("alt") != "sse":
        # The real API would answer a JSON array; neither the SDK nor our adapter asks for that.
        return error(400, message="this fake only streams with ?alt=sse")
    return None


def error(
    status: int, *, message: str | None = None, details: list[Any] | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    default_msg, status_text = ERRORS.get(
        status, ("Upstream error.", "UNAVAILABLE" if status >= 500 else "FAILED_PRECONDITION")
    )
    body: dict[str, Any] = {"code": status, "message": message or default_msg, "status": status_text}
    if details:
        body["details"] = details
    return web.Response(status=status, body=orjson.dumps({"error": body}),
                        content_type="application/json", headers=headers)


def rate_limited(shown: str) -> web.Response:
    # Gemini puts the delay in the body (google.rpc.RetryInfo), not in a Retry-After header.
    return error(429, details=[
        {"@type": "type.googleapis.com/google.rpc.QuotaFailure",
         "violations": [{
             "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
             "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
         }]},
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{shown}s"},
    ])


def bad_key(request: web.Request) -> web.Response:
    # Gemini does not echo the key; a gateway in front of it may, so this fake does (the worst case).
    key = request.headers.get("x-goog-api-key", "")
    return error(400, message=f"API key not valid: {key}. Please pass a valid API key.", details=[
        {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
         "domain": "googleapis.com", "metadata": {"service": "generativelanguage.googleapis.com"}},
    ])


def response(call: Call, text: str, ids: Iterator[int], *, finish: bool = True, so_far: str | None = None
             ) -> dict[str, Any]:
    # Each chunk of a real stream carries the running totals; `so_far` is the text until now.
    prompt_tokens = estimate_tokens(call.prompt)
    out = out_tokens(call, text) if so_far is None or (finish and call.output_tokens) else estimate_tokens(so_far)
    candidate: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"}, "index": 0}
    if finish:
        candidate["finishReason"] = "STOP"
    return {
        "candidates": [candidate],
        "usageMetadata": {
            "promptTokenCount": prompt_tokens,
            "candidatesTokenCount": out,
            "totalTokenCount": prompt_tokens + out,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt_tokens}],
        },
        "modelVersion": call.model,
        "responseId": f"fake-{next(ids):06d}",
    }


def stream_events(call: Call, deltas: list[str], ids: Iterator[int]) -> list[bytes]:
    """Every SSE event of a complete streamed answer; the last one carries finishReason."""
    pieces = deltas or [""]
    events, so_far = [], ""
    for i, piece in enumerate(pieces):
        so_far += piece
        payload = response(call, piece, ids, finish=i == len(pieces) - 1, so_far=so_far)
        events.append(b"data: " + orjson.dumps(payload) + b"\r\n\r\n")
    return events


def stream_error_event(status: int) -> bytes:
    message, status_text = ERRORS.get(status, ERRORS[500])
    body = {"code": status, "message": message, "status": status_text}
    return b"data: " + orjson.dumps({"error": body}) + b"\r\n\r\n"


def system_text(instruction: Any) -> str:
    if not isinstance(instruction, dict):
        return ""
    parts = instruction.get("parts") or []
    return "".join(str(p.get("text", "")) for p in parts if isinstance(p, dict))


def last_user_text(contents: Any) -> str:
    if not isinstance(contents, list):
        return ""
    for content in reversed(contents):
        if isinstance(content, dict) and content.get("role", "user") == "user":
            parts = content.get("parts") or []
            return "".join(str(p.get("text", "")) for p in parts if isinstance(p, dict))
    return ""
