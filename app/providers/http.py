"""HTTP plumbing both remote adapters share: one streamed POST, SSE reading, error mapping, key scrubbing.

Every failure leaves here as a member of the error tree in ``base.py``; the API key never
appears in a message.
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import AsyncGenerator, Mapping
from datetime import UTC
from typing import Any

import aiohttp
import orjson

from app.observability.redaction import REDACTED, redact_fragments
from app.providers.base import (
    ProviderAuthError,
    ProviderBadRequest,
    ProviderError,
    ProviderMalformedOutput,
    ProviderRateLimited,
    ProviderTimeout,
    ProviderUnavailable,
)
from app.providers.clock import Deadline

STREAM_IDLE_SECONDS = 10.0
STREAM_MAX_SECONDS = 120.0
_NO_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_read=None)  # stream_sse's own bounds, `_Watch`

MAX_MESSAGE = 300
# How much of an error body is read for its message: redaction runs on this whole text, before
# the message is cut to MAX_MESSAGE (a key cut first no longer matches itself).
MAX_ERROR_TEXT = 4096


def scrub(text: str, secret: str) -> str:
    """Remove the API key, every configured secret (whole or any 8+ character run of it) and
    anything shaped like a key from text bound for an exception. Call it before any truncation."""
    if secret:
        text = text.replace(secret, REDACTED)
    return redact_fragments(text)


def parse_retry_after(headers: Mapping[str, str], error: Any = None) -> float | None:
    """Seconds to wait, from ``retry-after-ms``, ``Retry-After`` (seconds or HTTP date) or a
    ``google.rpc.RetryInfo`` detail (``"retryDelay": "34s"``) in a Google error body."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            pass
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            when = None
        if when is not None:
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            return max(0.0, when.timestamp() - time.time())
    for detail in _details(error):
        delay = detail.get("retryDelay")
        if str(detail.get("@type", "")).endswith("google.rpc.RetryInfo") and isinstance(delay, str):
            try:
                return max(0.0, float(delay.removesuffix("s")))
            except ValueError:
                return None
    return None


def _details(error: Any) -> list[dict[str, Any]]:
    details = error.get("details") if isinstance(error, dict) else None
    return [d for d in details if isinstance(d, dict)] if isinstance(details, list) else []


def error_for_status(
    provider: str, status: int, headers: Mapping[str, str], raw: bytes, secret: str
) -> ProviderError:
    """Map a non-2xx answer to the error tree. Both providers wrap errors as ``{"error": {...}}``."""
    error: Any = None
    try:
        payload = orjson.loads(raw) if raw else None
        error = payload.get("error") if isinstance(payload, dict) else None
    except orjson.JSONDecodeError:
        pass
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        detail = str(error["message"])
        tag = error.get("status") or error.get("code") or error.get("type")
        if isinstance(tag, str) and tag:
            detail = f"{tag}: {detail}"
    else:
        detail = raw[:MAX_ERROR_TEXT].decode("utf-8", errors="replace").strip() or "(empty body)"
    message = scrub(f"HTTP {status}: {detail[:MAX_ERROR_TEXT]}", secret)[:MAX_MESSAGE]

    if status == 429:
        return ProviderRateLimited(provider, message, parse_retry_after(headers, error))
    if status in (401, 403) or _is_invalid_key(error):
        return ProviderAuthError(provider, message)
    if status == 408:
        return ProviderTimeout(provider, message)
    if 400 <= status < 500:
        return ProviderBadRequest(provider, message)
    return ProviderUnavailable(provider, message)  # 5xx and anything unexpected


def _is_invalid_key(error: Any) -> bool:
    # Gemini answers a wrong key with 400 INVALID_ARGUMENT + ErrorInfo reason API_KEY_INVALID.
    if isinstance(error, dict) and error.get("code") == "invalid_api_key":
        return True
    return any(d.get("reason") == "API_KEY_INVALID" for d in _details(error))


def error_in_stream(provider: str, payload: dict[str, Any], secret: str) -> ProviderError:
    """An ``{"error": {...}}`` event inside a 200 stream."""
    error = payload.get("error")
    code = error.get("code") if isinstance(error, dict) else None
    status = code if isinstance(code, int) and 400 <= code <= 599 else 503
    return error_for_status(provider, status, {}, orjson.dumps(payload), secret)


def transport_error(provider: str, exc: BaseException, seconds: float, secret: str) -> ProviderError:
    """Map an aiohttp / asyncio failure. Timeouts first: aiohttp's timeouts are also ClientErrors."""
    if isinstance(exc, TimeoutError):
        return ProviderTimeout(provider, f"no complete answer within {seconds:.2f}s")
    return ProviderUnavailable(provider, scrub(f"{type(exc).__name__}: {exc}", secret)[:MAX_MESSAGE])


class _Watch:
    """The two bounds of one stream once its answer has begun: a stall (no byte for ``idle``
    seconds while it waits for one) and STREAM_MAX_SECONDS in all. Either sets a TimeoutError on
    the response's content, which the waiting (or the next) read raises. One timer per stream,
    moved only when it fires (at most once per ``idle``): aiohttp's ``sock_read`` cancels and
    re-arms a timer on every piece received, and its ``total`` enters a timer context (a
    current_task call) on every wait, the costliest per-chunk steps of the adapters' reading
    (docs/PERFORMANCE.md). While the stream is suspended at a yield the time is its consumer's,
    not the provider's: it counts toward the total, not as a stall."""

    __slots__ = ("_content", "_ends", "_handle", "_idle", "_loop", "waiting_since")

    def __init__(self, content: aiohttp.StreamReader, idle: float, ends: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._content, self._idle, self._ends = content, idle, ends
        self.waiting_since: float | None = None  # loop time the current wait began; None at a yield
        self._handle = self._loop.call_at(min(self._loop.time() + idle, ends), self._check)

    def _check(self) -> None:
        since, now = self.waiting_since, self._loop.time()
        if now >= self._ends or (since is not None and now - since >= self._idle):
            self._content.set_exception(TimeoutError())
            return
        due = (now if since is None else since) + self._idle
        self._handle = self._loop.call_at(min(due, self._ends), self._check)

    def close(self) -> None:
        self._handle.cancel()


def _one_event(piece: bytes) -> bytes | None:
    """The payload when ``piece`` is exactly one event of one ``data:`` line (how both providers
    send a chunk, one TCP read each), else None: the line splitting below then reads it."""
    if not piece.startswith(b"data:"):
        return None
    if piece.endswith(b"\r\n\r\n"):
        value = piece[5:-4]
    elif piece.endswith(b"\n\n"):
        value = piece[5:-2]
    else:
        return None
    if b"\n" in value or value.endswith(b"\r"):
        return None
    return value.removeprefix(b" ")


async def stream_sse(
    session: aiohttp.ClientSession,
    url: str,
    *,
    provider: str,
    headers: Mapping[str, str],
    body: Mapping[str, Any],
    deadline: Deadline,
    secret: str,
    idle_seconds: float = STREAM_IDLE_SECONDS,
) -> AsyncGenerator[bytes | bytearray, None]:
    """POST a JSON body and yield the ``data:`` payload of each SSE event, as bytes (orjson parses
    them as they are: no decode to a str per event).

    ``deadline`` bounds the wait for the first bytes of the answer here (and so does
    ``idle_seconds``, whichever ends first); once text flows the chain bounds each chunk by the
    same deadline (a timer here cannot run across a yield), and a stall (``idle_seconds`` waiting
    without a byte) or STREAM_MAX_SECONDS in all ends it too (`_Watch`).
    Non-2xx, timeouts and a connection cut mid-stream raise from the error tree. Whether the
    stream ended properly is the caller's business (it knows the sentinel, if any).
    """
    loop = asyncio.get_running_loop()
    started, flowing, ends = time.monotonic(), False, loop.time() + STREAM_MAX_SECONDS
    seconds = min(deadline.seconds, idle_seconds)
    watch: _Watch | None = None
    try:
        async with asyncio.timeout(seconds) as first_bytes, session.post(
            url, data=orjson.dumps(body), headers=dict(headers), timeout=_NO_TIMEOUT
        ) as resp:
            if not 200 <= resp.status < 300:
                raw = await resp.read()
                raise error_for_status(provider, resp.status, resp.headers, raw, secret)
            if resp.content_type != "text/event-stream":
                raise ProviderMalformedOutput(provider, f"2xx answer is {resp.content_type}, not an event stream")
            content, clock = resp.content, loop.time
            watch = _Watch(content, idle_seconds, ends)
            buffer = bytearray()
            data: list[bytearray] = []
            while True:
                watch.waiting_since = clock()
                piece = await content.readany()
                watch.waiting_since = None
                if not piece:
                    break
                if not flowing:
                    first_bytes.reschedule(None)  # nothing may cancel us while suspended at a yield
                    flowing = True
                if not buffer and not data and (event := _one_event(piece)) is not None:
                    yield event
                    continue
                buffer += piece
                if b"\n" not in piece:
                    continue
                *lines, rest = buffer.split(b"\n")  # whole lines; a partial last one waits for more
                buffer = bytearray(rest)
                for whole in lines:
                    line = whole.rstrip(b"\r")
                    if not line:  # blank line: dispatch the event
                        if data:
                            yield data[0] if len(data) == 1 else b"\n".join(data)
                            data = []
                        continue
                    field, _, value = line.partition(b":")
                    if field == b"data":
                        data.append(value.removeprefix(b" "))
                    # comments (":...") and other fields (event:, id:, retry:) are ignored
            if data:  # last event without its blank line; a partial line left in buffer is dropped
                yield b"\n".join(data)
    except ProviderError:
        raise
    except (TimeoutError, aiohttp.ClientError) as exc:
        if flowing and isinstance(exc, TimeoutError):  # the answer had started: a stall
            elapsed = time.monotonic() - started
            limit = f"no data for {idle_seconds:g}s"
            if elapsed >= STREAM_MAX_SECONDS:
                limit = f"{STREAM_MAX_SECONDS:g}s in all"
            raise ProviderTimeout(provider, f"stream stalled mid-answer: {limit} (cut after {elapsed:.1f}s)") from exc
        raise transport_error(provider, exc, seconds, secret) from exc
    finally:
        if watch is not None:
            watch.close()


def parse_event(provider: str, data: bytes | bytearray) -> dict[str, Any]:
    try:
        payload = orjson.loads(data)
    except orjson.JSONDecodeError:
        payload = _with_replaced_bytes(provider, data)
    if not isinstance(payload, dict):
        raise ProviderMalformedOutput(provider, "stream event is not a JSON object")
    return payload


def _with_replaced_bytes(provider: str, data: bytes | bytearray) -> Any:
    """orjson refuses bytes that are not UTF-8; such an event is read with them replaced (U+FFFD), as
    a decode would have, so one bad byte in a text piece does not fail the answer."""
    try:
        return orjson.loads(data.decode("utf-8", errors="replace"))
    except orjson.JSONDecodeError:
        raise ProviderMalformedOutput(provider, f"stream event is not JSON ({len(data)} bytes)") from None


def optional_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
