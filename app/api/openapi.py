"""What /openapi.json says about the router endpoints: they are plain ASGI (app/api/asgi.py), so
FastAPI cannot see them; they are described here from the same pydantic models they validate with,
and every error is documented as the one error shape."""

from __future__ import annotations

from typing import Any, get_args

from pydantic.json_schema import models_json_schema

from app.api.schemas import ErrorResponse, RouterRequest, RouterResponse, V1Response
from app.vocabulary import Intent, ModalType

ROUTER_HEADERS = [
    {"name": "X-User-ID", "in": "header", "required": False, "schema": {"type": "string", "maxLength": 1024},
     "description": "The rep's user id: the rate-limit key (the client address when missing)."},
    {"name": "X-Org-ID", "in": "header", "required": False, "schema": {"type": "string", "maxLength": 1024},
     "description": "The rep's org: the org-level rate limit."},
    {"name": "X-Request-ID", "in": "header", "required": False, "schema": {"type": "string"},
     "description": "Correlation id, echoed back as a header. Any value is accepted: one that is not 1-128 "
                    "characters of `A-Z a-z 0-9 . _ : -` is replaced by a generated id (never refused)."},
]

_ERROR_STATUSES = {
    "400": "Malformed JSON",
    "401": "IVY_AUTH_MODE=jwt: no valid Bearer token (`error.code`: missing_token, invalid_token, expired_token, "
           "token_not_yet_valid, invalid_issuer, invalid_audience, missing_claim); `WWW-Authenticate: Bearer`",
    "403": "IVY_AUTH_MODE=jwt: X-User-ID or X-Org-ID names someone other than the token (identity_mismatch)",
    "405": "Not a POST", "413": "Body over IVY_MAX_BODY_BYTES",
    "415": "The body is not declared JSON (Content-Type application/json or application/*+json)",
    "422": "A field is missing or invalid (the message names it)",
    "429": "Rate limited, or the org's budget is exhausted (error.code budget_exhausted); Retry-After says "
           "when to come back", "500": "Internal error",
    "503": "IVY_AUTH_MODE=jwt: the token's signing key could not be fetched (auth_unavailable); or the server "
           "was restarting and the request was cut at its shutdown bound (shutting_down); or this worker was full "
           "and shed the request at once (overloaded, with Retry-After: another host may answer)",
}

SSE_DESCRIPTION = (
    "Server-sent events (`text/event-stream`), each `event: <name>` then `data: <JSON>`: `meta` "
    "({request_id, intent, modal_type}) first, `delta` ({text}) for each piece of the answer (one piece for a "
    "cache hit, a modal or the offline provider), then exactly one of `done` (the whole answer: the same "
    "RouterResponse document the request gets as JSON) or `error` ({code, request_id, provider, reason, "
    "message}: `provider_stream_interrupted` when the provider broke off after the first piece, `shutting_down` "
    "when the server restarted mid-answer). A refusal (429, 4xx) comes before `meta`, as a plain JSON error."
)
def _event(name: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"properties": {"event": {"const": name}, "data": {"contentMediaType": "application/json",
                                                               "contentSchema": data}}}


# Before OpenAPI 3.2's itemSchema, a text/event-stream `schema` describes each event (as parsed:
# its `event` and `data` fields, `data` a JSON document).
SSE_EVENT_SCHEMA: dict[str, Any] = {
    "type": "object", "description": SSE_DESCRIPTION, "required": ["event", "data"],
    "properties": {"event": {"type": "string", "enum": ["meta", "delta", "done", "error"]},
                   "data": {"type": "string"}, "id": {"type": "string"}, "retry": {"type": "integer"}},
    "oneOf": [
        _event("meta", {"type": "object", "required": ["request_id", "intent", "modal_type"], "properties": {
            "request_id": {"type": "string"}, "intent": {"type": "string", "enum": list(get_args(Intent))},
            "modal_type": {"anyOf": [{"type": "string", "enum": list(get_args(ModalType))}, {"type": "null"}]}}}),
        _event("delta", {"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}}),
        _event("done", {"$ref": "#/components/schemas/RouterResponse"}),
        _event("error", {"type": "object", "required": ["code", "request_id"], "properties": {
            "code": {"type": "string", "enum": ["provider_stream_interrupted", "shutting_down"]},
            "request_id": {"type": "string"}, "provider": {"type": "string"}, "reason": {"type": "string"},
            "message": {"type": "string"}}}),
    ],
}
SSE_EXAMPLE = (
    'event: meta\ndata: {"request_id":"5f0c...","intent":"conversational","modal_type":null}\n\n'
    'event: delta\ndata: {"text":"Hello"}\n\n'
    'event: done\ndata: {"request_id":"5f0c...","intent":"conversational","provider":"gemini",'
    '"model":"gemini-2.5-flash","answer":"Hello","modal":null,"citations":[],'
    '"fallback":{"used":false,"reason":null,"failures":[]},"intent_detail":{"confidence":0.9,"reasons":[]},'
    '"suggestions":[],"latency_ms":{"total":412.5,"generate":401.2},"cache":"miss"}\n\n'
)


def add_router_endpoints(spec: dict[str, Any]) -> None:
    """Describe ENDPOINTS in an OpenAPI document, from the same pydantic models they validate with."""
    _, defs = models_json_schema(
        [(RouterRequest, "validation"), (RouterResponse, "serialization"), (V1Response, "serialization"),
         (ErrorResponse, "serialization")],
        ref_template="#/components/schemas/{model}",
    )
    spec.setdefault("components", {}).setdefault("schemas", {}).update(defs["$defs"])

    def ref(name: str) -> dict[str, Any]:
        return {"schema": {"$ref": f"#/components/schemas/{name}"}}

    def operation(summary: str, answer: str, answer_description: str, streams: bool) -> dict[str, Any]:
        content: dict[str, Any] = {"application/json": ref(answer)}
        if streams:
            content["text/event-stream"] = {"schema": SSE_EVENT_SCHEMA, "example": SSE_EXAMPLE}
        responses: dict[str, Any] = {"200": {"description": answer_description, "content": content}}
        responses.update({code: {"description": text, "content": {"application/json": ref("ErrorResponse")}}
                          for code, text in _ERROR_STATUSES.items()})
        return {"post": {"summary": summary, "parameters": ROUTER_HEADERS,
                         "requestBody": {"required": True, "content": {"application/json": ref("RouterRequest")}},
                         "responses": responses}}

    spec.setdefault("paths", {}).update({
        "/ai/router/v2": operation(
            "Answer a rep's question (v2: intents, modals, citations, failover)", "RouterResponse",
            "The answer; with `stream: true`, server-sent events: meta, delta..., then done or error", True),
        "/ai/router/": operation(
            "v1 contract (rollback target): never opens a modal, ignores v2 flags", "V1Response",
            "The answer in the v1 shape", False),
    })


def document_errors_truthfully(spec: dict[str, Any]) -> None:
    """Every 4xx/5xx FastAPI documents with its own HTTPValidationError shape is, in fact, the one
    error shape (`ErrorResponse`, see errors.py)."""
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
    for operations in spec.get("paths", {}).values():
        for operation in operations.values():
            for status, response in operation.get("responses", {}).items():
                if status[0] in "45":
                    response["content"] = error
    for unused in ("HTTPValidationError", "ValidationError"):
        spec.get("components", {}).get("schemas", {}).pop(unused, None)
