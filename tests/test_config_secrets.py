"""A refused start names the secret variable and the rule it breaks, never the value or a piece of it."""

from __future__ import annotations

import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from pydantic import SecretStr

from app.config import ConfigError, Settings, load_settings
from app.config.settings import SECRET_FIELDS
from app.observability.redaction import FRAGMENT

PASSWORD = "hunter2-Hunter2-pw"
# (variable, bad value, the secret in it, what the refusal says)
BAD = [
    ("GEMINI_API_KEY", "AIzaSyD-gemini-key-with a-space-0123456", None, "no spaces"),
    ("GEMINI_API_KEY", "gemini-key-with-line-break\nsecond-half-0123", None, "line breaks"),
    ("GEMINI_API_KEY", "G" * 4097, None, "at most 4096 characters"),
    ("OPENAI_API_KEY", "sk-proj-Openai-Key-0123456789abcdef\t", None, "printable ASCII"),
    ("OPENAI_API_KEY", "sk-proj-Ünicode-key-0123456789abcdef", None, "printable ASCII"),
    ("IVY_ADMIN_TOKEN", "admin-tok-0123", None, "at least 16 characters (it has 14)"),
    ("IVY_ADMIN_TOKEN", "admin token holding blanks 0123456789", None, "no spaces"),
    ("IVY_JWT_SECRET", "jwt-secret-one-char-short-01234", None, "at least 32 characters (it has 31)"),
    ("IVY_JWT_SECRET", " jwt-secret-with-a-leading-space-0123456789", None, "must not start or end with a space"),
    ("IVY_JWT_SECRET", "jwt-secret-\x07-with-a-bell-0123456789abcdef", None, "control character"),
    ("REDIS_URL", f"http://ivy:{PASSWORD}@cache.internal:6379/0", PASSWORD, "must start with redis://"),
    ("REDIS_URL", f"redis://ivy:{PASSWORD}@cache.internal:sixty/0", PASSWORD, "not a valid URL"),
    ("REDIS_URL", f"rediss://:{PASSWORD}@[::1:6379/0", PASSWORD, "not a valid URL"),
]
IDS = [f"{name}-{i}" for i, (name, *_) in enumerate(BAD)]


def pieces(secret: str) -> list[str]:
    return [secret[i:i + FRAGMENT] for i in range(len(secret) - FRAGMENT + 1)]


def assert_hidden(text: str, secret: str) -> None:
    assert secret not in text
    assert [p for p in pieces(secret) if p in text] == []


@pytest.mark.parametrize(("name", "value", "secret", "rule"), BAD, ids=IDS)
def test_a_bad_secret_is_refused_by_name_and_rule_without_its_value(
        monkeypatch: pytest.MonkeyPatch, name: str, value: str, secret: str | None, rule: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        load_settings(env_file=None)
    message = str(info.value)
    assert message.startswith(f"invalid configuration: {name}: ") and rule in message
    assert_hidden(message, secret or value)
    assert "\n" not in message


@pytest.mark.parametrize(("name", "value", "secret", "rule"), BAD, ids=IDS)
def test_uvicorn_refuses_a_bad_secret_without_printing_it(tmp_path: Path, name: str, value: str, secret: str | None,
                                                          rule: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IVY_", "GEMINI_", "OPENAI_", "REDIS_"))}
    env.update({name: value, "IVY_LOG_FILE": str(tmp_path / "ivy.log")})
    proc = subprocess.run([sys.executable, "-m", "uvicorn", "app.main:app", "--port", "0"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert [line for line in proc.stderr.splitlines() if name in line] == [
        line for line in proc.stderr.splitlines() if line.startswith(f"invalid configuration: {name}: ")]
    assert rule in proc.stderr
    assert_hidden(proc.stderr + proc.stdout, secret or value)


def test_every_secret_field_is_listed_as_one() -> None:
    def holds_secret(annotation: object) -> bool:
        return annotation is SecretStr or SecretStr in typing.get_args(annotation)

    secret_typed = {name for name, f in Settings.model_fields.items() if holds_secret(f.annotation)}
    assert secret_typed <= SECRET_FIELDS
    assert SECRET_FIELDS - secret_typed == {"redis_url"}  # a plain str: its password is the secret


def test_good_secrets_are_accepted_and_registered_for_redaction() -> None:
    s = load_settings(env_file=None, gemini_api_key="AIzaSy-good-key", openai_api_key="sk-proj-good_key.0",
                      ivy_admin_token="admin-token-0123456789", ivy_jwt_secret="a-shared secret of 32+ chars, ok!",
                      redis_url=f"redis://ivy:{PASSWORD}@cache.internal:6379/0")
    assert sorted(s.secret_values()) == sorted(["AIzaSy-good-key", "sk-proj-good_key.0", "admin-token-0123456789",
                                                "a-shared secret of 32+ chars, ok!", PASSWORD])
