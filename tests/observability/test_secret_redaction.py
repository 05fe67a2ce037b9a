"""Configured secrets never leave the process, at any length and in any shape: not in the log file,
stderr, a response, /metrics or the health endpoints, not even as an 8-character piece."""

from __future__ import annotations

import base64
import secrets
from enum import StrEnum
from pathlib import Path

import httpx
import orjson
import pytest

from app.observability.logging import redact_secrets
from app.observability.redaction import FRAGMENT, forget_secrets, redact_fragments, register_secrets
from app.providers.http import MAX_MESSAGE, error_for_status
from tests.conftest import FakeProviderThread, read_log
from tests.support import spawn_uvicorn, stop_process


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def jwt_like_key() -> str:
    """An OpenAI-compatible gateway's key: a JWT, ~432 characters, no known prefix."""
    header = _b64url(orjson.dumps({"alg": "RS256", "typ": "JWT", "kid": secrets.token_hex(8)}))
    claims = _b64url(orjson.dumps({"sub": secrets.token_hex(12), "scope": "gateway:chat", "team": secrets.token_hex(30),
                                   "exp": 4102444800}))
    key = f"{header}.{claims}.{_b64url(secrets.token_bytes(160))}"
    return key[:432]


def base64_key() -> str:
    """Standard base64 with + / and = padding, 120 characters."""
    return base64.b64encode(secrets.token_bytes(89)).decode()


def fragments_in(text: str, secret: str) -> list[str]:
    return [secret[i:i + FRAGMENT] for i in range(len(secret) - FRAGMENT + 1) if secret[i:i + FRAGMENT] in text]


@pytest.fixture
def clean_registry() -> None:
    forget_secrets()
    yield
    forget_secrets()


def test_a_long_key_echoed_in_a_provider_error_is_removed_before_the_message_is_cut(clean_registry: None) -> None:
    key = jwt_like_key()
    assert len(key) == 432 and not key.startswith(("sk-", "AIza"))
    body = orjson.dumps({"error": {"message": f"Incorrect API key provided: {key}. See the docs.",
                                   "type": "invalid_request_error", "code": "invalid_api_key"}})
    exc = error_for_status("openai", 401, {}, body, key)
    assert len(exc.message) <= MAX_MESSAGE
    assert fragments_in(exc.message, key) == [] and "[REDACTED]" in exc.message


def test_any_run_of_eight_characters_of_a_registered_secret_is_redacted_but_shorter_runs_and_other_text_stay(
        clean_registry: None) -> None:
    secret = "Zq8Lm3Vx9Pw2Rt7Ky4Hb6Nc1"
    register_secrets(secret)
    text = f"masked key {secret[:11]}... and tail {secret[-9:]}; short {secret[:7]}; plain words stay"
    out = redact_fragments(text)
    assert fragments_in(out, secret) == []
    assert out.endswith(f"short {secret[:7]}; plain words stay")
    assert out.startswith("masked key [REDACTED]...")


class _Lane(StrEnum):
    RAG = "retrieval-augmented"


def _info_line(**fields: object) -> dict[str, object]:
    return dict(redact_secrets(None, "info", {"event": "request", "request_id": "3f2a9c0e-7d1b-4c55-9f0a-1b2c3d4e5f60",
                                              "path": "/ai/router/v2", "model": "gemini-2.5-flash", **fields}))


def test_a_secret_in_one_of_an_info_lines_many_fields_is_redacted_and_the_others_stay(clean_registry: None) -> None:
    secret = "Zq8Lm3Vx9Pw2Rt7Ky4Hb6Nc1"
    register_secrets(secret)
    line = _info_line(status=200, note=f"the key was {secret}", org_id="org-bench")
    assert line["note"] == "the key was [REDACTED]"
    assert (line["path"], line["model"], line["org_id"], line["status"]) == (
        "/ai/router/v2", "gemini-2.5-flash", "org-bench", 200)


@pytest.mark.parametrize("space", ["\u00a0", "\u2003", "\v", "\x85", "\u3000"])
@pytest.mark.parametrize("registered", [False, True])
def test_a_bearer_token_after_any_unicode_space_is_redacted_from_an_info_line(
        clean_registry: None, space: str, registered: bool) -> None:
    if registered:
        register_secrets("Zq8Lm3Vx9Pw2Rt7Ky4Hb6Nc1")
    line = _info_line(upstream=f"Authorisation: Bearer{space}abcdefgh12345678")
    assert "abcdefgh12345678" not in str(line["upstream"]) and "[REDACTED]" in str(line["upstream"])


def test_numbers_flags_none_and_enums_are_logged_as_they_are(clean_registry: None) -> None:
    register_secrets("Zq8Lm3Vx9Pw2Rt7Ky4Hb6Nc1")
    line = _info_line(status=499, latency_ms=12.5, hedged=False, cache=None, lane=_Lane.RAG)
    assert (line["status"], line["latency_ms"], line["hedged"], line["cache"]) == (499, 12.5, False, None)
    assert line["lane"] is _Lane.RAG


def test_no_fragment_of_any_secret_reaches_logs_stderr_responses_metrics_or_health(tmp_path: Path) -> None:
    keys = {"openai": jwt_like_key(), "gemini": base64_key()}
    admin_token, jwt_secret = secrets.token_hex(32), secrets.token_urlsafe(40)
    fake = FakeProviderThread()
    fake.set_fault("bad_key")  # both providers answer their "invalid key" error, echoing the key whole
    log_file, stderr_file = tmp_path / "ai_router.log", tmp_path / "stderr.log"
    env = {
        "IVY_LOG_FILE": str(log_file), "ACTIVE_MODEL": "openai", "AI_RATE_LIMIT_PER_MIN": "1000",
        "OPENAI_API_KEY": keys["openai"], "OPENAI_BASE_URL": fake.server.openai_base_url,
        "GEMINI_API_KEY": keys["gemini"], "GEMINI_BASE_URL": fake.server.base_url,
        "IVY_ADMIN_TOKEN": admin_token, "IVY_JWT_SECRET": jwt_secret, "IVY_BREAKER_OPEN_SECONDS": "0.1",
    }
    proc, base = spawn_uvicorn(env, stderr=stderr_file)
    seen: list[str] = []
    try:
        with httpx.Client(base_url=base, timeout=10) as http:
            for i in range(3):
                for path, body in (("/ai/router/v2", {"query": f"hello {i}"}), ("/ai/router/", {"query": "hi"}),
                                   ("/ai/router/v2", {"query": "stream it", "stream": True}),
                                   ("/ai/router/v2", {"query": "Draft a follow-up email", "context": {
                                       "lead": {"name": "Dana", "email": "dana@x.io"}}})):
                    r = http.post(path, json=body, headers={"X-User-ID": "rep-secret"})
                    assert r.status_code == 200, r.text
                    seen.append(r.text + str(r.headers))
            for path in ("/metrics", "/health", "/ai/router/health"):
                seen.append(http.get(path).text)
            seen.append(http.get("/admin/flags", headers={"Authorization": f"Bearer {admin_token}"}).text)
            seen.append(http.get("/admin/flags", headers={"Authorization": "Bearer wrong-token-0000"}).text)
        fake_calls = fake.requests_for("openai") + fake.requests_for("gemini")
        assert fake_calls, "the providers were never called"
        lines = read_log(log_file, lambda ls: sum(x.get("event") == "provider_call" for x in ls) >= 2)
        assert {x.get("outcome") for x in lines if x.get("event") == "provider_call"} == {"auth"}
    finally:
        stop_process(proc)
        fake.stop()
    seen += [log_file.read_text(), stderr_file.read_text()]
    everything = "\n".join(seen)
    assert "[REDACTED]" in log_file.read_text()  # the echoed keys were there to remove
    for name, secret in {**keys, "admin": admin_token, "jwt": jwt_secret}.items():
        assert fragments_in(everything, secret) == [], f"a piece of the {name} secret leaked"


def test_secret_named_fields_are_redacted_in_every_line_of_a_shape_and_past_the_shapes_kept(
        clean_registry: None) -> None:
    from app.observability.logging import _KEY_SHAPES_KEPT

    for i in range(_KEY_SHAPES_KEPT + 20):  # each line a new set of names: the kept shapes fill up
        for _ in range(2):  # the same shape again: found in the kept ones
            line = _info_line(**{f"field_{i}": 1, "api_key": i, "status": 200,
                                 "usage": {"input": 1, f"key_{i}": "x", "refresh_token": 99}})
            assert line["api_key"] == "[REDACTED]" and line["status"] == 200
            assert line["usage"] == {"input": 1, f"key_{i}": "x", "refresh_token": "[REDACTED]"}


def test_a_registered_secret_after_multibyte_characters_is_redacted_from_an_info_line(clean_registry: None) -> None:
    secret = "Zq8Lm3Vx9Pw2Rt7Ky4Hb6Nc1"
    register_secrets(secret)
    line = _info_line(note="élan 😀 café", upstream=f"ключ: {secret} ✓")
    assert line["upstream"] == "ключ: [REDACTED] ✓" and line["note"] == "élan 😀 café"


class _Text(str):
    pass


def test_an_info_lines_lists_dicts_and_str_subclasses_are_walked_when_its_plain_strings_hold_no_secret(
        clean_registry: None) -> None:
    secret = "Zq8Lm3Vx9Pw2Rt7Ky4Hb6Nc1"
    register_secrets(secret)
    line = _info_line(notes=["fine", f"key {secret}"], extra={"why": f"got {secret}"}, raw=_Text(f"x {secret}"),
                      lane=_Lane.RAG, short="sk-1", status=200)
    assert line["notes"] == ["fine", "key [REDACTED]"] and line["extra"] == {"why": "got [REDACTED]"}
    assert line["raw"] == "x [REDACTED]"
    assert (line["lane"], line["short"], line["status"], line["path"]) == (_Lane.RAG, "sk-1", 200, "/ai/router/v2")
