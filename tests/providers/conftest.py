"""Fixtures for the provider adapters and the fake provider server (loopback only).

Test modules get everything through fixtures (no imports from this file), so they keep working
whatever the owner adds to tests/ later.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from app.providers import prompts
from app.providers.base import GenerationRequest
from app.providers.gemini import GeminiProvider
from app.providers.openai import OpenAIProvider
from tools.fake_provider import FakeProviderServer

# Deliberately not shaped like real keys, so only exact-value scrubbing can hide them.
OPENAI_KEY = "ivy-openai-test-key-7f3a9c21"
GEMINI_KEY = "ivy-gemini-test-key-b84e0d55"
OPENAI_MODEL = "gpt-4.1-mini"
GEMINI_MODEL = "gemini-2.5-flash"
# A stalled stream is given up after this long without a byte (10 s in production).
STREAM_IDLE = 0.5

# The schema the router really sends for the email tool.
EMAIL_SCHEMA: dict[str, Any] = prompts.EMAIL_SCHEMA


def _make_request(
    prompt: str = "Summarise the Acme Corp deal for dana@acme.io in two lines",
    *,
    json_schema: dict[str, Any] | None = None,
    system: str = "You are Ivy, a CRM assistant. Be brief.",
) -> GenerationRequest:
    return GenerationRequest(
        intent="modal" if json_schema else "conversational",
        query=prompt,
        system=system,
        prompt=prompt,
        modal_type="email_composer" if json_schema else None,
        json_schema=json_schema,
        max_output_tokens=256,
        temperature=0.2,
    )


MakeRequest = Callable[..., GenerationRequest]


@pytest.fixture
def make_request() -> MakeRequest:
    """``make_request(prompt=..., json_schema=..., system=...)`` -> GenerationRequest."""
    return _make_request


@pytest.fixture
def email_schema() -> dict[str, Any]:
    return dict(EMAIL_SCHEMA)


@pytest.fixture
def openai_key() -> str:
    return OPENAI_KEY


@pytest.fixture
def gemini_key() -> str:
    return GEMINI_KEY


@pytest.fixture
async def fake() -> AsyncIterator[FakeProviderServer]:
    async with FakeProviderServer(port=0) as server:
        yield server


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
def openai_provider(session: aiohttp.ClientSession, fake: FakeProviderServer) -> OpenAIProvider:
    return OpenAIProvider(session, api_key=OPENAI_KEY, base_url=fake.openai_base_url, model=OPENAI_MODEL,
                          stream_idle_seconds=STREAM_IDLE)


@pytest.fixture
def gemini_provider(session: aiohttp.ClientSession, fake: FakeProviderServer) -> GeminiProvider:
    return GeminiProvider(session, api_key=GEMINI_KEY, base_url=fake.base_url, model=GEMINI_MODEL, thinking_budget=0,
                          stream_idle_seconds=STREAM_IDLE)


@pytest.fixture(params=["openai", "gemini"])
def provider(
    request: pytest.FixtureRequest, openai_provider: OpenAIProvider, gemini_provider: GeminiProvider
) -> OpenAIProvider | GeminiProvider:
    return openai_provider if request.param == "openai" else gemini_provider
