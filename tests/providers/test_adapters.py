"""What the adapters return on success, and how they read the answer envelopes."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Callable
from typing import Any, cast

import aiohttp

from app.providers.base import GenerationRequest, Provider, Usage
from app.providers.clock import Deadline
from app.providers.gemini import GeminiProvider
from app.providers.openai import OpenAIProvider
from tools.fake_provider import FakeProviderServer

MakeRequest = Callable[..., GenerationRequest]


async def answer(provider: OpenAIProvider | GeminiProvider, request: GenerationRequest, seconds: float = 5,
                 usage: Usage | None = None) -> str:
    """The adapter's one call, collected (JSON mode when the request carries a schema)."""
    pieces = provider.stream(request, deadline=Deadline.after(seconds), json_mode=request.json_schema is not None,
                             usage=usage)
    return "".join([piece async for piece in pieces])


def test_adapters_satisfy_the_provider_protocol(
    openai_provider: OpenAIProvider, gemini_provider: GeminiProvider
) -> None:
    providers: list[Provider] = [openai_provider, gemini_provider]  # checked by mypy when typed
    assert [p.name for p in providers] == ["openai", "gemini"]


async def test_a_stream_collected_is_the_answer_to_our_prompt_with_token_counts(
    provider: OpenAIProvider | GeminiProvider, make_request: MakeRequest
) -> None:
    request = make_request("What changed on the Globex account this week?")
    usage = Usage()
    text = await answer(provider, request, usage=usage)
    assert text == "Fake answer to: What changed on the Globex account this week?"
    assert usage.input_tokens and usage.input_tokens > 0
    assert usage.output_tokens and usage.output_tokens > 0


async def test_json_mode_streams_the_raw_json_text(
    provider: OpenAIProvider | GeminiProvider, make_request: MakeRequest, email_schema: dict[str, Any]
) -> None:
    email = json.loads(await answer(provider, make_request(json_schema=email_schema)))
    assert set(email) == {"to", "subject", "body"}
    assert email["to"] == "dana@acme.io"


async def test_json_mode_hands_back_broken_json_unrepaired(
    provider: OpenAIProvider | GeminiProvider,
    fake: FakeProviderServer,
    make_request: MakeRequest,
    email_schema: dict[str, Any],
) -> None:
    fake.set_fault("malformed_json", variant="trailing_comma")
    text = await answer(provider, make_request(json_schema=email_schema))
    assert text.endswith(",}")  # repairing is the caller's job


async def test_stream_yields_pieces_that_add_up_to_the_answer(
    provider: OpenAIProvider | GeminiProvider, make_request: MakeRequest
) -> None:
    pieces = [p async for p in provider.stream(make_request("Stream the pipeline summary"),
                                               deadline=Deadline.after(5))]
    assert len(pieces) > 1
    assert "".join(pieces) == "Fake answer to: Stream the pipeline summary"


async def test_stream_consumer_can_stop_early_without_leaking_the_connection(
    fake: FakeProviderServer, make_request: MakeRequest
) -> None:
    # One connection in the pool: if closing the stream early leaked it, the next call would wait.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
        for provider in (
            OpenAIProvider(session, api_key="k", base_url=fake.openai_base_url, model="m"),
            GeminiProvider(session, api_key="k", base_url=fake.base_url, model="g"),
        ):
            stream = cast(AsyncGenerator[str, None], provider.stream(make_request("a b c d e f"),
                                                                     deadline=Deadline.after(5)))
            assert await anext(stream) == "Fake "
            await stream.aclose()
            assert await answer(provider, make_request("again"), 1) == "Fake answer to: again"


async def test_openai_prompt_without_system_sends_only_the_user_message(
    fake: FakeProviderServer, openai_provider: OpenAIProvider, make_request: MakeRequest
) -> None:
    await answer(openai_provider, make_request("hi", system=""))
    assert fake.requests[-1].json["messages"] == [{"role": "user", "content": "hi"}]


async def test_gemini_prompt_without_system_sends_no_system_instruction(
    fake: FakeProviderServer, gemini_provider: GeminiProvider, make_request: MakeRequest
) -> None:
    await answer(gemini_provider, make_request("hi", system=""))
    assert "systemInstruction" not in fake.requests[-1].json


async def test_base_urls_are_joined_whatever_their_trailing_slash_or_version_suffix(
    fake: FakeProviderServer, session: aiohttp.ClientSession, make_request: MakeRequest
) -> None:
    request = make_request("hi")
    for base in (fake.openai_base_url, fake.openai_base_url + "/"):
        await answer(OpenAIProvider(session, api_key="k", base_url=base, model="m"), request)
    for base in (fake.base_url, fake.base_url + "/", fake.base_url + "/v1beta"):
        await answer(GeminiProvider(session, api_key="k", base_url=base, model="models/g"), request)
    assert [r.path for r in fake.requests] == ["/v1/chat/completions"] * 2 + [
        "/v1beta/models/g:streamGenerateContent?alt=sse"
    ] * 3
