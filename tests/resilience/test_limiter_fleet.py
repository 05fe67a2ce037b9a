"""Exactness across processes: two uvicorn servers on one Redis admit one bucket's worth, never more."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp

from tests.support import uvicorn_server

CAPACITY = 20


async def _fire(urls: list[str], n: int) -> tuple[list[int], float]:
    async with aiohttp.ClientSession() as session:
        async def one(i: int) -> int:
            async with session.post(urls[i % len(urls)] + "/ai/router/v2", json={"query": "hi"},
                                    headers={"X-User-ID": "fleet-rep", "X-Org-ID": "fleet-org"}) as r:
                await r.read()
                return r.status

        started = time.monotonic()
        codes = await asyncio.gather(*(one(i) for i in range(n)))
        return list(codes), time.monotonic() - started


def _env(redis_url: str, log: Path) -> dict[str, str]:
    # One token a minute of refill: in the few seconds a test takes, refill adds less than one
    # token, so exactly CAPACITY requests may pass, whichever process they hit. The Redis timeout
    # is raised from 50 ms so that a starved 2-core CI machine measures exactness, not fail-open
    # (which test_limiter_outage.py covers).
    return {"REDIS_URL": redis_url, "AI_RATE_LIMIT_PER_MIN": "1", "AI_RATE_LIMIT_BURST": str(CAPACITY),
            "AI_ORG_RATE_LIMIT_PER_MIN": "100000", "IVY_LOG_LEVEL": "WARNING", "IVY_LOG_FILE": str(log),
            "REDIS_TIMEOUT_MS": "500"}


def test_two_servers_on_one_redis_admit_exactly_capacity_plus_refill(redis_url: str, tmp_path: Path) -> None:
    log = tmp_path / "fleet.log"
    with uvicorn_server(_env(redis_url, log)) as a, uvicorn_server(_env(redis_url, log)) as b:
        codes, elapsed = asyncio.run(_fire([a, b], 120))
    assert elapsed < 30
    assert "rate_limiter_unavailable" not in log.read_text(), log.read_text()  # none admitted by failing open
    assert codes.count(200) == CAPACITY
    assert codes.count(429) == 120 - CAPACITY


def test_two_workers_share_the_bucket(redis_url: str, tmp_path: Path) -> None:
    log = tmp_path / "fleet.log"
    with uvicorn_server(_env(redis_url, log), workers=2) as base:
        codes, _ = asyncio.run(_fire([base], 80))
    assert "rate_limiter_unavailable" not in log.read_text(), log.read_text()
    assert codes.count(200) == CAPACITY
