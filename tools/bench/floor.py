"""The floor of issue 20's comparisons (scripts/bench_busy.py, scripts/bench_cpu.py): FastAPI receiving
the query and streaming one Gemini call over one aiohttp session, nothing else (no limiter, intent,
retrieval, safety, chain, breaker, log line or metrics): what any Python router in front of the same
provider costs at least, per request, on the same core.

    GEMINI_BASE_URL=http://127.0.0.1:PORT python -m uvicorn tools.bench.floor:app --port N

`POST /ai/router/v2` takes the router's body: with `"stream": true` it answers the same SSE events
the router streams (`delta` per upstream chunk, then `done`), otherwise one JSON answer.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse

URL = f"{os.environ.get('GEMINI_BASE_URL', 'http://127.0.0.1:8081')}/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
HEADERS = {"x-goog-api-key": os.environ.get("GEMINI_API_KEY", "floor-key"), "Content-Type": "application/json"}
SESSION: list[aiohttp.ClientSession] = []


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    SESSION.append(aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)))
    yield
    await SESSION.pop().close()


app = FastAPI(lifespan=lifespan)


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


async def _texts(query: str) -> AsyncIterator[str]:
    body = orjson.dumps({"contents": [{"role": "user", "parts": [{"text": query}]}],
                         "generationConfig": {"temperature": 0.3, "maxOutputTokens": 512}})
    async with SESSION[0].post(URL, data=body, headers=HEADERS) as resp:
        async for line in resp.content:
            if line.startswith(b"data:"):
                chunk = orjson.loads(line[5:])
                yield "".join(p.get("text", "") for p in chunk["candidates"][0]["content"]["parts"])


@app.post("/ai/router/v2")
async def answer(request: Request) -> Response:
    asked = orjson.loads(await request.body())
    if not asked.get("stream"):
        text = "".join([t async for t in _texts(asked["query"])])
        return Response(orjson.dumps({"answer": text, "provider": "gemini"}), media_type="application/json")

    async def events() -> AsyncIterator[bytes]:
        yield b'event: meta\ndata: {"intent":"general"}\n\n'
        async for text in _texts(asked["query"]):
            yield b"event: delta\ndata: " + orjson.dumps({"text": text}) + b"\n\n"
        yield b'event: done\ndata: {"provider":"gemini","fallback":{"reason":null}}\n\n'

    return StreamingResponse(events(), media_type="text/event-stream")
