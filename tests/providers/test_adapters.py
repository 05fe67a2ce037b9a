"""What the adapters return on success, and how they read the answer envelopes."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Callable
from typing import Any, cast

import aiohttp

from app.providers.base import GenerationRequest, Provider
from app.providers.gemini import GeminiProvider
from app.providers.openai import OpenAIProvider
from tools.fake_provider import FakeProviderServer

MakeRequest = Callable[..., GenerationRequest]


def test_adapters_satisfy_the_provider_protocol(
    openai_provider: OpenAIProvider, gemini_provider: GeminiProvider
) -> None:
    providers: list[Provider] = [openai_provider, gemini_provider]  # checked by mypy when typed
    assert [p.name for p in providers] == ["openai", "gemini"]


async def test_generate_returns_the_answer_to_our_prompt_with_token_counts(
    provider: OpenAIProvider | GeminiProvider, make_request: MakeRequest
) -> None:
    request = make_request("What changed on the Globex account this week?")
    result = await provider.generate(request, timeout=5)
    assert result.text == "Fake answer to: What changed on the Globex account this week?"
    assert result.provider == provider.name
    assert result.model == provider.model
    assert result.input_tokens and result.input_tokens > 0
    assert result.output_tokens and result.output_tokens > 0


async def test_generate_json_returns_the_raw_json_text(
    provider: OpenAIProvider | GeminiProvider, make_request: MakeRequest, email_schema: dict[str, Any]
) -> None:
    result = await provider.generate_json(make_request(json_schema=email_schema), timeout=5)
    email = json.loads(result.text)
    assert set(email) == {"to", "subject", "body"}
    assert email["to"] == "dana@acme.io"


async def test_generate_json_hands_back_broken_json_unrepaired(
    provider: OpenAIProvider | GeminiProvider,
    fake: FakeProviderServer,
    make_request: MakeRequest,
    email_schema: dict[str, Any],
) -> None:
    fake.set_fault("malformed_json", variant="trailing_comma")
    result = await provider.generate_json(make_request(json_schema=email_schema), timeout=5)
    assert result.text.endswith(",}")  # repairing is the caller's job


async def test_stream_yields_pieces_that_add_up_to_the_answer(
    provider: OpenAIProvider | GeminiProvider, make_request: MakeRequest
) -> None:
    pieces = [p async for p in provider.stream(make_request("Stream the pipeline summary"), timeout=5)]
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
            stream = cast(AsyncGenerator[str, None], provider.stream(make_request("a b c d e f"), timeout=5))
            assert await anext(stream) == "Fake "
            await stream.aclose()
            result = await provider.generate(make_request("again"), timeout=1)
            assert result.text == "Fake answer to: again"


async def test_openai_prompt_without_system_sends_only_the_user_message(
    fake: FakeProviderServer, openai_provider: OpenAIProvider, make_request: MakeRequest
) -> None:
    await openai_provider.generate(make_request("hi", system=""), timeout=5)
    assert fake.requests[-1].json["messages"] == [{"role": "user", "content": "hi"}]


async def test_gemini_prompt_without_system_sends_no_system_instruction(
    fake: FakeProviderServer, gemini_provider: GeminiProvider, make_request: MakeRequest
) -> None:
    await gemini_provider.generate(make_request("hi", system=""), timeout=5)
    assert "systemInstruction" not in fake.requests[-1].json


async def test_base_urls_are_joined_whatever_their_trailing_slash_or_version_suffix(
    fake: FakeProviderServer, session: aiohttp.ClientSession, make_request: MakeRequest
) -> None:
    request = make_request("hi")
    for base in (fake.openai_base_url, fake.openai_base_url + "/"):
        await OpenAIProvider(session, api_key="k", base_url=base, model="m").generate(request, timeout=5)
    for base in (fake.base_url, fake.base_url + "/", fake.base_url + "/v1beta"):
        await GeminiProvider(session, api_key="k", base_url=base, model="models/g").generate(request, timeout=5)
    assert [r.path for r in fake.requests] == ["/v1/chat/completions"] * 2 + [
        "/v1beta/models/g:generateContent"
    ] * 3
