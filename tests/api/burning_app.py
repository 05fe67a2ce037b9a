"""The router as operators run it, plus one test route that keeps its event loop on the CPU:
``POST /_test/burn?ms=N`` spins the loop thread for N ms of its own CPU time before answering, as a
CPU-heavy request would. Served by `uvicorn tests.api.burning_app:app` (tests/api/test_admission.py);
it is not a router path, so the door never sheds it and it spends no limiter token."""

from __future__ import annotations

import time
from urllib.parse import parse_qs

from starlette.types import Receive, Scope, Send

from app.main import app as ivy


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "http" and scope["path"] == "/_test/burn":
        ms = float(parse_qs(scope["query_string"].decode()).get("ms", ["20"])[0])
        until = time.thread_time() + ms / 1000
        while time.thread_time() < until:
            pass
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    await ivy(scope, receive, send)
