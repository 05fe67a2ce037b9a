"""The core's answer events (app/domain.py) as server-sent events: the one place SSE bytes are made.

    event: meta   data: {request_id, intent, modal_type}
    event: delta  data: {text}                      (one or more)
    event: done   data: the whole answer, the same document a JSON request gets (RouterResponse)
    event: error  data: {code, request_id, ...}     instead of done (provider_stream_interrupted,
                                                    shutting_down)
"""

from __future__ import annotations

import orjson

from app.domain import Delta, Done, Event, Meta


def frame(name: bytes, data: bytes) -> bytes:
    return b"event: " + name + b"\ndata: " + data + b"\n\n"


def encode(event: Event) -> bytes:
    if isinstance(event, Delta):
        return frame(b"delta", orjson.dumps({"text": event.text}))
    if isinstance(event, Done):
        return frame(b"done", event.response.__pydantic_serializer__.to_json(event.response))
    if isinstance(event, Meta):
        return frame(b"meta", orjson.dumps({"request_id": event.request_id, "intent": event.intent,
                                            "modal_type": event.modal_type}))
    error = {"code": event.code, "request_id": event.request_id, "provider": event.provider,
             "reason": event.reason, "message": event.message}
    return frame(b"error", orjson.dumps({k: v for k, v in error.items() if v is not None}))
