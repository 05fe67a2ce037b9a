"""The drain's guard over one answer stream (app/api/serving.py `Guarded`): its first event before the
response starts, then the encoded frames, each recorded; a shutdown cut ends it with `event: error`
(shutting_down); a client that leaves ends it at once. And over real HTTP: a client that leaves
mid-stream ends the work (the provider call) and is logged as a 499."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import orjson

from app.api import sse
from app.api.serving import Drain
from app.domain import Delta, Event, Failed, Meta
from tests.conftest import FakeProviderThread, read_log
from tests.support import leave_after_deltas, uvicorn_server

META = Meta("req-1", "conversational", None, "miss", {}, 0.5)


class Source:
    """An answer's events; after them it waits for ever (a provider that stalls) unless told to end."""

    def __init__(self, *events: Event, stall: bool = True) -> None:
        self.events, self.stall = events, stall
        self.closed = False
        self.waiting = asyncio.Event()

    async def __aiter__(self) -> AsyncIterator[Event]:
        try:
            for event in self.events:
                yield event
            if self.stall:
                self.waiting.set()
                await asyncio.Future()
        finally:
            self.closed = True


async def _frames(drain: Drain, source: Source, *, then: str | None = None
                  ) -> tuple[Event, list[bytes], list[Event], bool]:
    """The first event, the frames and the recorded events of one guarded stream; ``then`` ("cut"
    or "leave") once the source waits after its events."""
    guarded = drain.guard(aiter(source), "req-1")
    first = await guarded.first()
    recorded: list[Event] = []
    frames: list[bytes] = []

    async def pull() -> None:
        async for frame in guarded.frames(sse.encode, recorded.append):
            frames.append(frame)

    pulling = asyncio.ensure_future(pull())
    if then is not None:
        await source.waiting.wait()
        if then == "cut":
            drain.cut()
        else:
            guarded.leave()
    await pulling
    return first, frames, recorded, guarded.gone


def test_a_stream_cut_mid_way_ends_with_an_error_event_shutting_down_and_closes_its_source() -> None:
    drain = Drain()
    source = Source(META, Delta("hello"))
    first, frames, recorded, _ = asyncio.run(_frames(drain, source, then="cut"))
    assert first == META
    assert frames[0] == sse.frame(b"delta", b'{"text":"hello"}')
    assert frames[1].startswith(b"event: error\ndata: ") and len(frames) == 2
    assert orjson.loads(frames[1].split(b"data: ", 1)[1])["code"] == "shutting_down"
    assert isinstance(recorded[-1], Failed) and recorded[-1].code == "shutting_down"
    assert source.closed and drain.open_streams == 0


def test_a_stream_cut_before_its_first_event_starts_with_the_error_and_sends_nothing_after() -> None:
    drain = Drain()
    drain.cut()
    source = Source(META, Delta("hello"))
    first, frames, recorded, _ = asyncio.run(_frames(drain, source))
    assert isinstance(first, Failed) and first.code == "shutting_down"
    assert frames == [] and recorded == []
    assert drain.open_streams == 0


def test_a_stream_that_ends_normally_gives_every_event_encoded_and_recorded_in_order() -> None:
    drain = Drain()
    events = (Delta("a"), Delta("b"), Failed("provider_stream_interrupted", "req-1", provider="gemini"))
    first, frames, recorded, _ = asyncio.run(_frames(drain, Source(META, *events, stall=False)))
    assert first == META
    assert recorded == list(events)  # the first is the caller's to record, before the response starts
    assert frames == [sse.encode(e) for e in events]
    assert drain.open_streams == 0


def test_a_client_that_leaves_ends_the_stream_at_once_without_a_last_event_and_closes_its_source() -> None:
    drain = Drain()
    source = Source(META, Delta("hello"))
    _, frames, recorded, gone = asyncio.run(_frames(drain, source, then="leave"))
    assert frames == [sse.encode(Delta("hello"))] and recorded == [Delta("hello")]
    assert gone and source.closed and drain.open_streams == 0


def test_a_client_that_leaves_mid_stream_over_http_ends_the_provider_call_and_is_logged_as_499(
        tmp_path: Path) -> None:
    fake = FakeProviderThread()
    fake.set_answer("word " * 400)
    fake.set_fault("stream_stall", after=3, seconds=300, provider="gemini")  # stalls far beyond the test
    env = {"ACTIVE_MODEL": "gemini", "GEMINI_API_KEY": "test-gemini-key-0001", "GEMINI_BASE_URL": fake.server.base_url,
           "IVY_CACHE_ENABLED": "false", "IVY_HEDGE_ENABLED": "false", "IVY_LOG_FILE": str(tmp_path / "ai_router.log")}
    try:
        with uvicorn_server(env) as base:
            leave_after_deltas(base, "leaver", orjson.dumps({"query": "hello there", "stream": True}))
            lines = read_log(tmp_path / "ai_router.log",
                             lambda ls: any(x.get("event") == "request" and x.get("status") == 499 for x in ls),
                             timeout=60)
    finally:
        fake.stop()
    (line,) = [x for x in lines if x.get("event") == "request" and x.get("path") == "/ai/router/v2"]
    assert line["status"] == 499 and line["level"] == "INFO"
    assert line["latency_ms"] < 300_000  # ended when the client left, not when the provider's stall did


def test_the_last_word_of_a_stream_is_marked_so_the_response_can_end_with_it() -> None:
    async def run() -> list[bool]:
        guarded = Drain().guard(aiter(Source(META, Delta("a"), Failed("shutting_down", "req-1"), stall=False)), "r")
        await guarded.first()
        return [guarded.last async for _ in guarded.frames(sse.encode, lambda _: None)]

    assert asyncio.run(run()) == [False, True]
