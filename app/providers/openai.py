"""OpenAI Chat Completions over the shared aiohttp session (no SDK at runtime).

The request body is what ``openai.AsyncOpenAI().chat.completions.create`` sends for the same
call (checked against the SDK in ``tests/providers``).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from app.providers.base import (
    GenerationRequest,
    ProviderMalformedOutput,
    ProviderUnavailable,
    Usage,
)
from app.providers.clock import Deadline
from app.providers.http import STREAM_IDLE_SECONDS, error_in_stream, optional_int, parse_event, stream_sse
from app.vocabulary import ProviderName

# --------------------------------------------------------------------------------------------
# The adapter

_SCHEMA_NAME = re.compile(r"[^A-Za-z0-9_-]")


class OpenAIProvider:
    """``POST {base_url}/chat/completions`` with Bearer auth, always streamed (the chain races for
    the first chunk); JSON via ``response_format: json_schema``."""

    name: ProviderName = "openai"

    def __init__(
        self, session: aiohttp.ClientSession, *, api_key: str, base_url: str, model: str,
        stream_idle_seconds: float = STREAM_IDLE_SECONDS,
    ) -> None:
        self._session = session
        self.stream_idle_seconds = stream_idle_seconds
        self._api_key = api_key
        self.base_url = base_url.rstrip("/")
        self.model = model
        self._url = f"{self.base_url}/chat/completions"

    def __repr__(self) -> str:
        return f"OpenAIProvider(model={self.model!r}, base_url={self.base_url!r})"

    def _headers(self) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self._api_key}",
            "Content-Type": "application/json",
            "Accept": "text/event-stream",
        }

    def _body(self, request: GenerationRequest, *, json_mode: bool = False) -> dict[str, Any]:
        messages: list[dict[str, str]] = []
        if request.system:
            messages.append({"role": "system", "content": request.system})
        messages.append({"role": "user", "content": request.prompt})
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            # The SDK sends whichever the caller names; max_tokens is deprecated and rejected by
            # the reasoning models, max_completion_tokens works for all current chat models.
            "max_completion_tokens": request.max_output_tokens,
            "temperature": request.temperature,
        }
        if json_mode:
            if request.json_schema is not None:
                name = _SCHEMA_NAME.sub("_", request.modal_type or "answer")[:64]
                body["response_format"] = {
                    "type": "json_schema",
                    "json_schema": {"name": name, "schema": request.json_schema, "strict": True},
                }
            else:
                body["response_format"] = {"type": "json_object"}
        body["stream"] = True
        # The token counts arrive in a last chunk with no choices, only when asked for.
        body["stream_options"] = {"include_usage": True}
        return body

    async def stream(self, request: GenerationRequest, *, deadline: Deadline, json_mode: bool = False,
                     usage: Usage | None = None) -> AsyncIterator[str]:
        """Yield ``choices[0].delta.content`` pieces; a stream without ``[DONE]`` is unavailable."""
        produced = False
        events = stream_sse(
            self._session, self._url, provider=self.name, headers=self._headers(),
            body=self._body(request, json_mode=json_mode), deadline=deadline, secret=self._api_key,
            idle_seconds=self.stream_idle_seconds,
        )
        async with contextlib.aclosing(events):
            async for data in events:
                if data.strip() == b"[DONE]":
                    if not produced:
                        raise ProviderMalformedOutput(self.name, "stream finished with an empty answer")
                    return
                event = parse_event(self.name, data)
                if "error" in event:
                    raise error_in_stream(self.name, event, self._api_key)
                choices = event.get("choices")
                if not isinstance(choices, list):
                    raise ProviderMalformedOutput(self.name, "stream chunk has no choices")
                if not choices:  # the usage chunk (stream_options.include_usage) has none
                    counts = event.get("usage")
                    if usage is not None and isinstance(counts, dict):
                        usage.input_tokens = optional_int(counts.get("prompt_tokens"))
                        usage.output_tokens = optional_int(counts.get("completion_tokens"))
                        details = counts.get("prompt_tokens_details")
                        if isinstance(details, dict):
                            usage.cached_input_tokens = optional_int(details.get("cached_tokens"))
                    continue
                if usage is not None and isinstance(choices[0], dict):
                    usage.finish_reason = choices[0].get("finish_reason") or usage.finish_reason
                    usage.model = event.get("model") or usage.model
                delta = choices[0].get("delta") if isinstance(choices[0], dict) else None
                piece = delta.get("content") if isinstance(delta, dict) else None
                if isinstance(piece, str) and piece:
                    produced = True
                    if usage is not None:
                        usage.received_chars += len(piece)
                    yield piece
        raise ProviderUnavailable(self.name, "stream ended before [DONE]")
