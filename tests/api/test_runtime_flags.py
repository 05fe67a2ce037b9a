"""Runtime flags: the admin endpoint changes every worker's behaviour within seconds, no restart."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

from app.config.runtime_flags import POLL_SECONDS
from tests.conftest import LEAD, read_log
from tests.support import uvicorn_server

TOKEN = "admin-token-for-tests-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
EMAIL = {"query": "draft a follow-up email to dana", "context": {"lead": LEAD}}


def test_admin_endpoints_are_off_without_a_token(client) -> None:
    r = client.put("/admin/flags", json={"IVY_MODAL_HEURISTICS": False, "set_by": "me"}, headers=AUTH)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_wrong_or_missing_token_is_refused(make_client) -> None:
    client = make_client(ivy_admin_token=TOKEN)
    body = {"IVY_MODAL_HEURISTICS": False, "set_by": "me"}
    assert client.put("/admin/flags", json=body).status_code == 401
    assert client.put("/admin/flags", json=body, headers={"Authorization": "Bearer nope"}).status_code == 401
    assert client.get("/ai/router/health").json()["flags"]["IVY_MODAL_HEURISTICS"] is True


def test_bad_flag_values_are_a_422(make_client) -> None:
    client = make_client(ivy_admin_token=TOKEN)
    for body in ({"IVY_MODAL_HEURISTICS": "maybe", "set_by": "me"}, {"ACTIVE_MODEL": "foo", "set_by": "me"},
                 {"IVY_NOPE": True, "set_by": "me"}, {"IVY_MODAL_HEURISTICS": False}):
        assert client.put("/admin/flags", json=body, headers=AUTH).status_code == 422, body
    assert client.put("/admin/flags", json={"set_by": "me"}, headers=AUTH).status_code == 400


def test_flipping_modal_heuristics_at_runtime_changes_answers_and_is_shown_and_logged(make_client,
                                                                                      log_file: Path) -> None:
    client = make_client(ivy_admin_token=TOKEN)
    h = {"X-User-ID": "rep-1"}
    assert client.post("/ai/router/v2", json=EMAIL, headers=h).json()["intent"] == "modal"
    r = client.put("/admin/flags", json={"IVY_MODAL_HEURISTICS": False, "set_by": "alice"}, headers=AUTH)
    assert r.status_code == 200
    assert client.post("/ai/router/v2", json=EMAIL, headers=h).json()["intent"] == "conversational"
    health = client.get("/ai/router/health").json()
    assert health["flags"]["IVY_MODAL_HEURISTICS"] is False
    assert health["runtime_flags"]["set_by"] == "alice" and health["runtime_flags"]["set_at"]
    assert health["runtime_flags"]["overridden"] == ["IVY_MODAL_HEURISTICS"]
    lines = read_log(log_file, lambda ls: any(x["event"] == "runtime_flags_changed" for x in ls))
    change = next(x for x in lines if x["event"] == "runtime_flags_changed")
    assert change["set_by"] == "alice" and change["flags"]["IVY_MODAL_HEURISTICS"] is False
    assert TOKEN not in log_file.read_text()

    client.delete("/admin/flags?set_by=alice", headers=AUTH)
    assert client.post("/ai/router/v2", json=EMAIL, headers=h).json()["intent"] == "modal"


def test_active_model_flip_reorders_the_chain(make_client, provider_settings) -> None:
    client = make_client(ivy_admin_token=TOKEN, **provider_settings)
    h = {"X-User-ID": "rep-1"}
    assert client.post("/ai/router/v2", json={"query": "hello"}, headers=h).json()["provider"] == "gemini"
    client.put("/admin/flags", json={"ACTIVE_MODEL": "openai", "set_by": "bob"}, headers=AUTH)
    assert client.post("/ai/router/v2", json={"query": "hello"}, headers=h).json()["provider"] == "openai"
    assert client.get("/ai/router/health").json()["providers"]["chain"] == ["openai", "gemini", "local"]


def _call(base: str, method: str, path: str, body: dict[str, Any] | None = None,
          headers: dict[str, str] | None = None) -> dict[str, Any]:
    req = urllib.request.Request(base + path, data=json.dumps(body).encode() if body else None, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    with urllib.request.urlopen(req, timeout=10) as r:
        result: dict[str, Any] = json.loads(r.read())
        return result


def test_a_flip_reaches_both_workers_without_a_restart(redis_url: str, tmp_path: Path) -> None:
    env = {"REDIS_URL": redis_url, "IVY_ADMIN_TOKEN": TOKEN, "AI_RATE_LIMIT_PER_MIN": "100000",
           "IVY_LOG_FILE": str(tmp_path / "ai_router.log")}
    with uvicorn_server(env, workers=2) as base:
        def intents(n: int) -> set[str]:
            return {_call(base, "POST", "/ai/router/v2", EMAIL, {"X-User-ID": f"r{i}"})["intent"] for i in range(n)}

        assert intents(20) == {"modal"}
        _call(base, "PUT", "/admin/flags", {"IVY_MODAL_HEURISTICS": False, "set_by": "carol"}, AUTH)
        deadline = time.monotonic() + 10
        # The other worker catches up at its next poll. Twenty requests can all land on one worker
        # (the kernel spreads connections, it does not alternate), so wait past one poll interval too.
        flipped_at = None
        while flipped_at is None or time.monotonic() - flipped_at < POLL_SECONDS + 0.5:
            assert time.monotonic() < deadline, "the flip did not reach every worker within 10 s"
            if intents(20) != {"conversational"}:
                flipped_at = None
            elif flipped_at is None:
                flipped_at = time.monotonic()
            time.sleep(0.5)
        assert intents(40) == {"conversational"}  # ...and stays flipped, whichever worker answers
        health = _call(base, "GET", "/ai/router/health")
        assert health["runtime_flags"]["scope"] == "fleet (redis)" and health["runtime_flags"]["set_by"] == "carol"

