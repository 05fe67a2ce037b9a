#!/usr/bin/env python3
"""A minimal, fast OpenAI chat-completions upstream for the benchmark (loopback only).

    python scripts/bench_upstream.py --port 9200 [--latency-ms 0]

A raw asyncio ``Protocol`` speaking just enough HTTP/1.1 (keep-alive, Content-Length bodies,
pipelining) to answer every ``POST .../chat/completions`` with one fixed ChatCompletion JSON (or, for a
``"stream": true`` body, the same answer as server-sent chunks ending ``[DONE]``, as the router
asks), optionally after a fixed delay. ``GET /health`` answers ``{"ok": true}``; anything else is 404.
It runs on uvloop when installed. It exists because the benchmark's upstream must never be the
bottleneck: the aiohttp fake provider (``tools/fake_provider/``) parses, captures and
synthesises every answer, which costs more per request than a minimal proxy in front of it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from typing import Any

COMPLETION: dict[str, object] = {
    "id": "chatcmpl-bench000001",
    "object": "chat.completion",
    "created": 1_700_000_000,
    "model": "gpt-4.1-mini",
    "choices": [{
        "index": 0,
        "message": {"role": "assistant", "content": "Fake answer to: hello there", "refusal": None,
                    "annotations": []},
        "logprobs": None,
        "finish_reason": "stop",
    }],
    "usage": {
        "prompt_tokens": 3, "completion_tokens": 7, "total_tokens": 10,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                      "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
    },
    "service_tier": "default",
    "system_fingerprint": "fp_bench",
}


def _response(status: str, body: bytes, *, close: bool = False) -> bytes:
    head = (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"Connection: {'close' if close else 'keep-alive'}\r\n\r\n")
    return head.encode() + body


OK = _response("200 OK", json.dumps(COMPLETION, separators=(",", ":")).encode())


def _stream_body() -> bytes:
    base = {k: COMPLETION[k] for k in ("id", "created", "model", "system_fingerprint")}
    base["object"] = "chat.completion.chunk"
    text = COMPLETION["choices"][0]["message"]["content"]  # type: ignore[index]
    chunks = [
        {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]},
        {**base, "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]},
        {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {**base, "choices": [], "usage": COMPLETION["usage"]},
    ]
    events = b"".join(b"data: " + json.dumps(c, separators=(",", ":")).encode() + b"\n\n" for c in chunks)
    return events + b"data: [DONE]\n\n"


_SSE = _stream_body()
STREAM_OK = (f"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: {len(_SSE)}\r\n"
             "Connection: keep-alive\r\n\r\n").encode() + _SSE
HEALTH = _response("200 OK", b'{"ok":true}')
NOT_FOUND = _response("404 Not Found", b'{"error":{"message":"not found","type":"invalid_request_error"}}')
BAD = _response("400 Bad Request", b'{"error":{"message":"bad request","type":"invalid_request_error"}}',
                close=True)
MAX_HEAD = 64 * 1024


def parse_head(head: bytes) -> tuple[bytes, bytes, int, bool, bool]:
    """(method, path, content_length, chunked, close) of one request head (without the blank line)."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        raise ValueError("bad request line")
    method, path, version = parts
    length, chunked, close = 0, False, version == b"HTTP/1.0"
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value.strip())
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif name == b"connection":
            token = value.strip().lower()
            close = token == b"close" or (close and token != b"keep-alive")
    return method, path, length, chunked, close


class UpstreamProtocol(asyncio.Protocol):
    def __init__(self, latency: float) -> None:
        self.latency = latency
        self.buffer = b""
        self.transport: Any = None  # asyncio.Transport, or uvloop's (not a subclass of it)
        self.closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while not self.closing:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > MAX_HEAD:
                    self._send(BAD, close=True)
                return
            try:
                method, path, length, chunked, close = parse_head(self.buffer[:end])
            except ValueError:
                self._send(BAD, close=True)
                return
            if chunked:  # none of our clients send chunked bodies; refuse rather than mis-frame
                self._send(BAD, close=True)
                return
            total = end + 4 + length
            if len(self.buffer) < total:
                return
            body = self.buffer[end + 4 : total]
            self.buffer = self.buffer[total:]
            if method == b"POST" and path.split(b"?")[0].endswith(b"/chat/completions"):
                reply = STREAM_OK if b'"stream":true' in body or b'"stream": true' in body else OK
            elif method == b"GET" and path == b"/health":
                reply = HEALTH
            else:
                reply = NOT_FOUND
            if self.latency > 0:
                loop = asyncio.get_running_loop()
                loop.call_later(self.latency, self._send, reply, close)  # equal delays keep FIFO order
            else:
                self._send(reply, close)

    def _send(self, reply: bytes, close: bool = False) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.write(reply)
        if close:
            self.closing = True
            self.transport.close()


async def serve(host: str, port: int, latency_ms: float) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: UpstreamProtocol(latency_ms / 1000), host, port, backlog=4096,
                                      reuse_address=True)
    bound = server.sockets[0].getsockname()[1]
    print(f"bench upstream listening on http://{host}:{bound} (latency {latency_ms} ms, "
          f"loop {type(loop).__module__}) at {time.strftime('%H:%M:%S')}", file=sys.stderr, flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9200)
    parser.add_argument("--latency-ms", type=float, default=0.0, help="delay before every answer")
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:
        runner = asyncio.run
    else:
        runner = uvloop.run
    with contextlib.suppress(KeyboardInterrupt):
        runner(serve(args.host, args.port, args.latency_ms))


if __name__ == "__main__":
    main()
