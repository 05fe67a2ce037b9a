"""The fake provider speaks the real wire formats: the official SDKs parse what it sends."""

from __future__ import annotations

import json
import time
from typing import Any

import aiohttp
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from tools.fake_provider import FakeProviderServer, build_json_answer, parse_fault_header

# google-genai subclasses aiohttp.ClientSession, which aiohttp deprecates; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:Inheritance class AiohttpClientSession:DeprecationWarning")

PROMPT = "Draft a follow-up email to dana@acme.io about the Q3 renewal"


def openai_client(fake: FakeProviderServer, **kwargs: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=fake.openai_base_url, api_key="sk-test", max_retries=0, **kwargs)


def genai_client(fake: FakeProviderServer, api_version: str | None = "v1beta") -> genai.Client:
    options = types.HttpOptions(
        base_url=fake.base_url, retry_options=types.HttpRetryOptions(attempts=1), timeout=5_000
    )
    if api_version:
        options.api_version = api_version
    return genai.Client(api_key="AIza-test", http_options=options)


# ---------------------------------------------------------------------------------------------
# OpenAI


async def test_openai_sdk_parses_a_plain_completion_echoing_the_last_user_message(
    fake: FakeProviderServer,
) -> None:
    client = openai_client(fake)
    completion = await client.chat.completions.create(
        model="gpt-4.1-mini",
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": PROMPT}],
    )
    assert completion.object == "chat.completion"
    assert completion.model == "gpt-4.1-mini"
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == f"Fake answer to: {PROMPT}"
    assert choice.finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens


async def test_openai_sdk_gets_schema_valid_json_for_an_email_json_schema(
    fake: FakeProviderServer, email_schema: dict[str, Any]
) -> None:
    completion = await openai_client(fake).chat.completions.create(
        model="gpt-4.1-mini",
        messages=[{"role": "user", "content": PROMPT}],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "email", "schema": email_schema, "strict": True},
        },
    )
    email = json.loads(completion.choices[0].message.content or "")
    assert set(email) == {"to", "subject", "body"}
    assert email["to"] == "dana@acme.io"  # taken from the prompt
    assert all(isinstance(v, str) and v for v in email.values())


async def test_openai_sdk_stream_reassembles_the_answer_and_sees_the_usage_chunk(
    fake: FakeProviderServer,
) -> None:
    stream = await openai_client(fake).chat.completions.create(
        model="gpt-4.1-mini",
        messages=[{"role": "user", "content": PROMPT}],
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces: list[str] = []
    finish_reasons: list[str | None] = []
    usage = None
    async for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish_reasons.append(choice.finish_reason)
    assert "".join(pieces) == f"Fake answer to: {PROMPT}"
    assert len([p for p in pieces if p]) > 3
    assert finish_reasons[-1] == "stop"
    assert usage is not None and usage.completion_tokens > 0


async def test_openai_stream_is_framed_as_sse_and_ends_with_done(fake: FakeProviderServer) -> None:
    async with aiohttp.ClientSession() as session, session.post(
        fake.openai_base_url + "/chat/completions",
        json={"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi there you all"}]},
        headers={"Authorization": "Bearer sk-test"},
    ) as resp:
        raw = (await resp.read()).decode()
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    events = raw.split("\n\n")
    assert events[-1] == ""
    assert events[-2] == "data: [DONE]"
    assert all(e.startswith("data: ") for e in events[:-1])


@pytest.mark.parametrize(
    ("fault", "sdk_error", "status"),
    [
        ("429; retry_after=7", openai.RateLimitError, 429),
        ("503", openai.InternalServerError, 503),
        ("500", openai.InternalServerError, 500),
        ("401", openai.AuthenticationError, 401),
        ("403", openai.PermissionDeniedError, 403),
        ("400", openai.BadRequestError, 400),
    ],
)
async def test_openai_sdk_recognises_the_fake_error_bodies(
    fake: FakeProviderServer, fault: str, sdk_error: type[openai.APIStatusError], status: int
) -> None:
    client = openai_client(fake, default_headers={"X-Fake-Fault": fault})
    with pytest.raises(sdk_error) as caught:
        await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == status
    body = caught.value.body
    assert isinstance(body, dict) and set(body) == {"message", "type", "param", "code"}
    if status == 429:
        assert caught.value.response.headers["retry-after"] == "7"
        assert body["code"] == "rate_limit_exceeded"


async def test_openai_sdk_sees_a_connection_error_when_the_fake_resets(fake: FakeProviderServer) -> None:
    client = openai_client(fake, default_headers={"X-Fake-Fault": "reset"})
    with pytest.raises(openai.APIConnectionError):
        await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])


# ---------------------------------------------------------------------------------------------
# Gemini


async def test_genai_sdk_parses_a_plain_generate_content_response(fake: FakeProviderServer) -> None:
    response = await genai_client(fake).aio.models.generate_content(
        model="gemini-2.5-flash",
        contents=PROMPT,
        config=types.GenerateContentConfig(system_instruction="be brief", temperature=0.2),
    )
    assert response.text == f"Fake answer to: {PROMPT}"
    assert response.candidates and response.candidates[0].finish_reason == types.FinishReason.STOP
    assert response.candidates[0].content and response.candidates[0].content.role == "model"
    assert response.model_version == "gemini-2.5-flash"
    usage = response.usage_metadata
    assert usage is not None and usage.total_token_count == (
        (usage.prompt_token_count or 0) + (usage.candidates_token_count or 0)
    )


async def test_genai_sdk_default_v1_surface_is_served_too(fake: FakeProviderServer) -> None:
    response = await genai_client(fake, api_version=None).aio.models.generate_content(
        model="gemini-2.5-flash", contents="hello"
    )
    assert response.text == "Fake answer to: hello"
    assert fake.requests[-1].path.startswith("/v1/models/gemini-2.5-flash:generateContent")


@pytest.mark.parametrize("schema_field", ["response_json_schema", "response_schema"])
async def test_genai_sdk_gets_schema_valid_json_in_json_mode(
    fake: FakeProviderServer, email_schema: dict[str, Any], schema_field: str
) -> None:
    config = types.GenerateContentConfig(response_mime_type="application/json", **{schema_field: email_schema})
    response = await genai_client(fake).aio.models.generate_content(
        model="gemini-2.5-flash", contents=PROMPT, config=config
    )
    email = json.loads(response.text or "")
    assert set(email) == {"to", "subject", "body"}
    assert email["to"] == "dana@acme.io"


async def test_genai_sdk_stream_reassembles_the_answer(fake: FakeProviderServer) -> None:
    stream = await genai_client(fake).aio.models.generate_content_stream(
        model="gemini-2.5-flash", contents=PROMPT
    )
    chunks = [chunk async for chunk in stream]
    assert "".join(c.text or "" for c in chunks) == f"Fake answer to: {PROMPT}"
    assert len(chunks) > 3
    last = chunks[-1].candidates
    assert last and last[0].finish_reason == types.FinishReason.STOP


async def test_gemini_stream_uses_crlf_framing_and_no_done_sentinel(fake: FakeProviderServer) -> None:
    async with aiohttp.ClientSession() as session, session.post(
        fake.base_url + "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
        json={"contents": [{"role": "user", "parts": [{"text": "hi there you all"}]}]},
        headers={"x-goog-api-key": "AIza-test"},
    ) as resp:
        raw = (await resp.read()).decode()
    events = raw.split("\r\n\r\n")
    assert events[-1] == ""
    assert all(e.startswith("data: {") for e in events[:-1])
    assert "[DONE]" not in raw


@pytest.mark.parametrize(
    ("fault", "sdk_error", "status", "status_text"),
    [
        ("429; retry_after=7", genai_errors.ClientError, 429, "RESOURCE_EXHAUSTED"),
        ("503", genai_errors.ServerError, 503, "UNAVAILABLE"),
        ("500", genai_errors.ServerError, 500, "INTERNAL"),
        ("401", genai_errors.ClientError, 401, "UNAUTHENTICATED"),
        ("403", genai_errors.ClientError, 403, "PERMISSION_DENIED"),
        ("400", genai_errors.ClientError, 400, "INVALID_ARGUMENT"),
        ("bad_key", genai_errors.ClientError, 400, "INVALID_ARGUMENT"),
    ],
)
async def test_genai_sdk_recognises_the_fake_error_bodies(
    fake: FakeProviderServer,
    fault: str,
    sdk_error: type[genai_errors.APIError],
    status: int,
    status_text: str,
) -> None:
    fake.install_fault(parse_fault_header(fault))
    with pytest.raises(sdk_error) as caught:
        await genai_client(fake).aio.models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert caught.value.code == status
    assert caught.value.status == status_text
    if status == 429:
        details = caught.value.details["error"]["details"]
        assert {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7s"} in details


# ---------------------------------------------------------------------------------------------
# Fault control and capture


async def test_fault_with_times_applies_that_many_times_then_clears(fake: FakeProviderServer) -> None:
    fake.set_fault("503", times=2)
    client = openai_client(fake)
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    ok = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert ok.choices[0].message.content == "Fake answer to: hi"
    assert fake.faults == []


async def test_fault_scoped_to_one_provider_leaves_the_other_alone(fake: FakeProviderServer) -> None:
    fake.set_fault("503", provider="gemini")
    ok = await openai_client(fake).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}]
    )
    assert ok.choices[0].message.content == "Fake answer to: hi"
    with pytest.raises(genai_errors.ServerError):
        await genai_client(fake).aio.models.generate_content(model="gemini-2.5-flash", contents="hi")


async def test_stream_fault_is_not_used_up_by_a_non_streaming_call(fake: FakeProviderServer) -> None:
    fake.set_fault("stream_cut", times=1)
    client = openai_client(fake)
    await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert len(fake.faults) == 1


async def test_admin_endpoints_set_faults_answers_and_expose_captured_requests(
    fake: FakeProviderServer,
) -> None:
    async with aiohttp.ClientSession(base_url=fake.base_url) as admin:
        async with admin.post("/_fake/fault", json={"kind": "429", "retry_after": 3, "times": 1}) as resp:
            assert resp.status == 200
        async with admin.post("/_fake/fault", json={"kind": "nonsense"}) as resp:
            assert resp.status == 400
        client = openai_client(fake)
        with pytest.raises(openai.RateLimitError):
            await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        async with admin.post("/_fake/answer", json={"text": "Canned."}) as resp:
            assert resp.status == 200
        ok = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        assert ok.choices[0].message.content == "Canned."
        async with admin.get("/_fake/requests") as resp:
            captured = await resp.json()
        assert [c["path"] for c in captured] == ["/v1/chat/completions"] * 2
        assert captured[0]["headers"]["authorization"] == "Bearer sk-test"
        assert captured[0]["json"]["messages"] == [{"role": "user", "content": "hi"}]
        async with admin.post("/_fake/reset") as resp:
            assert resp.status == 200
    assert fake.requests == [] and fake.answer_text is None


async def test_latency_fault_delays_the_answer(fake: FakeProviderServer) -> None:
    client = openai_client(fake, default_headers={"X-Fake-Fault": "latency; ms=200"})
    started = time.monotonic()
    await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert time.monotonic() - started >= 0.2


@pytest.mark.parametrize("variant", ["trailing_comma", "truncated", "fenced"])
async def test_malformed_json_fault_breaks_only_json_mode_answers(
    fake: FakeProviderServer, email_schema: dict[str, Any], variant: str
) -> None:
    fake.set_fault("malformed_json", variant=variant)
    client = openai_client(fake)
    plain = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert plain.choices[0].message.content == "Fake answer to: hi"
    broken = await client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "hi"}],
        response_format={"type": "json_schema", "json_schema": {"name": "e", "schema": email_schema}},
    )
    text = broken.choices[0].message.content or ""
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)
    if variant == "fenced":
        assert text.startswith("```json\n") and json.loads(text[8:-4])["subject"]


def test_unknown_fault_kinds_and_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown fault kind"):
        parse_fault_header("explode")
    with pytest.raises(ValueError, match="unknown fault parameter"):
        parse_fault_header("429; color=red")
    assert parse_fault_header("503; latency_ms=20").status == 503


def test_json_answers_follow_generic_schemas() -> None:
    schema = {
        "type": "object",
        "$defs": {"Score": {"type": "integer", "minimum": 1, "maximum": 5}},
        "properties": {
            "stage": {"type": "string", "enum": ["lead", "won"]},
            "score": {"$ref": "#/$defs/Score"},
            "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2},
            "owner": {"anyOf": [{"type": "null"}, {"type": "object", "properties": {"ok": {"type": "boolean"}}}]},
            "ratio": {"type": ["number", "null"]},
        },
        "required": ["stage", "score", "tags", "owner", "ratio"],
    }
    doc = build_json_answer(schema, "prompt")
    assert doc["stage"] == "lead"
    assert doc["score"] == 1
    assert isinstance(doc["tags"], list) and len(doc["tags"]) == 2
    assert doc["owner"] == {"ok": True}
    assert doc["ratio"] == 0.0
    # Gemini's OpenAPI-style schema (upper-case types) works as well.
    gemini_schema = {"type": "OBJECT", "properties": {"n": {"type": "INTEGER"}, "s": {"type": "STRING"}}}
    assert build_json_answer(gemini_schema, "p") == {"n": 0, "s": "fake s"}
