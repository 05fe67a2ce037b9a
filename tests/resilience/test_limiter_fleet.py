"""Exactness across processes: two uvicorn servers on one Redis admit one bucket's worth, never more."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import jwt

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


def test_with_jwt_two_workers_hold_the_verified_users_limit_and_answer_no_one_without_a_valid_token(
        redis_url: str, tmp_path: Path) -> None:
    secret = "fleet-secret-of-at-least-32-characters-long"
    valid = jwt.encode({"sub": "fleet-rep", "org_id": "fleet-org", "exp": int(time.time()) + 600}, secret,
                       algorithm="HS256")
    forged = jwt.encode({"sub": "fleet-rep", "exp": int(time.time()) + 600}, "x" * 40, algorithm="HS256")
    env = {**_env(redis_url, tmp_path / "fleet.log"), "IVY_AUTH_MODE": "jwt", "IVY_JWT_SECRET": secret,
           "IVY_AUTH_TRUSTED_CIDRS": "none"}  # the test client is on loopback: trust it no more than anyone

    async def fire(base: str, headers: list[dict[str, str]]) -> list[int]:
        async with aiohttp.ClientSession() as session:
            async def one(h: dict[str, str]) -> int:
                async with session.post(base + "/ai/router/v2", json={"query": "hi"}, headers=h) as r:
                    await r.read()
                    return r.status
            return list(await asyncio.gather(*(one(h) for h in headers)))

    with uvicorn_server(env, workers=2) as base:
        anonymous = asyncio.run(fire(base, [{"X-User-ID": f"u-{i}", "X-Org-ID": f"o-{i}"} for i in range(20)]
                                     + [{"Authorization": f"Bearer {forged}"}] * 10))
        rotating = asyncio.run(fire(base, [{"Authorization": f"Bearer {valid}", "X-User-ID": f"u-{i}"}
                                           for i in range(20)]))
        verified = asyncio.run(fire(base, [{"Authorization": f"Bearer {valid}"}] * 60))
    assert anonymous == [401] * 30
    assert rotating == [403] * 20
    assert verified.count(200) == CAPACITY and verified.count(429) == 60 - CAPACITY
