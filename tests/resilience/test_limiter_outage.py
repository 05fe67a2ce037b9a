"""Redis down or slow: the limiter fails open (by default), says so once, and recovers by itself."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import redis

from tests.conftest import read_log
from tests.support import RedisProcess

V2 = "/ai/router/v2"


def ask(client, user: str = "rep-1"):
    return client.post(V2, json={"query": "hi"}, headers={"X-User-ID": user})


def test_redis_stopped_mid_run_fails_open_degrades_health_and_recovers(make_client, log_file: Path) -> None:
    with RedisProcess() as server:
        client = make_client(redis_url=server.url, ai_rate_limit_per_min=3)
        assert [ask(client).status_code for _ in range(4)] == [200, 200, 200, 429]
        redis_check = client.get("/health").json()["checks"]["redis"]
        assert (redis_check["configured"], redis_check["ok"], redis_check["backend"]) == (True, True, "redis")

        server.stop()
        codes = [ask(client).status_code for _ in range(20)]
        assert codes == [200] * 20  # failed open: rate limit not enforced, service still answers
        health = client.get("/health")
        assert health.status_code == 200
        assert health.json()["status"] == "degraded"
        assert health.json()["checks"]["redis"] == {"configured": True, "ok": False, "latency_ms": None,
                                                    "backend": "redis"}
        metrics = client.get("/metrics").text
        assert 'ivy_ratelimit_backend_errors_total{action="fail_open",backend="redis"} 20.0' in metrics
        assert 'ivy_ratelimit_backend_up{backend="redis"} 0.0' in metrics

        server.start()  # same port: the pool reconnects without a restart
        assert client.get("/health").json()["status"] == "ok"
        assert 'ivy_ratelimit_backend_up{backend="redis"} 1.0' in client.get("/metrics").text
        assert [ask(client, "rep-2").status_code for _ in range(4)] == [200, 200, 200, 429]

    lines = read_log(log_file, lambda ls: any(x["event"] == "rate_limiter_unavailable" for x in ls))
    warnings = [x for x in lines if x["event"] == "rate_limiter_unavailable"]
    assert len(warnings) == 1  # 20 failures, one line: the warning is itself rate-limited
    assert warnings[0]["level"] == "WARNING" and warnings[0]["fail_open"] is True


def test_slow_redis_is_abandoned_after_the_timeout(make_client) -> None:
    with RedisProcess() as server:
        client = make_client(redis_url=server.url, redis_timeout_ms=50)
        assert ask(client).status_code == 200
        # DEBUG SLEEP blocks the whole server, as a stalled Redis would.
        stalled = threading.Event()

        def stall() -> None:
            blocking = redis.Redis(port=server.port)
            blocking.ping()  # connected first: the stall starts with the command, not a connect
            stalled.set()
            blocking.execute_command("DEBUG", "SLEEP", 3)

        blocker = threading.Thread(target=stall)
        blocker.start()
        assert stalled.wait(10)
        time.sleep(0.1)  # the command has reached the server
        r = ask(client)
        answered_during_the_stall = blocker.is_alive()  # not a bound on our time: the order of two events
        blocker.join()
        assert r.status_code == 200
        assert answered_during_the_stall, "the request waited for the stalled Redis"
        assert 'ivy_ratelimit_backend_errors_total{action="fail_open",backend="redis"} 1.0' in client.get(
            "/metrics").text  # it was the limiter's timeout that let it through


def test_fail_closed_refuses_with_429_and_503_health(make_client) -> None:
    with RedisProcess() as server:
        client = make_client(redis_url=server.url, ai_rate_limit_fail_open=False)
        assert ask(client).status_code == 200
        server.stop()
        r = ask(client)
        assert r.status_code == 429
        assert r.json()["error"]["bucket"] == "unavailable"
        assert r.headers["Retry-After"] == "1"
        assert client.get("/health").status_code == 503
