"""IVY_AUTH_MODE=jwt: who is asking is what a valid token says, not what a header claims."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi.testclient import TestClient

from app.api.auth import JWKSCache
from app.config import ConfigError, load_settings
from tests.conftest import read_log
from tests.support import spawn_uvicorn, stop_process

V2 = "/ai/router/v2"
SECRET = "a-shared-secret-of-at-least-32-characters!"
JSON = {"Content-Type": "application/json"}


def token(claims: dict[str, Any] | None = None, *, key: Any = SECRET, alg: str = "HS256",
          kid: str | None = None, ttl: float = 300) -> str:
    body = {"sub": "rep-7", "org_id": "org-1", "exp": int(time.time() + ttl), **(claims or {})}
    return jwt.encode(body, key, algorithm=alg, headers={"kid": kid} if kid else None)


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}", **JSON}


@pytest.fixture
def jwt_client(make_client: Callable[..., TestClient]) -> Callable[..., TestClient]:
    def make(address: str = "203.0.113.9", **overrides: Any) -> TestClient:
        return make_client(address=address, **{"ivy_auth_mode": "jwt", "ivy_jwt_secret": SECRET, **overrides})

    return make


def assert_401(r: Any, code: str) -> None:
    assert r.status_code == 401, r.text
    assert r.json()["error"]["code"] == code
    assert r.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize("path", [V2, "/ai/router/"])
def test_without_a_token_a_caller_from_outside_the_trusted_networks_gets_a_401_and_no_answer(
        jwt_client: Callable[..., TestClient], path: str) -> None:
    client = jwt_client()
    r = client.post(path, json={"query": "hello"}, headers={"X-User-ID": "rep-7"})
    assert_401(r, "missing_token")
    assert r.headers["www-authenticate"] == 'Bearer realm="ivy"'
    assert "answer" not in r.text and "response" not in r.json()


def test_a_valid_token_is_answered_as_its_subject_and_org_and_the_log_line_says_so_without_the_token(
        jwt_client: Callable[..., TestClient], log_file: Path) -> None:
    client = jwt_client()
    t = token()
    r = client.post(V2, json={"query": "hello"}, headers={**bearer(t), "X-Request-ID": "req-jwt"})
    assert r.status_code == 200, r.text
    lines = read_log(log_file, lambda ls: any(x.get("request_id") == "req-jwt" for x in ls))
    line = next(x for x in lines if x.get("request_id") == "req-jwt")
    assert (line["user_id"], line["org_id"]) == ("rep-7", "org-1")
    assert t not in log_file.read_text() and t.split(".")[2] not in log_file.read_text()


@pytest.mark.parametrize(("headers", "ok"), [
    ({"X-User-ID": "rep-7"}, True), ({"X-User-ID": "rep-7", "X-Org-ID": "org-1"}, True),
    ({"X-User-ID": "someone-else"}, False), ({"X-Org-ID": "org-2"}, False)])
def test_an_identity_header_that_disagrees_with_the_token_is_a_403(
        jwt_client: Callable[..., TestClient], headers: dict[str, str], ok: bool) -> None:
    r = jwt_client().post(V2, json={"query": "hello"}, headers={**bearer(token()), **headers})
    if ok:
        assert r.status_code == 200, r.text
    else:
        assert r.status_code == 403 and r.json()["error"]["code"] == "identity_mismatch"


def test_the_rate_limit_counts_the_verified_user_whatever_the_headers_say(
        jwt_client: Callable[..., TestClient]) -> None:
    client = jwt_client(ai_rate_limit_per_min=3)
    t = token()
    codes = [client.post(V2, json={"query": "hi"}, headers=bearer(t)).status_code for _ in range(3)]
    codes += [client.post(V2, json={"query": "hi"}, headers={**bearer(t), "X-User-ID": f"r-{i}"}).status_code
              for i in range(3)]
    codes.append(client.post(V2, json={"query": "hi"}, headers=bearer(t)).status_code)
    assert codes == [200, 200, 200, 403, 403, 403, 429]


@pytest.mark.parametrize(("make", "code"), [
    (lambda: token(ttl=-120), "expired_token"),
    (lambda: token({"nbf": int(time.time() + 600)}), "token_not_yet_valid"),
    (lambda: token(key="another-secret-of-at-least-32-characters"), "invalid_token"),
    (lambda: token()[:-4] + "AAAA", "invalid_token"),
    (lambda: "not.a.jwt", "invalid_token"),
    (lambda: jwt.encode({"sub": "rep-7", "exp": int(time.time() + 60)}, None, algorithm="none"), "invalid_token"),
    (lambda: jwt.encode({"sub": "rep-7"}, SECRET, algorithm="HS256"), "missing_claim"),
    (lambda: jwt.encode({"org_id": "o", "exp": int(time.time() + 60)}, SECRET, algorithm="HS256"), "missing_claim"),
])
def test_a_token_that_does_not_verify_is_a_401_with_a_code_that_says_why(
        jwt_client: Callable[..., TestClient], make: Callable[[], str], code: str) -> None:
    assert_401(jwt_client().post(V2, json={"query": "hi"}, headers=bearer(make())), code)


def test_exp_is_checked_with_the_leeway(jwt_client: Callable[..., TestClient]) -> None:
    client = jwt_client(ivy_jwt_leeway_seconds=30)
    assert client.post(V2, json={"query": "hi"}, headers=bearer(token(ttl=-10))).status_code == 200
    assert_401(client.post(V2, json={"query": "hi"}, headers=bearer(token(ttl=-40))), "expired_token")


def test_issuer_and_audience_are_required_when_configured(jwt_client: Callable[..., TestClient]) -> None:
    client = jwt_client(ivy_jwt_issuer="https://crm.example", ivy_jwt_audience="ivy")
    good = {"iss": "https://crm.example", "aud": "ivy"}
    assert client.post(V2, json={"query": "hi"}, headers=bearer(token(good))).status_code == 200
    assert_401(client.post(V2, json={"query": "hi"}, headers=bearer(token({**good, "iss": "x"}))), "invalid_issuer")
    assert_401(client.post(V2, json={"query": "hi"}, headers=bearer(token({**good, "aud": "x"}))), "invalid_audience")


def test_the_org_comes_from_the_configured_claim(jwt_client: Callable[..., TestClient], log_file: Path) -> None:
    client = jwt_client(ivy_jwt_org_claim="tenant")
    r = client.post(V2, json={"query": "hi"}, headers={**bearer(token({"tenant": "t-9"})), "X-Request-ID": "req-t"})
    assert r.status_code == 200
    line = next(x for x in read_log(log_file, lambda ls: any(x.get("request_id") == "req-t" for x in ls))
                if x.get("request_id") == "req-t")
    assert line["org_id"] == "t-9"


def test_callers_from_trusted_networks_may_still_name_themselves_and_others_may_not(
        jwt_client: Callable[..., TestClient]) -> None:
    local = jwt_client("127.0.0.1")
    assert local.post(V2, json={"query": "hi"}, headers={"X-User-ID": "health-check", **JSON}).status_code == 200
    assert local.post(V2, json={"query": "hi"}, headers=bearer(token())).status_code == 200  # a token still counts
    assert_401(local.post(V2, json={"query": "hi"}, headers=bearer("garbage")), "invalid_token")
    proxied = jwt_client("10.1.2.3", ivy_auth_trusted_cidrs="10.0.0.0/8")
    assert proxied.post(V2, json={"query": "hi"}, headers=JSON).status_code == 200
    nobody = jwt_client("127.0.0.1", ivy_auth_trusted_cidrs="none")
    assert_401(nobody.post(V2, json={"query": "hi"}, headers=JSON), "missing_token")


def test_auth_off_changes_nothing_for_header_identified_callers(client: TestClient) -> None:
    r = client.post(V2, json={"query": "hi"}, headers={"X-User-ID": "rep-off", "Authorization": "Bearer junk"})
    assert r.status_code == 200


# --- RS256 / ES256 from a JWKS ---------------------------------------------------------------------

class JWKS:
    """A JWKS endpoint on loopback whose keys can be rotated or made to fail."""

    def __init__(self) -> None:
        self.keys: dict[str, Any] = {}
        self.fail = False
        self.hits = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.hits += 1
                if owner.fail:
                    self.send_response(503)
                    self.end_headers()
                    return
                body = json.dumps({"keys": [owner.public(kid) for kid in owner.keys]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/.well-known/jwks.json"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add(self, kid: str, alg: str) -> None:
        self.keys[kid] = (rsa.generate_private_key(public_exponent=65537, key_size=2048) if alg == "RS256"
                          else ec.generate_private_key(ec.SECP256R1()), alg)

    def public(self, kid: str) -> dict[str, Any]:
        private, alg = self.keys[kid]
        algorithm = jwt.algorithms.RSAAlgorithm if alg == "RS256" else jwt.algorithms.ECAlgorithm
        return {**json.loads(algorithm.to_jwk(private.public_key())), "kid": kid, "alg": alg, "use": "sig"}

    def sign(self, kid: str, claims: dict[str, Any] | None = None) -> str:
        private, alg = self.keys[kid]
        return token(claims, key=private, alg=alg, kid=kid)


@pytest.fixture
def jwks() -> Iterator[JWKS]:
    server = JWKS()
    yield server
    server.server.shutdown()


def test_rs256_and_es256_tokens_verify_against_the_jwks_and_a_rotated_key_is_fetched_on_its_first_use(
        jwt_client: Callable[..., TestClient], jwks: JWKS) -> None:
    jwks.add("rsa-1", "RS256")
    jwks.add("ec-1", "ES256")
    client = jwt_client(ivy_jwt_secret=None, ivy_jwt_jwks_url=jwks.url)
    for kid in ("rsa-1", "ec-1"):
        assert client.post(V2, json={"query": "hi"}, headers=bearer(jwks.sign(kid))).status_code == 200
    fetched = jwks.hits
    assert fetched == 1  # fetched at start, cached since
    jwks.add("rsa-2", "RS256")
    time.sleep(JWKSCache.MIN_REFETCH_SECONDS)  # unknown kids refetch at most this often
    assert client.post(V2, json={"query": "hi"}, headers=bearer(jwks.sign("rsa-2"))).status_code == 200
    assert jwks.hits == fetched + 1
    # An HS256 token is not accepted where only the JWKS is configured (no algorithm confusion).
    assert_401(client.post(V2, json={"query": "hi"}, headers=bearer(token())), "invalid_token")


def test_a_jwks_outage_keeps_cached_keys_working_and_refuses_unknown_keys_without_hammering_it(
        jwt_client: Callable[..., TestClient], jwks: JWKS, log_file: Path) -> None:
    jwks.add("rsa-1", "RS256")
    client = jwt_client(ivy_jwt_secret=None, ivy_jwt_jwks_url=jwks.url)
    jwks.fail = True
    stranger = JWKS()
    stranger.add("rsa-9", "RS256")
    time.sleep(JWKSCache.MIN_REFETCH_SECONDS)
    started = time.monotonic()
    codes = [client.post(V2, json={"query": "hi"}, headers=bearer(jwks.sign("rsa-1", {"n": i}))).status_code
             for i in range(3)]
    unknown = [client.post(V2, json={"query": "hi"}, headers=bearer(stranger.sign("rsa-9"))) for _ in range(3)]
    stranger.server.shutdown()
    assert codes == [200, 200, 200]
    for r in unknown:
        assert_401(r, "invalid_token")
    assert jwks.hits <= 2  # the start, then one refetch for the unknown kid; not one per request
    assert time.monotonic() - started < 5
    assert any(x.get("event") == "jwks_fetch_failed" for x in read_log(
        log_file, lambda ls: any(x.get("event") == "jwks_fetch_failed" for x in ls)))


# --- settings ----------------------------------------------------------------------------------------

def test_jwt_mode_without_a_secret_or_a_jwks_url_refuses_the_start_naming_both(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IVY_AUTH_MODE", "jwt")
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert "IVY_JWT_SECRET" in str(err.value) and "IVY_JWT_JWKS_URL" in str(err.value)
    assert "\n" not in str(err.value)


def test_a_bad_trusted_network_or_a_short_jwt_secret_refuses_the_start_naming_the_variable(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IVY_AUTH_TRUSTED_CIDRS", "127.0.0.0/8,not-a-network")
    with pytest.raises(ConfigError, match=r"IVY_AUTH_TRUSTED_CIDRS.*not-a-network"):
        load_settings()
    monkeypatch.delenv("IVY_AUTH_TRUSTED_CIDRS")
    monkeypatch.setenv("IVY_JWT_SECRET", "short")
    with pytest.raises(ConfigError, match="IVY_JWT_SECRET"):
        load_settings()


def test_an_empty_trusted_networks_variable_trusts_no_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IVY_AUTH_TRUSTED_CIDRS", "")
    assert load_settings().trusted_networks == ()
    monkeypatch.delenv("IVY_AUTH_TRUSTED_CIDRS")
    assert [str(n) for n in load_settings().trusted_networks] == ["127.0.0.0/8", "::1/128"]


@pytest.mark.parametrize(("host", "mode", "warned"), [("0.0.0.0", "off", True), ("127.0.0.1", "off", False),
                                                      ("0.0.0.0", "jwt", False)])
def test_auth_off_on_an_address_beyond_loopback_is_a_warning_at_start(
        tmp_path: Path, host: str, mode: str, warned: bool) -> None:
    log = tmp_path / "ai_router.log"
    proc, _ = spawn_uvicorn({"IVY_LOG_FILE": str(log), "IVY_AUTH_MODE": mode, "IVY_JWT_SECRET": SECRET},
                            host=host, stderr=tmp_path / "stderr.log")
    try:
        lines = read_log(log, lambda ls: any(x.get("event") == "router_started" for x in ls))
    finally:
        stop_process(proc)
    warnings = [x for x in lines if x.get("event") == "auth_off_on_public_address"]
    assert bool(warnings) is warned
    if warned:
        assert warnings[0]["level"] == "WARNING" and "IVY_AUTH_MODE=jwt" in warnings[0]["message"]
