"""SSE read off the wire however the network cuts it: events split mid-line and mid-CRLF, two
events in one write, and Gemini's running usage counts taken from the last chunk of a stream,
also when the stream is left half-way; a byte that is not UTF-8 replaced, as a decode would."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from itertools import pairwise

import aiohttp
import orjson
import pytest
from aiohttp import web

from app.providers.base import Usage
from app.providers.clock import Deadline
from app.providers.gemini import GeminiProvider
from tests.providers.conftest import MakeRequest
from tools.ports import free_port


def chunk(text: str, output: int, finish: str | None = None) -> bytes:
    candidate: dict[str, object] = {"content": {"parts": [{"text": text}], "role": "model"}}
    if finish:
        candidate["finishReason"] = finish
    payload = {"candidates": [candidate], "modelVersion": "gemini-2.5-flash",
               "usageMetadata": {"promptTokenCount": 7, "candidatesTokenCount": output}}
    return b"data: " + orjson.dumps(payload) + b"\r\n\r\n"


WIRE = chunk("Hello ", 1) + chunk("there, ", 2) + chunk("friend.", 3, "STOP")
# Cut mid-"data:", mid-JSON, between \r and \n, and two events plus part of a third in one write.
CUTS = [3, 40, WIRE.index(b"\r\n") + 1, WIRE.index(b"friend") - 10]


async def serve(writes: list[bytes], hold: asyncio.Event | None = None) -> tuple[web.AppRunner, str]:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i, piece in enumerate(writes):
            await response.write(piece)
            await asyncio.sleep(0.01)  # a write of its own on the wire
            if hold is not None and i == 0:
                await hold.wait()
        return response

    app = web.Application()
    app.router.add_post("/v1beta/models/{action}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def test_events_cut_anywhere_by_the_network_arrive_whole_and_in_order(
        session: aiohttp.ClientSession, make_request: MakeRequest) -> None:
    bounds = [0, *CUTS, len(WIRE)]
    runner, base = await serve([WIRE[a:b] for a, b in pairwise(bounds)])
    try:
        provider = GeminiProvider(session, api_key="test-gemini-key-0001", base_url=base, model="gemini-2.5-flash")
        usage = Usage()
        pieces = [p async for p in provider.stream(make_request(), deadline=Deadline.after(10), usage=usage)]
    finally:
        await runner.cleanup()
    assert pieces == ["Hello ", "there, ", "friend."]
    assert (usage.input_tokens, usage.output_tokens, usage.finish_reason) == (7, 3, "STOP")


async def test_a_stream_left_half_way_keeps_the_last_running_counts(
        session: aiohttp.ClientSession, make_request: MakeRequest) -> None:
    hold = asyncio.Event()
    runner, base = await serve([chunk("Hello ", 1) + chunk("there, ", 2), chunk("friend.", 3, "STOP")], hold)
    try:
        provider = GeminiProvider(session, api_key="test-gemini-key-0001", base_url=base, model="gemini-2.5-flash")
        usage = Usage()
        stream = provider.stream(make_request(), deadline=Deadline.after(10), usage=usage)
        assert [await anext(stream), await anext(stream)] == ["Hello ", "there, "]
        await stream.aclose()  # type: ignore[attr-defined]  # the client went away
    finally:
        hold.set()
        await runner.cleanup()
    assert (usage.input_tokens, usage.output_tokens, usage.finish_reason) == (7, 2, None)


async def test_a_byte_that_is_not_utf8_in_a_piece_is_read_as_a_replacement_character_not_a_failure(
        session: aiohttp.ClientSession, make_request: MakeRequest) -> None:
    bad = chunk("caf\u00e9 ", 1).replace("\u00e9".encode(), b"\xe9")  # Latin-1's e-acute: not UTF-8
    runner, base = await serve([bad, chunk("ok.", 2, "STOP")])
    try:
        provider = GeminiProvider(session, api_key="test-gemini-key-0001", base_url=base, model="gemini-2.5-flash")
        pieces = [p async for p in provider.stream(make_request(), deadline=Deadline.after(10))]
    finally:
        await runner.cleanup()
    assert pieces == ["caf\ufffd ", "ok."]
