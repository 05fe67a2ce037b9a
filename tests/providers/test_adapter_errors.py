"""Every provider failure lands on the right branch of the error tree, without the API key."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from email.utils import formatdate

import aiohttp
import pytest

from app.providers import http
from app.providers.base import (
    GenerationRequest,
    ProviderAuthError,
    ProviderBadRequest,
    ProviderError,
    ProviderMalformedOutput,
    ProviderRateLimited,
    ProviderTimeout,
    ProviderUnavailable,
)
from app.providers.clock import Deadline
from app.providers.gemini import GeminiProvider
from app.providers.http import parse_retry_after
from app.providers.openai import OpenAIProvider
from tools.fake_provider import FakeProviderServer
from tools.ports import free_port

MakeRequest = Callable[..., GenerationRequest]
Adapter = OpenAIProvider | GeminiProvider

SHORT = 0.3  # seconds: the deadline used against a hanging provider


async def answer(provider: Adapter, request: GenerationRequest, seconds: float) -> str:
    """The adapter's one call, collected (JSON mode when the request carries a schema)."""
    pieces = provider.stream(request, deadline=Deadline.after(seconds), json_mode=request.json_schema is not None)
    return "".join([piece async for piece in pieces])


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        ("503", ProviderUnavailable),
        ("500", ProviderUnavailable),
        ("502", ProviderUnavailable),
        ("reset", ProviderUnavailable),
        ("hang", ProviderTimeout),
        ("401", ProviderAuthError),
        ("403", ProviderAuthError),
        ("bad_key", ProviderAuthError),  # Gemini says 400 INVALID_ARGUMENT + API_KEY_INVALID
        ("400", ProviderBadRequest),
        ("404", ProviderBadRequest),
        ("malformed_body", ProviderMalformedOutput),
        ("empty", ProviderMalformedOutput),
    ],
)
async def test_fault_maps_to_its_error_class(
    provider: Adapter,
    fake: FakeProviderServer,
    make_request: MakeRequest,
    fault: str,
    error: type[ProviderError],
) -> None:
    fake.set_fault(fault)
    with pytest.raises(error) as caught:
        await answer(provider, make_request(), SHORT)
    assert type(caught.value) is error
    assert caught.value.provider == provider.name
    assert len(fake.requests) == 1  # adapters never retry


async def test_rate_limit_carries_the_providers_retry_after(
    provider: Adapter, fake: FakeProviderServer, make_request: MakeRequest
) -> None:
    # OpenAI sends a Retry-After header; Gemini sends google.rpc.RetryInfo in the error body.
    fake.set_fault("429", retry_after=2.5)
    with pytest.raises(ProviderRateLimited) as caught:
        await answer(provider, make_request(), 5)
    assert caught.value.retry_after == 2.5


async def test_bad_request_does_not_count_against_the_provider(
    provider: Adapter, fake: FakeProviderServer, make_request: MakeRequest
) -> None:
    fake.set_fault("400")
    with pytest.raises(ProviderBadRequest) as caught:
        await answer(provider, make_request(json_schema={"type": "object"}), 5)
    assert caught.value.counts_as_failure is False


async def test_connection_refused_is_unavailable(session: aiohttp.ClientSession, make_request: MakeRequest) -> None:
    port = free_port()  # a port nobody listens on
    base = f"http://127.0.0.1:{port}"
    for provider in (
        OpenAIProvider(session, api_key="k", base_url=base + "/v1", model="m"),
        GeminiProvider(session, api_key="k", base_url=base, model="g"),
    ):
        with pytest.raises(ProviderUnavailable):
            await answer(provider, make_request(), 2)


# ---------------------------------------------------------------------------------------------
# Streams


async def collect(provider: Adapter, request: GenerationRequest, timeout: float) -> tuple[list[str], BaseException]:
    pieces: list[str] = []
    with pytest.raises(ProviderError) as caught:
        async for piece in provider.stream(request, deadline=Deadline.after(timeout)):
            pieces.append(piece)
    return pieces, caught.value


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        ("stream_cut", ProviderUnavailable),  # connection dropped mid-body
        ("stream_truncate", ProviderUnavailable),  # clean end, but no [DONE] / finishReason
        ("stream_error", ProviderUnavailable),  # in-stream {"error": ...} event
        ("stream_stall", ProviderTimeout),  # goes quiet past the deadline
    ],
)
async def test_stream_failing_midway_raises_after_yielding_the_first_chunks(
    provider: Adapter, fake: FakeProviderServer, make_request: MakeRequest, fault: str, error: type[ProviderError]
) -> None:
    fake.set_fault(fault, after=2)
    pieces, exc = await collect(provider, make_request("one two three four five"), SHORT)
    assert pieces == ["Fake ", "answer "]
    assert type(exc) is error


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        ("503", ProviderUnavailable),
        ("429", ProviderRateLimited),
        ("401", ProviderAuthError),
        ("reset", ProviderUnavailable),
        ("hang", ProviderTimeout),
        ("empty", ProviderMalformedOutput),
    ],
)
async def test_stream_failing_before_the_first_chunk_yields_nothing(
    provider: Adapter, fake: FakeProviderServer, make_request: MakeRequest, fault: str, error: type[ProviderError]
) -> None:
    fake.set_fault(fault)
    pieces, exc = await collect(provider, make_request(), SHORT)
    assert pieces == []
    assert type(exc) is error


async def test_stream_deadline_bounds_the_first_bytes(
    provider: Adapter, fake: FakeProviderServer, make_request: MakeRequest
) -> None:
    fake.set_fault("latency", ms=1500)
    started = time.monotonic()
    pieces, exc = await collect(provider, make_request("a b c"), 0.4)
    assert type(exc) is ProviderTimeout and pieces == []
    assert time.monotonic() - started < 1.0


async def test_the_adapter_bounds_only_the_first_bytes_and_leaves_the_rest_to_the_chain(
    provider: Adapter, fake: FakeProviderServer, make_request: MakeRequest
) -> None:
    # A timer cannot run across the adapter's yields (it would cancel whoever is suspended there):
    # the chain bounds each later chunk by the same deadline (tests/providers/test_race.py).
    fake.chunk_delay_ms = 60
    started = time.monotonic()
    pieces = [p async for p in provider.stream(make_request("a b c d e f g h i j k l m n o p"),
                                               deadline=Deadline.after(0.4))]
    assert len(pieces) >= 10
    assert time.monotonic() - started > 0.4


# ---------------------------------------------------------------------------------------------
# Secrets


@pytest.mark.parametrize(
    "fault", ["bad_key", "401", "429", "503", "400", "reset", "hang", "malformed_body", "stream_cut"]
)
async def test_api_key_never_appears_in_errors_or_reprs(
    provider: Adapter,
    fake: FakeProviderServer,
    make_request: MakeRequest,
    openai_key: str,
    gemini_key: str,
    fault: str,
) -> None:
    fake.set_fault(fault)
    key = openai_key if provider.name == "openai" else gemini_key
    if fault == "stream_cut":
        _, exc = await collect(provider, make_request(), SHORT)
    else:
        with pytest.raises(ProviderError) as caught:
            await answer(provider, make_request(), SHORT)
        exc = caught.value
    if fault == "bad_key" and provider.name == "openai":
        assert "[REDACTED]" in str(exc)  # the fake echoed the key verbatim; it was scrubbed
    chain: list[BaseException] = []
    node: BaseException | None = exc
    while node is not None and len(chain) < 10:
        chain.append(node)
        node = node.__cause__ or node.__context__
    for link in chain:
        assert key not in str(link)
        assert key not in repr(link)
        assert key not in repr(getattr(link, "args", ()))
    assert key not in repr(provider)
    assert key not in str(provider)


# ---------------------------------------------------------------------------------------------
# Retry-After parsing


@pytest.mark.parametrize(
    ("headers", "error", "expected"),
    [
        ({"retry-after": "3"}, None, 3.0),
        ({"retry-after": "1.5"}, None, 1.5),
        ({"retry-after-ms": "250", "retry-after": "9"}, None, 0.25),
        ({}, {"details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "34s"}]}, 34.0),
        ({}, {"details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "0.5s"}]}, 0.5),
        ({"retry-after": "soon"}, None, None),
        ({}, {"message": "slow down"}, None),
    ],
)
def test_retry_after_is_read_from_headers_or_google_retry_info(
    headers: dict[str, str], error: object, expected: float | None
) -> None:
    assert parse_retry_after(headers, error) == expected


def test_retry_after_http_date_becomes_seconds_from_now() -> None:
    seconds = parse_retry_after({"retry-after": formatdate(time.time() + 30, usegmt=True)})
    assert seconds is not None and 28 <= seconds <= 30


async def test_a_stream_stalled_mid_answer_says_so_with_the_idle_timeout_and_the_time_it_really_took(
    provider: Adapter, fake: FakeProviderServer, make_request: MakeRequest
) -> None:
    fake.set_fault("stream_stall", after=2)
    started = time.monotonic()
    pieces, exc = await collect(provider, make_request("one two three four five"), SHORT)
    took = time.monotonic() - started
    assert pieces == ["Fake ", "answer "] and type(exc) is ProviderTimeout
    assert exc is not None and "no complete answer within" not in exc.message
    assert "stream stalled mid-answer: no data for 0.5s" in exc.message
    reported = float(exc.message.rsplit("cut after ", 1)[1].removesuffix("s)"))
    assert abs(reported - took) < 0.2 and reported > SHORT  # the real time, not the first-bytes deadline


async def test_a_first_bytes_timeout_names_the_deadline_rounded(
    provider: Adapter, fake: FakeProviderServer, make_request: MakeRequest
) -> None:
    fake.set_fault("latency", ms=1500)
    _, exc = await collect(provider, make_request("a b c"), 0.4 - 1e-6)
    assert exc is not None and exc.message == "no complete answer within 0.40s"


async def test_a_consumer_slower_than_the_idle_bound_does_not_make_the_stream_look_stalled(
    provider: Adapter, make_request: MakeRequest
) -> None:
    # The stall bound counts only the adapter's own waits for a byte: time suspended at a yield is
    # its consumer's (a slow client, a busy loop), not the provider's.
    pieces = []
    async for piece in provider.stream(make_request("one two three four"), deadline=Deadline.after(30)):
        pieces.append(piece)
        await asyncio.sleep(0.8)  # past the 0.5 s idle bound at every chunk
    assert "".join(pieces).startswith("Fake answer")
    assert len(pieces) >= 4


async def test_a_provider_silent_before_its_first_byte_is_cut_at_the_idle_bound_when_that_comes_first(
    provider: Adapter, fake: FakeProviderServer, make_request: MakeRequest
) -> None:
    fake.set_fault("hang", seconds=5)
    pieces, exc = await collect(provider, make_request("a b c"), 20)
    assert pieces == [] and type(exc) is ProviderTimeout
    assert exc.message == "no complete answer within 0.50s"  # the idle bound, not the 20 s deadline


async def test_a_stream_flowing_past_its_total_bound_is_cut_and_says_so(
    provider: Adapter, fake: FakeProviderServer, make_request: MakeRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http, "STREAM_MAX_SECONDS", 0.6)
    fake.chunk_delay_ms = 60  # never a stall (0.5 s idle bound), but ~2 s in all
    pieces, exc = await collect(provider, make_request(" ".join(f"w{i}" for i in range(40))), 30)
    assert type(exc) is ProviderTimeout and "stream stalled mid-answer: 0.6s in all" in exc.message
    assert 2 <= len(pieces) < 40
