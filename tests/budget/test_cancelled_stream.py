"""A stream the client leaves half-way bills what it consumed (its reservation settled, by the
provider's running counts or by estimate), and every Lua call's keys sit in one Redis Cluster slot."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import orjson
import pytest
from redis.crc import key_slot

from app.budget.store import limit_key, period_keys
from app.config.budget_limits import period_id
from tests.conftest import FakeProviderThread
from tests.support import leave_after_deltas, uvicorn_server

TOKEN = "admin-token-for-tests-0123456789"


def _budgets(base: str) -> dict[str, object]:
    request = urllib.request.Request(base + "/admin/budgets", headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=10) as r:
        loaded: dict[str, object] = orjson.loads(r.read())
        return loaded


@pytest.mark.parametrize("active", ["openai", "gemini"])
def test_a_stream_the_client_leaves_is_settled_to_what_it_consumed(tmp_path: Path, active: str) -> None:
    fake = FakeProviderThread()
    fake.set_answer("word " * 400)
    fake.set_fault("stream_stall", after=3, seconds=30, provider=active)
    env = {"ACTIVE_MODEL": active, "GEMINI_API_KEY": "test-gemini-key-0001", "OPENAI_API_KEY": "test-openai-key-0001",
           "GEMINI_BASE_URL": fake.server.base_url, "OPENAI_BASE_URL": fake.server.openai_base_url,
           "IVY_BUDGET_DEFAULT": "1000000 tokens/day", "IVY_ADMIN_TOKEN": TOKEN, "IVY_CACHE_ENABLED": "false",
           "IVY_HEDGE_ENABLED": "false", "IVY_LOG_FILE": str(tmp_path / "ai_router.log")}
    try:
        with uvicorn_server(env) as base:
            leave_after_deltas(base, "leaver", orjson.dumps({"query": "hello there", "stream": True}))
            # The client is gone; the server settles the call once it notices (its disconnect watcher).
            for _ in range(100):
                snapshot = _budgets(base)
                spenders = snapshot["top_spenders"]
                assert isinstance(spenders, list)
                if spenders:
                    break
                time.sleep(0.1)
            metrics = urllib.request.urlopen(base + "/metrics", timeout=10).read().decode()
    finally:
        fake.stop()
    (row,) = spenders
    assert row["org_key"] == "o:leaver" and 0 < row["spent"] < 1000  # the prompt and a few words, not the cap
    estimated = f'ivy_provider_estimated_calls_total{{provider="{active}"}} 1.0' in metrics
    # OpenAI reports usage only at the end: estimated; Gemini's running counts were on every chunk.
    assert estimated is (active == "openai")


def test_every_key_of_an_orgs_budget_is_in_one_cluster_slot() -> None:
    org = "o:acme-corp"
    keys = [limit_key(org), *period_keys(org, period_id("day")), *period_keys(org, period_id("month"))]
    assert len({key_slot(k.encode()) for k in keys}) == 1
