"""Invalid settings refuse the start with one line naming the variable and what is allowed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.config import ConfigError, load_settings

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("ACTIVE_MODEL", "foo", "'gemini' or 'openai'"),
        ("AI_RATE_LIMIT_PER_MIN", "-1", "greater than or equal to 1"),
        ("AI_RATE_LIMIT_PER_MIN", "lots", "valid integer"),
        ("IVY_MODAL_HEURISTICS", "maybe", "allowed: true or false"),
        ("IVY_ORGANIC_ENABLED", "2", "allowed: true or false"),
        ("REDIS_URL", "http://localhost", "redis://"),
        ("OPENAI_BASE_URL", "not a url", "URL"),
        ("IVY_GC_GEN0_THRESHOLD", "0", "greater than or equal to 700"),
        ("IVY_MODAL_MIN_CONFIDENCE", "1.5", "less than or equal to 1"),
        ("IVY_MODAL_MIN_CONFIDENCE", "high", "valid number"),
    ],
)
def test_invalid_value_names_the_variable_and_allowed_values(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert "\n" not in message
    assert (name in message) or (name == "REDIS_URL" and "REDIS_URL" in message)
    assert expected in message


def test_runbook_values_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"ACTIVE_MODEL": "openai", "AI_RATE_LIMIT_PER_MIN": "30", "IVY_MODAL_HEURISTICS": "false",
                        "IVY_ORGANIC_ENABLED": "false"}.items():
        monkeypatch.setenv(name, value)
    s = load_settings()
    assert (s.active_model, s.ai_rate_limit_per_min, s.ivy_modal_heuristics, s.ivy_organic_enabled) == (
        "openai", 30, False, False)
    assert s.rate_limit_burst == 30


def test_empty_key_counts_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "")
    assert load_settings().openai_api_key is None


def test_uvicorn_refuses_to_start_on_a_bad_value_with_one_line() -> None:
    env = {**os.environ, "ACTIVE_MODEL": "foo"}
    proc = subprocess.run([sys.executable, "-m", "uvicorn", "app.main:app", "--port", "0"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if "ACTIVE_MODEL" in line]
    assert lines == ["invalid configuration: ACTIVE_MODEL='foo': Input should be 'gemini' or 'openai'"]
    assert "Traceback" not in proc.stderr


def test_empty_values_fall_back_to_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    # `cp .env.example .env` leaves several variables empty: that must mean "default", not "".
    monkeypatch.setenv("IVY_KNOWLEDGE_DIR", "")
    monkeypatch.setenv("IVY_LOG_FILE", "")
    monkeypatch.setenv("AI_RATE_LIMIT_BURST", "")
    s = load_settings()
    assert s.ivy_knowledge_dir.name == "knowledge" and s.ivy_knowledge_dir.is_dir()
    assert s.ivy_log_file.name == "ai_router.log"
    assert s.rate_limit_burst == 60


def test_env_example_lists_every_setting_with_a_comment() -> None:
    from app.config import Settings

    lines = (ROOT / ".env.example").read_text().splitlines()
    listed = {}
    for i, line in enumerate(lines):
        name = line.lstrip("# ").split("=", 1)[0]
        if "=" in line and name.isupper():
            listed[name] = lines[i - 1].startswith("#")
    expected = {name.upper() for name in Settings.model_fields}
    assert expected <= set(listed), expected - set(listed)
    assert all(listed[name] for name in expected), [n for n in expected if not listed[n]]
    readme = (ROOT / "README.md").read_text()
    assert [n for n in expected if f"`{n}`" not in readme] == []
