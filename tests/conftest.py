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
        values: dict[str, Any] = {"ivy_log_file": log_file}
        values.update(overrides)
        return Settings(_env_file=None, **values)

    return make


@pytest.fixture
def make_client(make_settings: Callable[..., Settings]) -> Iterator[Callable[..., TestClient]]:
    clients: list[TestClient] = []

    def make(**overrides: Any) -> TestClient:
        client = TestClient(create_app(make_settings(**overrides)), raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
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
        if path.exists():
            lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
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
