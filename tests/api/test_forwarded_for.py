"""The trusted-network check reads the socket's peer: X-Forwarded-For counts only from a proxy named
in IVY_TRUSTED_PROXIES, under uvicorn started as the runbook starts it (proxy headers on by default)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from tests.conftest import read_log
from tests.support import spawn_uvicorn, stop_process

V2 = "/ai/router/v2"
SECRET = "a-shared-secret-of-at-least-32-characters!"
ASK = {"query": "health check", "context": {}}


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    procs = []

    def start(**env: str) -> tuple[httpx.Client, Path]:
        log = tmp_path / f"ai_router-{len(procs)}.log"
        proc, base = spawn_uvicorn({"IVY_LOG_FILE": str(log), "IVY_AUTH_MODE": "jwt", "IVY_JWT_SECRET": SECRET, **env},
                                   stderr=tmp_path / f"stderr-{len(procs)}.log")
        procs.append(proc)
        return httpx.Client(base_url=base, timeout=10), log

    yield start
    for proc in procs:
        stop_process(proc)


def ask(client: httpx.Client, forwarded_for: str | None = None, **headers: str) -> httpx.Response:
    extra = {"X-Forwarded-For": forwarded_for} if forwarded_for is not None else {}
    return client.post(V2, json=ASK, headers={"X-User-ID": "whoever-i-say", **extra, **headers})


def test_a_spoofed_forwarded_for_from_loopback_is_a_401_with_no_proxy_configured(serve: Any) -> None:
    client, log = serve(IVY_AUTH_TRUSTED_CIDRS="10.0.0.0/8")
    r = ask(client, "10.1.2.3")
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_token"
    assert ask(client).status_code == 401  # loopback itself is not in 10.0.0.0/8
    token = jwt.encode({"sub": "rep-7", "exp": int(time.time()) + 300}, SECRET, algorithm="HS256")
    assert ask(client, "10.1.2.3", Authorization=f"Bearer {token}", **{"X-User-ID": "rep-7"}).status_code == 200
    started = next(x for x in read_log(log, lambda ls: any(x.get("event") == "forwarded_headers" for x in ls))
                   if x.get("event") == "forwarded_headers")
    assert started["uvicorn_proxy_headers_taken_out"] is True and started["trusted_proxies"] == "none"


def test_a_forwarding_header_never_borrows_trust_even_from_a_trusted_peer_or_uvicorns_own_setting(
        serve: Any) -> None:
    client, _ = serve(FORWARDED_ALLOW_IPS="*")  # default trusted networks: loopback, where the test runs
    assert ask(client).status_code == 200  # the runbook's curl on the host
    for header in ("127.0.0.1", "10.1.2.3", "", "not-an-address"):
        assert ask(client, header).status_code == 401, header
    assert client.post(V2, json=ASK, headers={"Forwarded": "for=127.0.0.1"}).status_code == 401


def test_through_a_configured_proxy_the_forwarded_client_counts(serve: Any) -> None:
    client, _ = serve(IVY_AUTH_TRUSTED_CIDRS="10.0.0.0/8", IVY_TRUSTED_PROXIES="127.0.0.1/32,::1")
    assert ask(client, "10.1.2.3").status_code == 200
    assert ask(client, "203.0.113.5, 10.1.2.3").status_code == 200  # the proxy appended who reached it
    assert ask(client, "10.1.2.3, 203.0.113.5").status_code == 401  # the client is the last one not ours
    assert ask(client, "10.1.2.3:4711").status_code == 200
    assert ask(client, "203.0.113.5").status_code == 401
    assert ask(client, "garbage, 10.1.2.3").status_code == 200
    assert ask(client, "10.1.2.3, garbage").status_code == 401
    assert ask(client).status_code == 401  # the proxy itself, not forwarding anyone, is not in 10.0.0.0/8


@pytest.mark.parametrize(("proxies", "expected"), [("127.0.0.1/32", "198.51.100.7"), ("none", "127.0.0.1")])
def test_the_rate_limit_key_of_an_unnamed_caller_is_the_forwarded_client_only_behind_our_proxy(
        serve: Any, proxies: str, expected: str) -> None:
    client, log = serve(IVY_AUTH_MODE="off", IVY_TRUSTED_PROXIES=proxies)
    assert client.post(V2, json=ASK, headers={"X-Forwarded-For": "198.51.100.7"}).status_code == 200
    lines = read_log(log, lambda ls: any(x.get("event") == "missing_user_id" for x in ls))
    assert [x["client"] for x in lines if x.get("event") == "missing_user_id"] == [expected]
