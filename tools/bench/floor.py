"""The floor for scripts/bench_busy.py: FastAPI receiving the query and streaming one Gemini call over
one aiohttp session, nothing else (no limiter, classifier, chain, breaker, log line or metrics).

    FLOOR_GEMINI_URL=http://127.0.0.1:9100 python -m uvicorn tools.bench.floor:app --port 9300

What any Python router in front of the same provider costs at least, per request, on the same
core: the benchmark prints its CPU ms per request and its latency beside the router's.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response

MODEL = "gemini-2.5-flash"
state: dict[str, Any] = {}


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    state["http"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1000))
    state["url"] = f"{os.environ['FLOOR_GEMINI_URL']}/v1beta/models/{MODEL}:streamGenerateContent?alt=sse"
    yield
    await state["http"].close()


app = FastAPI(lifespan=lifespan)


@app.post("/ask")
async def ask(request: Request) -> Response:
    query = orjson.loads(await request.body())["query"]
    body = {"contents": [{"role": "user", "parts": [{"text": query}]}], "generationConfig": {"maxOutputTokens": 256}}
    parts: list[str] = []
    async with state["http"].post(state["url"], json=body, headers={"x-goog-api-key": "floor-key-0000"}) as r:
        async for line in r.content:
            if line.startswith(b"data:"):
                payload = orjson.loads(line[5:])
                for candidate in payload.get("candidates", ()):
                    parts.extend(p.get("text", "") for p in candidate.get("content", {}).get("parts", ()))
    return Response(orjson.dumps({"answer": "".join(parts), "provider": "gemini"}), media_type="application/json")
