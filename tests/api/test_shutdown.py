"""Slow clients are dropped, and SIGTERM ends everything within IVY_SHUTDOWN_TIMEOUT_SECONDS, so the
runbook's `pkill -TERM -f uvicorn && sleep 5 && python -m uvicorn app.main:app` finds the port free.
A real uvicorn process each, as the runbook starts it."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import FakeProviderThread, read_log
from tests.support import spawn_uvicorn, stop_process

V2 = "/ai/router/v2"


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"IVY_LOG_FILE": str(tmp_path / "ai_router.log"), "AI_RATE_LIMIT_PER_MIN": "1000", **extra}


def _slow_sender(base: str, *, headers_only: bool = False) -> socket.socket:
    """A client that sends its headers (or part of them) and 10 of 1,000 body bytes, then nothing."""
    port = int(base.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    if headers_only:
        sock.sendall(b"POST /ai/router/v2 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: appl")
    else:
        sock.sendall(b"POST /ai/router/v2 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"X-User-ID: rep-slow\r\nContent-Length: 1000\r\n\r\n" + b'{"query": ')
    return sock


def _closed_within(sock: socket.socket, seconds: float) -> float | None:
    """Seconds until the server closed the connection (whatever it said first), or None."""
    started = time.monotonic()
    sock.settimeout(0.2)
    while time.monotonic() - started < seconds:
        try:
            if sock.recv(65536) == b"":
                return time.monotonic() - started
        except TimeoutError:
            continue
        except OSError:
            return time.monotonic() - started
    return None


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def test_clients_slow_to_send_their_headers_or_body_are_dropped_while_the_service_keeps_answering(
        tmp_path: Path) -> None:
    proc, base = spawn_uvicorn(_env(tmp_path, IVY_HEADER_TIMEOUT_SECONDS="1", IVY_BODY_TIMEOUT_SECONDS="1"),
                               stderr=tmp_path / "stderr.log")
    try:
        partial_headers, partial_body = _slow_sender(base, headers_only=True), _slow_sender(base)
        assert httpx.get(base + "/health", timeout=5).status_code == 200
        for sock in (partial_headers, partial_body):
            waited = _closed_within(sock, 5)
            assert waited is not None and waited < 3, waited
            sock.close()
        lines = read_log(tmp_path / "ai_router.log", lambda ls: any(x.get("status") == 499 for x in ls), timeout=5)
        assert any(x.get("event") == "request" and x.get("status") == 499 and x.get("path") == V2
                   for x in lines)
        assert any(x.get("event") == "slow_clients_dropped" for x in lines)
    finally:
        stop_process(proc)


def test_sigterm_finishes_requests_cuts_streams_drops_slow_senders_and_frees_the_port_within_the_bound(
        tmp_path: Path) -> None:
    fake = FakeProviderThread(latency_ms=600)
    # The stream's call stalls after its first piece; later calls (the plain request's) answer.
    fake.set_fault("stream_stall", after=1, seconds=30, provider="gemini", times=1)
    env = _env(tmp_path, GEMINI_API_KEY="test-gemini-key-0001", GEMINI_BASE_URL=fake.server.base_url,
               IVY_SHUTDOWN_TIMEOUT_SECONDS="3")
    proc, base = spawn_uvicorn(env, stderr=tmp_path / "stderr.log")
    port = int(base.rsplit(":", 1)[1])
    results: dict[str, Any] = {}
    streamed = threading.Event()
    try:
        def stream() -> None:
            with httpx.stream("POST", base + V2, json={"query": "hello there", "stream": True},
                              headers={"X-User-ID": "rep-stream"}, timeout=20) as r:
                results["stream_status"] = r.status_code
                text = ""
                for piece in r.iter_text():
                    text += piece
                    if "event: delta" in text:
                        streamed.set()
                results["stream"] = text

        def plain() -> None:
            r = httpx.post(base + V2, json={"query": "hello there"}, headers={"X-User-ID": "rep-plain"}, timeout=20)
            results["plain"] = (r.status_code, r.json().get("provider"))

        threads = [threading.Thread(target=stream), threading.Thread(target=plain)]
        slow = _slow_sender(base)
        threads[0].start()
        assert streamed.wait(10), "the stream never started"
        threads[1].start()
        time.sleep(0.1)  # the plain request is now waiting on the provider's 600 ms
        sent_at = time.monotonic()
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
        took = time.monotonic() - sent_at
        assert took < 3.8, f"the process took {took:.2f}s to exit"
        assert _port_is_free(port)
        for t in threads:
            t.join(5)
        assert results["plain"] == (200, "gemini")  # in flight at SIGTERM: answered
        assert results["stream_status"] == 200
        events = [block for block in results["stream"].split("\n\n") if block.strip()]
        last = events[-1].splitlines()
        assert last[0] == "event: error"
        assert json.loads(last[1].removeprefix("data: "))["code"] == "shutting_down"
        assert _closed_within(slow, 1) is not None
        slow.close()
        lines = read_log(tmp_path / "ai_router.log", lambda ls: any(x.get("event") == "router_stopped" for x in ls))
        stream_line = next(x for x in lines if x.get("event") == "request" and x.get("user_id") == "rep-stream")
        assert stream_line["outcome"] == "shutting_down" and stream_line["level"] == "WARNING"
    finally:
        stop_process(proc)
        fake.stop()
