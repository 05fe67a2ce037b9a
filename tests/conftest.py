"""Shared fixtures: settings isolated from the developer's environment, the real app, a real Redis."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pytest_redis import factories

from app.api.services import SERVICES
from app.config import Settings
from app.main import create_app

# A redis-server of our own on a random port: tests can stop and flush it without touching
# anything else on the machine.
redis_server = factories.redis_proc(port=None)
redis_db = factories.redisdb("redis_server")

_ENV_VARS = (
    "ACTIVE_MODEL", "GEMINI_API_KEY", "OPENAI_API_KEY", "OPENAI_BASE_URL", "GEMINI_BASE_URL", "REDIS_URL",
    "IVY_MODAL_HEURISTICS", "IVY_ORGANIC_ENABLED", "AI_RATE_LIMIT_PER_MIN", "AI_ORG_RATE_LIMIT_PER_MIN",
    "AI_RATE_LIMIT_BURST", "AI_RATE_LIMIT_FAIL_OPEN", "IVY_LOG_FILE", "GEMINI_MODEL", "OPENAI_MODEL",
    "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG", "OTEL_SDK_DISABLED",
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _ENV_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def log_file(tmp_path: Path) -> Path:
    return tmp_path / "logs" / "ai_router.log"


@pytest.fixture
def make_settings(log_file: Path) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        # The answer cache is off unless a test turns it on: most tests ask one question several times
        # and count the provider calls (breakers, hedges, failover); tests/cache turns it on.
        values: dict[str, Any] = {"ivy_log_file": log_file, "ivy_cache_enabled": False}
        values.update(overrides)
        return Settings(_env_file=None, **values)

    return make


@pytest.fixture
def make_client(make_settings: Callable[..., Settings]) -> Iterator[Callable[..., TestClient]]:
    clients: list[TestClient] = []

    def make(address: str | None = None, span_exporter: Any = None, **overrides: Any) -> TestClient:
        """A client of the app on ``overrides``; ``address`` is the peer the app sees (default testclient's);
        ``span_exporter`` (a tests.otlp.Received) receives the app's OTLP exports (tracing on)."""
        extra: dict[str, Any] = {"client": (address, 50000)} if address else {}
        client = TestClient(create_app(make_settings(**overrides), span_exporter=span_exporter),
                            raise_server_exceptions=False, **extra)
        client.__enter__()
        clients.append(client)
        if span_exporter is not None:
            span_exporter.watch(client.app_state[SERVICES].tracing)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()


@pytest.fixture
def redis_url(redis_server: Any, redis_db: Any) -> str:
    """A clean database on the test Redis (redis_db flushes it after the test)."""
    return f"redis://{redis_server.host}:{redis_server.port}/0"


def read_log(path: Path, until: Callable[[list[dict[str, Any]]], bool] = lambda _: True,
             timeout: float = 3.0) -> list[dict[str, Any]]:
    """The log file's JSON lines, waiting (the writer is a background thread) until `until` holds."""
    deadline = time.monotonic() + timeout
    while True:
        lines = []
        if path.exists():  # a batch is written in pieces: a last line without its newline is not there yet
            text = path.read_text()
            lines = [json.loads(line) for line in text[:text.rfind("\n") + 1].splitlines() if line.strip()]
        if until(lines) or time.monotonic() > deadline:
            return lines
        time.sleep(0.02)


LEAD = {
    "id": "L-1042", "name": "Dana Whitfield", "email": "dana@northwind.io", "company": "Northwind Logistics",
    "title": "VP Operations", "stage": "proposal", "budget": "$40k", "leadScore": 82,
    "aiInsights": ["Opened pricing email 3 times", "Champion identified"],
    "notes": ["Asked about SSO on 10/02 call"], "lastContact": "2026-10-28",
}
LEAD_NO_SCORE = {k: v for k, v in LEAD.items() if k not in ("leadScore", "aiInsights")}


class FakeProviderThread:
    """The fake provider server (both wire formats) on its own event loop in a thread, for tests
    that drive the app synchronously through TestClient or uvicorn."""

    def __init__(self, **kwargs: Any) -> None:
        import asyncio
        import threading

        from tools.fake_provider import FakeProviderServer

        self.loop = asyncio.new_event_loop()
        self.server = FakeProviderServer(port=0, **kwargs)
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a server method on its loop (its state is not meant to be shared across threads)."""
        import asyncio

        async def run() -> Any:
            return fn(*args, **kwargs)

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def set_fault(self, kind: str, **params: Any) -> None:
        self.call(self.server.set_fault, kind, **params)

    def clear_faults(self) -> None:
        self.call(self.server.clear_faults)

    def set_answer(self, text: str | None = None, *, json_answer: Any = None) -> None:
        self.call(self.server.set_answer, text, json_answer=json_answer)

    def set_obedient(self, on: bool = True) -> None:
        self.call(self.server.set_obedient, on)

    def requests_for(self, provider: str) -> list[Any]:
        return list(self.call(self.server.requests_for, provider))

    def stop(self) -> None:
        import asyncio

        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


@pytest.fixture
def fake_provider() -> Iterator[FakeProviderThread]:
    fake = FakeProviderThread()
    yield fake
    fake.stop()


@pytest.fixture
def provider_settings(fake_provider: FakeProviderThread) -> dict[str, Any]:
    """Settings that point both real adapters at the fake server."""
    return {
        "gemini_api_key": "test-gemini-key-0001", "openai_api_key": "test-openai-key-0001",
        "gemini_base_url": fake_provider.server.base_url, "openai_base_url": fake_provider.server.openai_base_url,
    }
