"""One event, one line: no field of any log line can carry a line break into the file, whatever
text outsiders put in a path, a header, a flag's set_by or a provider's error message (issue 19)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi.testclient import TestClient

from app.observability.logging import configure_logging, get_logger, shutdown_logging
from tests.conftest import FakeProviderThread, read_log

# Every character str.splitlines() breaks at, \n aside: JSON escapes the C0 ones, not the others.
BREAKS = "\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"
ADMIN = "admin-token-0123456789"


def lines_of(path: Path) -> list[dict[str, Any]]:
    """Each line of the file as one JSON object, split as Python splits lines."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def test_every_field_of_every_line_is_escaped_by_the_renderer(tmp_path: Path) -> None:
    log_file = tmp_path / "ivy.log"
    configure_logging(log_file, level="INFO", max_bytes=0, backups=0)
    try:
        log = get_logger()
        log.info("plain" + BREAKS, **{"key" + BREAKS: "value" + BREAKS, "nested": {"k": ["a" + BREAKS]}})
        log.warning("caught", error=ValueError("bad" + BREAKS).args[0])
        try:
            raise RuntimeError("boom" + BREAKS)
        except RuntimeError:
            log.exception("with_traceback")
    finally:
        shutdown_logging()
    first, second, third = lines_of(log_file)
    assert first["event"] == "plain" + BREAKS and first["key" + BREAKS] == "value" + BREAKS
    assert first["nested"] == {"k": ["a" + BREAKS]}
    assert second["error"] == "bad" + BREAKS
    assert "boom" + BREAKS in third["exception"]


def test_a_line_the_refusal_guard_re_renders_is_escaped_too(tmp_path: Path) -> None:
    # A "429" in a field of a line not about a refusal (a timestamp's digits, here a count) makes
    # the guard render the line anew: its line breaks must still be escaped.
    log_file = tmp_path / "ivy.log"
    configure_logging(log_file, level="INFO", max_bytes=0, backups=0)
    try:
        get_logger().info("counted", seen="4290 rows" + BREAKS, note="after" + BREAKS)
    finally:
        shutdown_logging()
    (line,) = lines_of(log_file)
    assert line["note"] == "after" + BREAKS and "429" not in log_file.read_text()


def test_stdlib_records_carry_no_unicode_line_breaks(tmp_path: Path, capsys: Any) -> None:
    handler = logging.StreamHandler()  # as uvicorn's own, in place before the app configures logging
    logger = logging.getLogger("uvicorn.error")
    logger.addHandler(handler)
    configure_logging(tmp_path / "ivy.log", level="INFO", max_bytes=0, backups=0)
    try:
        logger.warning("Invalid request from %s", "x\u2028y\x85z\u2029")
    finally:
        logger.removeHandler(handler)
        shutdown_logging()
    assert "Invalid request from x\\u2028y\\u0085z\\u2029" in capsys.readouterr().err.splitlines()


def test_a_request_full_of_line_breaks_logs_one_json_line_per_event(
        make_client: Callable[..., TestClient], fake_provider: FakeProviderThread,
        provider_settings: dict[str, Any], log_file: Path) -> None:
    fake_provider.set_fault("http_error", status=503, message="upstream broke" + BREAKS + "here")
    client = make_client(**provider_settings, ivy_admin_token=ADMIN)
    admin = {"Authorization": f"Bearer {ADMIN}"}
    who = ("rep" + BREAKS).encode("latin-1", "replace")
    r = client.post("/ai/router/v2", json={"query": "what is their budget?", "context": {"lead": {"name": "Dana"}}},
                    headers={"X-User-ID": who, "X-Org-ID": who})
    assert r.status_code == 200 and r.json()["fallback"]["used"] is True
    assert client.get("/missing/" + quote("x" + BREAKS)).status_code == 404
    assert client.put("/admin/flags", json={"IVY_ORGANIC_ENABLED": False, "set_by": "alice" + BREAKS},
                      headers=admin).status_code == 200
    assert client.delete("/admin/flags", params={"set_by": "bob" + BREAKS}, headers=admin).status_code == 200

    read_log(log_file, lambda ls: any(e["event"] == "runtime_flags_reset" for e in ls))
    events = lines_of(log_file)  # json.loads raises on a line split in two
    by_event: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        by_event.setdefault(e["event"], []).append(e)
    assert "/missing/x" + BREAKS in [e["path"] for e in by_event["request"]]
    assert by_event["runtime_flags_changed"][0]["set_by"] == "alice" + BREAKS
    assert by_event["runtime_flags_reset"][0]["set_by"] == "bob" + BREAKS
    assert ["upstream broke" + BREAKS + "here" in e["error"] for e in by_event["provider_call"]] == [True, True]
    assert "\\" in by_event["request"][0]["user_id"]  # shown escaped, as every identity value
