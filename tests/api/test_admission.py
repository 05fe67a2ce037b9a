"""A full worker sheds at the door, over real HTTP (`python -m uvicorn app.main:app`, real Redis for
the limiter): at the in-flight bound (the fake provider holding the calls) and when its event loop
is on the CPU (tests/api/burning_app.py's route spinning it), a fast 503 `overloaded` with
Retry-After, before the rate limiter spends a token; the health endpoints and /metrics always
answer; and it recovers once the work is done. The CPU-share admission's own arithmetic is in
tests/resilience/test_load.py."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx

from tests.conftest import FakeProviderThread, read_log
from tests.support import uvicorn_server

V2 = "/ai/router/v2"
HELD = 3


def test_a_full_worker_sheds_with_503_overloaded_spends_no_limiter_tokens_never_sheds_health_and_recovers(
        tmp_path: Path, redis_url: str) -> None:
    fake = FakeProviderThread()
    fake.set_fault("hang", provider="gemini", seconds=2, times=HELD)  # the first calls are held in flight
    env = {"IVY_LOG_FILE": str(tmp_path / "ai_router.log"), "GEMINI_API_KEY": "test-gemini-key-0001",
           "GEMINI_BASE_URL": fake.server.base_url, "IVY_HEDGE_ENABLED": "false", "IVY_CACHE_ENABLED": "false",
           "IVY_ADMISSION_MAX_IN_FLIGHT": str(HELD), "AI_RATE_LIMIT_PER_MIN": "1", "AI_RATE_LIMIT_BURST": "5",
           "REDIS_URL": redis_url}
    user = {"X-User-ID": "rep-1"}
    body = {"query": "hello there"}
    try:
        with uvicorn_server(env) as base, httpx.Client(base_url=base, timeout=20) as client:
            held: list[int] = []
            threads = [threading.Thread(target=lambda: held.append(client.post(V2, json=body, headers=user)
                                                                   .status_code)) for _ in range(HELD)]
            for thread in threads:
                thread.start()
            for _ in range(500):  # until the held calls are all in flight (a bound on polls, not on time)
                if client.get("/ai/router/health").json()["load"]["in_flight"] == HELD:
                    break
                time.sleep(0.02)
            shed = [client.post(V2, json=body, headers=user) for _ in range(4)]
            assert {r.status_code for r in shed} == {503}
            assert all(r.json()["error"]["code"] == "overloaded" and r.headers["retry-after"] == "1"
                       and r.json()["error"]["request_id"] == r.headers["x-request-id"] for r in shed)
            assert client.get("/health").status_code == 200
            health = client.get("/ai/router/health")
            assert health.status_code == 200 and health.json()["load"]["shed_total"] == 4
            metrics = client.get("/metrics")
            assert metrics.status_code == 200 and "ivy_admission_shed_total 4.0" in metrics.text
            assert "ivy_event_loop_lag_seconds" in metrics.text
            lines = read_log(tmp_path / "ai_router.log", lambda ls: any(x["event"] == "admission_shed" for x in ls))
            warned = [x for x in lines if x["event"] == "admission_shed"]
            assert len(warned) == 1 and warned[0]["shed_total"] == 1 and warned[0]["in_flight"] == HELD  # one per 10 s
            assert not [x for x in lines if x["event"] == "request" and x.get("status") == 503]  # no line per shed
            for thread in threads:
                thread.join(20)
            assert held == [200] * HELD
            # Recovered; and the shed requests took no tokens: 5 - 3 = 2 are left, then a real 429.
            after = [client.post(V2, json=body, headers=user).status_code for _ in range(3)]
            assert after == [200, 200, 429]
    finally:
        fake.stop()


def test_a_worker_whose_loop_is_on_the_cpu_sheds_503_overloaded_answers_health_and_metrics_then_recovers(
        tmp_path: Path, redis_url: str) -> None:
    fake = FakeProviderThread()
    env = {"IVY_LOG_FILE": str(tmp_path / "ai_router.log"), "GEMINI_API_KEY": "test-gemini-key-0001",
           "GEMINI_BASE_URL": fake.server.base_url, "IVY_HEDGE_ENABLED": "false", "IVY_CACHE_ENABLED": "false",
           "REDIS_URL": redis_url, "AI_RATE_LIMIT_PER_MIN": "100000", "AI_RATE_LIMIT_BURST": "100000"}
    body = {"query": "hello there"}
    burning = threading.Event()
    try:
        with uvicorn_server(env, app="tests.api.burning_app:app") as base, \
                httpx.Client(base_url=base, timeout=30) as client:
            assert client.post(V2, json=body, headers={"X-User-ID": "rep-1"}).status_code == 200

            def burn() -> None:
                with httpx.Client(base_url=base, timeout=30) as burner:
                    while burning.is_set():
                        burner.post("/_test/burn?ms=30")

            burning.set()
            burners = [threading.Thread(target=burn) for _ in range(2)]
            for thread in burners:
                thread.start()
            statuses: list[httpx.Response] = []

            def ask_until_shed(n: int) -> None:  # router requests on a loop that is on the CPU
                with httpx.Client(base_url=base, timeout=30) as asker:
                    for _ in range(100):
                        statuses.append(asker.post(V2, json=body, headers={"X-User-ID": f"rep-{n}"}))
                        if sum(r.status_code == 503 for r in statuses) >= 3:
                            return

            # Several at once: a door with fewer than a handful in flight always admits (one more
            # request is not what fills a worker), so a lone client asking in turn is never shed.
            askers = [threading.Thread(target=ask_until_shed, args=(n,)) for n in range(8)]
            for thread in askers:
                thread.start()
            for thread in askers:
                thread.join(120)
            shed = [r for r in statuses if r.status_code == 503]
            assert len(shed) >= 3 and {r.status_code for r in statuses} <= {200, 503}
            assert all(r.json()["error"]["code"] == "overloaded" and r.headers["retry-after"] == "1"
                       and r.json()["error"]["request_id"] == r.headers["x-request-id"] for r in shed)
            assert client.get("/health").status_code == 200
            health = client.get("/ai/router/health")
            assert health.status_code == 200 and health.json()["load"]["limiting"]
            assert health.json()["load"]["cpu_busy"] >= 0.75
            metrics = client.get("/metrics")
            assert metrics.status_code == 200
            assert f"ivy_admission_shed_total {float(len(shed))}" in metrics.text
            assert "ivy_event_loop_cpu_busy " in metrics.text and "ivy_admission_rate " in metrics.text
            burning.clear()
            for thread in burners:
                thread.join(30)
            for _ in range(500):  # until the loop's CPU share has fallen (a bound on polls, not on time)
                if not client.get("/ai/router/health").json()["load"]["limiting"]:
                    break
                time.sleep(0.02)
            after = [client.post(V2, json=body, headers={"X-User-ID": "rep-1"}).status_code for _ in range(20)]
            assert after == [200] * 20  # recovered: room again, nothing shed
    finally:
        burning.clear()
        fake.stop()
