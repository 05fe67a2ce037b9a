"""A load generator's HTTP/1.1 client on raw asyncio Protocols (scripts/bench_busy.py): a pool of
keep-alive connections, POST, the status line, then the body by its framing (Content-Length or
chunked), the streamed SSE answer read until `event: done` or `event: error` and the chunked end;
times to the first body byte and to the end. aiohttp's client cost about 1 ms of CPU a request
and saturated the generator's core near 1000/s, hiding the server measured; this parses only
what a benchmark reads. Loopback benchmarks only: no TLS, redirects, proxies or pipelining.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass


@dataclass(slots=True)
class Answer:
    status: int
    first_byte: float  # seconds from sending to the first byte of the body (or of the response)
    seconds: float  # seconds from sending to the body's end
    body: bytes
    marked: float  # seconds to the first read holding the asked mark (the first delta), else to the end


class ClosedEarly(ConnectionError):
    """The server closed the connection before the response ended."""


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.answered = False  # any byte of the current response came
        self._buffer = bytearray()
        self._waiter: asyncio.Future[Answer] | None = None
        self._sent = 0.0
        self._first = 0.0
        self._status = 0
        self._head_done = False
        self._length: int | None = None  # None: chunked
        self._body = bytearray()
        self._chunk_left = -1  # -1: a chunk-size line is next
        self._keep_alive = True
        self._mark = b""
        self._marked = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(ClosedEarly(str(exc or "closed")))

    def ask(self, raw: bytes, mark: bytes = b"") -> asyncio.Future[Answer]:
        assert self.transport is not None
        self._waiter = asyncio.get_running_loop().create_future()
        self._buffer.clear()
        self._body = bytearray()
        self._head_done, self._length, self._chunk_left, self._keep_alive = False, None, -1, True
        self._sent = time.perf_counter()
        self._first = self._marked = 0.0
        self._mark = mark
        self.answered = False
        self.transport.write(raw)
        return self._waiter

    def data_received(self, data: bytes) -> None:
        if self._waiter is None or self._waiter.done():
            return
        self.answered = True
        if self._mark and not self._marked and self._mark in data:
            self._marked = time.perf_counter()
        self._buffer += data
        if not self._head_done:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self._buffer[:end]).split(b"\r\n")
            del self._buffer[:end + 4]
            self._status = int(head[0].split(b" ", 2)[1])
            for line in head[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    self._length = int(value)
                elif name == b"connection" and value.strip().lower() == b"close":
                    self._keep_alive = False
            self._head_done = True
        if self._buffer and not self._first:
            self._first = time.perf_counter()
        if self._length is not None:
            if len(self._buffer) >= self._length:
                self._finish(bytes(self._buffer[:self._length]))
            return
        self._read_chunks()

    def _read_chunks(self) -> None:
        buffer = self._buffer
        while True:
            if self._chunk_left == -2:
                if buffer.find(b"\r\n") >= 0:
                    self._finish(bytes(self._body))
                return
            if self._chunk_left == -1:
                end = buffer.find(b"\r\n")
                if end < 0:
                    return
                size = int(bytes(buffer[:end]).split(b";", 1)[0], 16)
                del buffer[:end + 2]
                if size == 0:
                    if buffer.find(b"\r\n") < 0:  # the (empty) trailer's end
                        self._chunk_left = -2
                        return
                    self._finish(bytes(self._body))
                    return
                self._chunk_left = size
            if len(buffer) < self._chunk_left + 2:
                return
            self._body += buffer[:self._chunk_left]
            del buffer[:self._chunk_left + 2]
            self._chunk_left = -1

    def _finish(self, body: bytes) -> None:
        now = time.perf_counter()
        assert self._waiter is not None
        self._waiter.set_result(Answer(self._status, (self._first or now) - self._sent, now - self._sent, body,
                                       (self._marked or now) - self._sent))
        if not self._keep_alive and self.transport is not None:
            self.transport.close()


class Pool:
    """Keep-alive connections to one host, opened as needed, reused when idle (unbounded in count:
    an open-loop generator never waits for a connection)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._idle: list[_Connection] = []

    async def post(self, path: str, body: bytes, headers: dict[str, str], mark: bytes = b"") -> Answer:
        """``mark``: bytes whose first arrival is timed (``Answer.marked``)."""
        raw = (f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Length: {len(body)}\r\n"
               + "".join(f"{k}: {v}\r\n" for k, v in headers.items())).encode() + b"\r\n" + body
        return await self._ask(raw, mark)

    async def get(self, path: str) -> Answer:
        return await self._ask(f"GET {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n\r\n".encode())

    async def _ask(self, raw: bytes, mark: bytes = b"") -> Answer:
        conn = None
        while self._idle and conn is None:
            conn = self._idle.pop()
            conn = None if conn.closed else conn
        if conn is not None:
            try:
                answer = await conn.ask(raw, mark)
            except ClosedEarly:  # the server had closed this idle keep-alive connection: once more, on a new one
                if conn.answered:
                    raise
                conn = None
        if conn is None:
            _, conn = await asyncio.get_running_loop().create_connection(_Connection, self.host, self.port)
            answer = await conn.ask(raw, mark)
        if not conn.closed:
            self._idle.append(conn)
        return answer

    def close(self) -> None:
        for conn in self._idle:
            if conn.transport is not None:
                conn.transport.close()
        self._idle.clear()
