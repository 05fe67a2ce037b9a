"""Gemini ``generateContent`` over the shared aiohttp session (no SDK at runtime).

The request body is what ``google.genai.Client().aio.models.generate_content_stream`` sends for the
same call with ``response_json_schema`` (checked against the SDK in ``tests/providers``). We use
``responseJsonSchema`` rather than ``responseSchema``: it takes standard JSON Schema verbatim,
whereas ``responseSchema`` wants Google's OpenAPI subset (upper-case types) that the SDK
rewrites client-side.
"""

from __future__ import annotations

import contextlib
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


class GeminiProvider:
    """``POST {base_url}/v1beta/models/{model}:streamGenerateContent?alt=sse`` with the
    ``x-goog-api-key`` header, always streamed (the chain races for the first chunk)."""

    name: ProviderName = "gemini"

    def __init__(
        self, session: aiohttp.ClientSession, *, api_key: str, base_url: str, model: str,
        thinking_budget: int | None = None, stream_idle_seconds: float = STREAM_IDLE_SECONDS,
    ) -> None:
        self._session = session
        self.stream_idle_seconds = stream_idle_seconds
        # 2.5 models think by default: seconds of latency and, with a small maxOutputTokens, an
        # empty answer. The router's SLOs want it off (0) for flash; None leaves the model's default.
        self.thinking_budget = thinking_budget
        self._api_key = api_key
        self.model = model.removeprefix("models/")
        self.base_url = base_url.rstrip("/")
        # Accept both the host root (the SDK's notion of base_url) and a root that already names
        # the API version.
        root = self.base_url if self.base_url.endswith(("/v1beta", "/v1")) else f"{self.base_url}/v1beta"
        self._stream_url = f"{root}/models/{self.model}:streamGenerateContent?alt=sse"

    def __repr__(self) -> str:
        return f"GeminiProvider(model={self.model!r}, base_url={self.base_url!r})"

    def _headers(self) -> dict[str, str]:
        return {"x-goog-api-key": self._api_key, "Content-Type": "application/json"}

    def _body(self, request: GenerationRequest, *, json_mode: bool = False) -> dict[str, Any]:
        config: dict[str, Any] = {
            "temperature": request.temperature,
            "maxOutputTokens": request.max_output_tokens,
        }
        if self.thinking_budget is not None:
            config["thinkingConfig"] = {"thinkingBudget": self.thinking_budget}
        if json_mode:
            config["responseMimeType"] = "application/json"
            if request.json_schema is not None:
                config["responseJsonSchema"] = request.json_schema
        body: dict[str, Any] = {"contents": [{"role": "user", "parts": [{"text": request.prompt}]}]}
        if request.system:
            body["systemInstruction"] = {"parts": [{"text": request.system}]}
        body["generationConfig"] = config
        return body

    @staticmethod
    def _count(counts: Any, usage: Usage) -> None:
        """Token counts from ``usageMetadata`` (each stream chunk carries the running totals, so
        the stream counts the last chunk's once, at its end, not every chunk's)."""
        if not isinstance(counts, dict):
            return
        output = optional_int(counts.get("candidatesTokenCount"))
        thoughts = optional_int(counts.get("thoughtsTokenCount"))
        if output is not None and thoughts is not None:
            output += thoughts  # thinking tokens are billed as output
        usage.input_tokens = optional_int(counts.get("promptTokenCount"))
        usage.output_tokens = output
        usage.cached_input_tokens = optional_int(counts.get("cachedContentTokenCount"))

    def _candidate_text(self, payload: dict[str, Any]) -> tuple[str, str | None]:
        """Text of the first candidate (thought parts skipped) and its finishReason, if any."""
        candidates = payload.get("candidates")
        if not isinstance(candidates, list) or not candidates:
            feedback = payload.get("promptFeedback")
            block = feedback.get("blockReason") if isinstance(feedback, dict) else None
            if block:
                raise ProviderMalformedOutput(self.name, f"prompt blocked ({block})")
            raise ProviderMalformedOutput(self.name, "answer has no candidates")
        candidate = candidates[0]
        if not isinstance(candidate, dict):
            raise ProviderMalformedOutput(self.name, "candidate is not an object")
        finish = candidate.get("finishReason")
        content = candidate.get("content")
        parts = content.get("parts") if isinstance(content, dict) else None
        if not isinstance(parts, list):
            parts = []
        text = "".join(
            p["text"] for p in parts
            if isinstance(p, dict) and isinstance(p.get("text"), str) and not p.get("thought")
        )
        return text, finish if isinstance(finish, str) else None

    async def stream(self, request: GenerationRequest, *, deadline: Deadline, json_mode: bool = False,
                     usage: Usage | None = None) -> AsyncIterator[str]:
        """Yield candidate text pieces. There is no sentinel: the last chunk carries finishReason,
        so a stream that ends without one was cut short."""
        produced = False
        finished = False
        events = stream_sse(
            self._session, self._stream_url, provider=self.name, headers=self._headers(),
            body=self._body(request, json_mode=json_mode), deadline=deadline, secret=self._api_key,
            idle_seconds=self.stream_idle_seconds,
        )
        counts: Any = None  # the last usageMetadata seen, counted when the stream ends however it ends
        try:
            async with contextlib.aclosing(events):
                async for data in events:
                    event = parse_event(self.name, data)
                    if "error" in event:
                        raise error_in_stream(self.name, event, self._api_key)
                    counts = event.get("usageMetadata", counts)
                    if not event.get("candidates") and not event.get("promptFeedback"):
                        continue  # e.g. a usage-only chunk
                    text, finish = self._candidate_text(event)
                    if text:
                        produced = True
                        if usage is not None:
                            usage.received_chars += len(text)
                        yield text
                    if finish is not None:
                        finished = True
                        if usage is not None:
                            usage.finish_reason, usage.model = finish, event.get("modelVersion") or usage.model
        finally:
            if usage is not None:
                self._count(counts, usage)
        if not finished:
            raise ProviderUnavailable(self.name, "stream ended before a finishReason")
        if not produced:
            raise ProviderMalformedOutput(self.name, "stream finished with an empty answer")
