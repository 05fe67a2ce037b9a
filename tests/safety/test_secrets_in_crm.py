"""Secrets pasted into CRM text (provider, cloud, VCS and JWT shapes, high-entropy tokens) are masked
before the prompt and the citations, and counted on the log line; over real HTTP to the fake."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from app.observability.redaction import mask_secrets
from tests.conftest import LEAD, FakeProviderThread, read_log

SECRETS = {
    "openai": "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4zAb7cDe0f",
    "aws_key_id": "AKIAIOSFODNN7EXAMPLE",
    "aws_secret": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "github": "ghp_16C7e42F292c6912E7710c838347Ae178B4a",
    "github_fine": "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJ",
    "slack": "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
    "stripe": "sk_live_51H8xYzAbCdEfGhIjKlMnOpQr",
    "google": "AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY",
    "jwt": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    "pem": "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7d3f\n-----END RSA PRIVATE KEY-----",
}


@pytest.mark.parametrize("kind", list(SECRETS))
def test_every_secret_shape_is_masked_and_counted(kind: str) -> None:
    text, count = mask_secrets(f"Dana pasted this by mistake: {SECRETS[kind]} -- please ignore")
    assert count == 1 and SECRETS[kind] not in text and "[REDACTED]" in text
    assert text.startswith("Dana pasted this by mistake: ")


@pytest.mark.parametrize("text", [
    "Northwind Logistics wants 35 Growth seats with the SSO add-on by Q1 2027.",
    "Order 3f9a1c2e-1b2c-4d5e-8f90-123456789abc shipped; invoice INV-2026-00042.",
    "sha256 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "https://northwind.io/pricing/enterprise-plan-2026",
])
def test_ordinary_crm_text_is_left_alone(text: str) -> None:
    assert mask_secrets(text) == (text, 0)


def test_secrets_in_notes_reach_neither_the_provider_nor_the_citations_nor_the_log(
        make_client: Any, provider_settings: dict[str, Any], fake_provider: FakeProviderThread,
        log_file: Path) -> None:
    client = make_client(**provider_settings)
    notes = [f"credential {name}: {value}" for name, value in SECRETS.items()]
    context = {"lead": {**LEAD, "notes": notes}, "emails": [{"from": "dana@northwind.io",
                                                           "body": f"my key is {SECRETS['openai']}"}]}
    r = client.post("/ai/router/v2", json={"query": "what do the notes say about credentials?", "context": context},
                    headers={"X-User-ID": "rep-1"})
    assert r.status_code == 200
    body = r.json()
    assert "secret_masked" in body["safety"]["flags"]
    sent = json.dumps([req.json for req in fake_provider.requests_for("gemini")])
    lines = read_log(log_file, lambda ls: any(x.get("request_id") == body["request_id"] for x in ls))
    logged = log_file.read_text()
    for value in SECRETS.values():
        for piece in (value, value[:20]):
            assert piece not in sent and piece not in r.text and piece not in logged
    line = next(x for x in lines if x.get("request_id") == body["request_id"])
    assert line["crm_masked"] >= len(SECRETS)
