"""The floor for any Python router: a FastAPI app that forwards the body to the upstream, nothing else.

    BENCH_UPSTREAM_URL=http://127.0.0.1:9200/v1/chat/completions \\
        python -m uvicorn --app-dir scripts bench_proxy:app --port 9300 --workers 1 --no-access-log

``POST /v1/chat/completions`` sends the request's body bytes to ``BENCH_UPSTREAM_URL`` over one
aiohttp session (created in the lifespan, same connector limit as the router's) and returns the
upstream's status and bytes. No validation, logging, metrics or rate limiting: the same server,
event loop and HTTP client as the router, with none of its work.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
from fastapi import FastAPI, Request, Response

UPSTREAM_URL = os.environ.get("BENCH_UPSTREAM_URL", "http://127.0.0.1:9200/v1/chat/completions")
HEADERS = {"Content-Type": "application/json", "Authorization": "Bearer sk-bench"}


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    app.state.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1000))
    try:
        yield
    finally:
        await app.state.session.close()


app = FastAPI(lifespan=lifespan)


@app.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    body = await request.body()
    session: aiohttp.ClientSession = request.app.state.session
    async with session.post(UPSTREAM_URL, data=body, headers=HEADERS) as upstream:
        data = await upstream.read()
        return Response(content=data, status_code=upstream.status, media_type="application/json")
