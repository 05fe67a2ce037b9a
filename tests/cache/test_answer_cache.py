"""The answer cache through the real app, on both backends (in-process and a real Redis): it is
never shared across orgs or leads, never stale after a knowledge-base or prompt change, never holds
a degraded answer, and a Redis outage is no cache rather than an error."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.cache import keys as cache_keys
from tests.conftest import LEAD, LEAD_NO_SCORE, FakeProviderThread, read_log
from tools.ports import free_port

V2 = "/ai/router/v2"
ADMIN = "admin-token-0123456789"
PRODUCT_Q = "do we support SSO with Okta?"
LEAD_Q = "what's their budget?"


def ask(client: TestClient, query: str = PRODUCT_Q, context: dict[str, Any] | None = None, *, org: str = "acme",
        user: str = "rep-1", **headers: str) -> dict[str, Any]:
    r = client.post(V2, json={"query": query, "context": context or {}},
                    headers={"X-User-ID": user, "X-Org-ID": org, **headers})
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def calls(fake: FakeProviderThread) -> int:
    return len(fake.requests_for("gemini")) + len(fake.requests_for("openai"))


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def cached_app(backend: str, make_client: Callable[..., TestClient], provider_settings: dict[str, Any],
               request: pytest.FixtureRequest) -> Callable[..., TestClient]:
    """Apps with the cache on, against the fake provider; with ``backend == "redis"`` they share one Redis."""
    redis = {"redis_url": request.getfixturevalue("redis_url")} if backend == "redis" else {}

    def make(**overrides: Any) -> TestClient:
        client: TestClient = make_client(**{**provider_settings, **redis, "ivy_cache_enabled": True,
                                            "ivy_cache_warmup_per_min": 0, "ivy_admin_token": ADMIN, **overrides})
        return client

    return make


def test_a_repeated_question_is_answered_once_then_from_the_cache(cached_app, fake_provider) -> None:
    app = cached_app()
    first = ask(app)
    second = ask(app)
    assert (first["cache"], second["cache"]) == ("miss", "hit")
    assert calls(fake_provider) == 1
    assert second["answer"] == first["answer"] and second["provider"] == first["provider"]
    assert second["citations"] == first["citations"] and second["fallback"]["used"] is False
    assert second["request_id"] != first["request_id"]
    metrics = app.get("/metrics").text
    assert 'ivy_cache_requests_total{outcome="hit"} 1.0' in metrics
    assert 'ivy_cache_requests_total{outcome="miss"} 1.0' in metrics
    health = app.get("/ai/router/health").json()["cache"]
    assert health["hit_ratio_5m"] == 0.5 and health["entries"] == 1 and health["enabled"] is True


def test_two_orgs_asking_the_same_question_never_share_an_entry(cached_app, fake_provider) -> None:
    app = cached_app()
    assert ask(app, org="acme")["cache"] == "miss"
    assert ask(app, org="globex")["cache"] == "miss"
    assert ask(app, org="globex", user="rep-9")["cache"] == "hit"  # another rep of the same org does share
    assert calls(fake_provider) == 2


def test_the_same_question_about_two_leads_or_changed_notes_never_shares(cached_app, fake_provider) -> None:
    app = cached_app()
    other = {**LEAD_NO_SCORE, "id": "L-2001", "name": "Sam Ortiz", "budget": "$90k"}
    edited = {**LEAD_NO_SCORE, "notes": [*LEAD_NO_SCORE["notes"], "Budget cut to $20k on 11/02"]}
    outcomes = [ask(app, LEAD_Q, {"lead": lead})["cache"] for lead in (LEAD_NO_SCORE, other, edited)]
    assert outcomes == ["miss", "miss", "miss"]
    assert ask(app, LEAD_Q, {"lead": dict(reversed(list(edited.items())))})["cache"] == "hit"  # field order
    assert calls(fake_provider) == 3


def test_a_knowledge_base_edit_is_a_miss(cached_app, fake_provider, tmp_path: Path) -> None:
    kb = tmp_path / "knowledge"
    shutil.copytree(Path("app/knowledge"), kb)
    app = cached_app(ivy_knowledge_dir=kb)
    assert ask(app)["cache"] == "miss"
    assert ask(app)["cache"] == "hit"
    doc = kb / "security-and-sso.md"
    doc.write_text(doc.read_text() + "\n## Okta\n\nOkta SCIM provisioning is in beta since November.\n")
    edited = cached_app(ivy_knowledge_dir=kb)  # the knowledge base is indexed at start
    assert edited.get("/ai/router/health").json()["knowledge_base"]["version"] != \
        app.get("/ai/router/health").json()["knowledge_base"]["version"]
    assert ask(edited)["cache"] == "miss"


def test_a_prompt_version_change_is_a_miss(cached_app, fake_provider, monkeypatch: pytest.MonkeyPatch) -> None:
    app = cached_app()
    assert ask(app)["cache"] == "miss"
    monkeypatch.setattr(cache_keys, "PROMPT_VERSION", "next-version")
    assert ask(app)["cache"] == "miss"
    assert ask(app)["cache"] == "hit"


def test_a_degraded_answer_is_never_cached(cached_app, fake_provider) -> None:
    app = cached_app()
    fake_provider.set_fault("503", provider="gemini")
    first = ask(app)
    assert first["provider"] == "openai" and first["fallback"]["used"] and first["cache"] == "miss"
    fake_provider.clear_faults()
    second = ask(app)  # not served the failover's answer: asked again, and now cached
    assert second["cache"] == "miss" and second["provider"] == "gemini"
    assert ask(app)["cache"] == "hit"


def test_the_offline_provider_and_email_drafts_are_never_cached(cached_app, make_client, backend) -> None:
    app = cached_app()
    draft = ask(app, "draft a follow-up email to dana", {"lead": LEAD})
    assert draft["modal"]["type"] == "email_composer" and draft["cache"] == "bypass"
    assert ask(app, "draft a follow-up email to dana", {"lead": LEAD})["cache"] == "bypass"
    offline = make_client(ivy_cache_enabled=True)  # no provider keys: only `local` answers
    assert [ask(offline)["cache"] for _ in range(2)] == ["bypass", "bypass"]


def test_no_cache_on_the_request_bypasses_the_cache_and_refreshes_it(cached_app, fake_provider) -> None:
    app = cached_app()
    assert ask(app)["cache"] == "miss"
    assert ask(app, **{"Cache-Control": "no-cache"})["cache"] == "bypass"
    assert ask(app)["cache"] == "hit"
    assert calls(fake_provider) == 2


def test_a_lead_insights_answer_is_served_from_the_cache_with_its_panel(cached_app, fake_provider) -> None:
    app = cached_app()
    first = ask(app, "show me this lead's score", {"lead": LEAD})
    second = ask(app, "show me this lead's score", {"lead": LEAD})
    assert (first["cache"], second["cache"]) == ("miss", "hit")
    assert second["modal"] == first["modal"]


def _events(text: str) -> list[str]:
    return [line.removeprefix("event: ") for line in text.splitlines() if line.startswith("event: ")]


def test_a_streamed_request_is_served_from_the_cache_as_a_stream(cached_app, fake_provider) -> None:
    app = cached_app()
    headers = {"X-User-ID": "rep-1", "X-Org-ID": "acme"}
    first = app.post(V2, json={"query": PRODUCT_Q, "stream": True}, headers=headers)
    assert _events(first.text)[0] == "meta" and _events(first.text)[-1] == "done"
    assert '"cache":"miss"' in first.text
    second = app.post(V2, json={"query": PRODUCT_Q, "stream": True}, headers=headers)
    assert _events(second.text) == ["meta", "delta", "done"] and '"cache":"hit"' in second.text
    assert ask(app)["cache"] == "hit"  # and the streamed answer serves a JSON request too
    assert calls(fake_provider) == 1


def test_the_log_line_says_what_the_cache_did(cached_app, fake_provider, log_file: Path) -> None:
    app = cached_app()
    ask(app)
    ask(app)
    lines = read_log(log_file, lambda ls: sum(1 for x in ls if x.get("cache")) >= 2)
    assert [x["cache"] for x in lines if x.get("cache")] == ["miss", "hit"]


def test_admin_purges_one_org_or_everything(cached_app, fake_provider) -> None:
    app = cached_app()
    for org in ("acme", "globex"):
        ask(app, org=org)
    auth = {"Authorization": f"Bearer {ADMIN}"}
    assert app.delete("/admin/cache", params={"org_id": "acme"}).status_code == 401
    r = app.delete("/admin/cache", params={"org_id": "acme", "set_by": "alice"}, headers=auth)
    assert r.status_code == 200 and r.json()["purged"] == 1
    assert ask(app, org="acme")["cache"] == "miss"
    assert ask(app, org="globex")["cache"] == "hit"
    r = app.put("/admin/cache", json={"set_by": "alice"}, headers=auth)
    assert r.status_code == 200 and r.json()["purged"] == 2
    assert [ask(app, org=o)["cache"] for o in ("acme", "globex")] == ["miss", "miss"]


def test_redis_keys_hold_no_identifier_or_question_in_clear(make_client, provider_settings, fake_provider,
                                                          redis_url: str, redis_db: Any) -> None:
    app = make_client(**provider_settings, redis_url=redis_url, ivy_cache_enabled=True)
    ask(app, org="acme-corp", user="dana@northwind.io")
    keys = [k.decode() for k in redis_db.keys("ivy:cache:*")]
    assert keys and not [k for k in keys if any(s in k.lower() for s in ("acme", "dana", "sso", "okta"))]


def test_redis_down_is_no_cache_not_an_error(make_client, provider_settings, fake_provider,
                                             log_file: Path) -> None:
    app = make_client(**provider_settings, redis_url=f"redis://127.0.0.1:{free_port()}/0", ivy_cache_enabled=True)
    bodies = [ask(app) for _ in range(3)]
    assert [b["cache"] for b in bodies] == ["bypass"] * 3 and all(b["provider"] == "gemini" for b in bodies)
    lines = read_log(log_file, lambda ls: any(x.get("event") == "answer_cache_unavailable" for x in ls))
    assert sum(1 for x in lines if x.get("event") == "answer_cache_unavailable") == 1  # one per 10 s
    assert app.get("/ai/router/health").json()["cache"]["backend_errors"] >= 3
    assert 'ivy_cache_requests_total{outcome="bypass"} 3.0' in app.get("/metrics").text
