"""Response helpers: orjson-rendered JSON for FastAPI routes, and a whole JSON response on plain ASGI."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import JSONResponse
from starlette.types import Send


class FastJSONResponse(JSONResponse):
    """JSON rendered by orjson (FastAPI's ORJSONResponse is deprecated; this is all it did)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


async def send_json(send: Send, status: int, body: bytes, headers: dict[str, str]) -> None:
    """A whole JSON response on a plain ASGI `send` (the router endpoints, the middleware's 413)."""
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
