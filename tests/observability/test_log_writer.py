"""The log writer thread: complete and ordered lines, size rotation as the stdlib does it, logrotate,
and write failures that lose lines but never the writer."""

from __future__ import annotations

import json
import logging.handlers
import shutil
import sys
import time
from collections.abc import Iterator
from io import StringIO
from pathlib import Path

import pytest

from app.observability.logging import configure_logging, get_logger, shutdown_logging
from tests.conftest import read_log

log = get_logger()


@pytest.fixture(autouse=True)
def _stop_writer() -> Iterator[None]:
    yield
    shutdown_logging()


def _ids(path: Path) -> list[int]:
    return [json.loads(line)["i"] for line in path.read_text().splitlines()]


def _log(i: int) -> None:
    log.info("request", i=i, request_id=f"req-{i}", user_id="rep-7", status=200, latency_ms=1.23,
             intent="conversational", model_provider="openai")


def _wait_for_stderr(capsys: pytest.CaptureFixture[str], seen: list[str], text: str) -> str:
    """All stderr so far, once `text` is in it (the console is written after the file)."""
    deadline = time.monotonic() + 3
    while text not in "".join(seen) and time.monotonic() < deadline:
        time.sleep(0.01)
        seen.append(capsys.readouterr().err)
    return "".join(seen)


def test_a_burst_reaches_file_and_stderr_complete_and_in_order_by_shutdown(
    log_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging(log_file, max_bytes=50 * 1024 * 1024, backups=5)
    for i in range(20_000):
        _log(i)
    shutdown_logging()
    assert _ids(log_file) == list(range(20_000))
    first = json.loads(log_file.read_text().splitlines()[0])
    assert set(first) == {"event", "level", "ts", "i", "request_id", "user_id", "status", "latency_ms",
                          "intent", "model_provider"}
    assert (first["event"], first["level"], first["request_id"]) == ("request", "INFO", "req-0")
    assert capsys.readouterr().err == log_file.read_text()  # operators watching stderr see every line


def test_rotation_happens_where_the_stdlib_handler_would_with_the_configured_backups(
    log_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log_file.parent.mkdir(parents=True)
    log_file.write_text("x" * 1499 + "\n")  # left over from the previous run
    configure_logging(log_file, max_bytes=2000, backups=3)
    for i in range(300):  # ~45 KB in batches much larger than max_bytes
        _log(i)
    shutdown_logging()
    lines = capsys.readouterr().err.splitlines(keepends=True)

    # The same lines through a plain RotatingFileHandler, one at a time, must give the same files.
    reference = tmp_path / "reference" / log_file.name
    reference.parent.mkdir()
    reference.write_text("x" * 1499 + "\n")
    handler = logging.handlers.RotatingFileHandler(reference, maxBytes=2000, backupCount=3, encoding="utf-8")
    for line in lines:
        handler.emit(logging.makeLogRecord({"msg": line.rstrip("\n")}))
    handler.close()

    names = ["ai_router.log", "ai_router.log.1", "ai_router.log.2", "ai_router.log.3"]
    assert sorted(p.name for p in log_file.parent.iterdir()) == names
    for name in names:
        assert (log_file.parent / name).read_text() == (reference.parent / name).read_text(), name
        assert 1800 < (log_file.parent / name).stat().st_size < 2000 or name == "ai_router.log"
    kept = [i for name in reversed(names) for i in _ids(log_file.parent / name)]
    assert kept == list(range(300 - len(kept), 300))


def test_without_size_rotation_the_writer_follows_logrotate_moving_the_file(log_file: Path) -> None:
    configure_logging(log_file, max_bytes=0, backups=5)
    _log(0)
    read_log(log_file, lambda ls: len(ls) == 1)
    log_file.rename(log_file.with_suffix(".log.1"))  # what logrotate does
    for i in range(1, 1000):
        _log(i)
    shutdown_logging()
    assert _ids(log_file.with_suffix(".log.1")) == [0]
    assert _ids(log_file) == list(range(1, 1000))


def test_a_write_failure_is_reported_once_per_outage_and_later_lines_still_arrive(
    log_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging(log_file, max_bytes=0, backups=5)
    _log(0)
    read_log(log_file, lambda ls: len(ls) == 1)
    seen: list[str] = []
    shutil.rmtree(log_file.parent)  # the file cannot be reopened, even as root
    _log(1)
    _wait_for_stderr(capsys, seen, '"i":1,')
    _log(2)
    _wait_for_stderr(capsys, seen, '"i":2,')
    log_file.parent.mkdir()
    _log(3)
    read_log(log_file, lambda ls: len(ls) == 1)
    shutil.rmtree(log_file.parent)  # a second outage is said again
    _log(4)
    err = _wait_for_stderr(capsys, seen, '"i":4,')
    log_file.parent.mkdir()
    _log(5)
    shutdown_logging()
    assert _ids(log_file) == [5]
    assert err.count("--- Logging error") == 2 and "FileNotFoundError" in err
    assert [json.loads(x)["i"] for x in err.splitlines() if x.startswith("{")] == [0, 1, 2, 3, 4]


def test_a_broken_stderr_does_not_stop_the_file(log_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    broken = StringIO()
    broken.close()  # like a closed pipe: every write raises
    monkeypatch.setattr(sys, "stderr", broken)
    configure_logging(log_file, max_bytes=50 * 1024 * 1024, backups=5)
    for i in range(100):
        _log(i)
    shutdown_logging()
    assert _ids(log_file) == list(range(100))


@pytest.mark.parametrize(("method", "level"), [("info", "INFO"), ("warning", "WARNING"), ("error", "ERROR")])
def test_a_line_written_from_a_handed_over_dict_is_the_line_the_logger_writes_for_the_same_fields(
        log_file: Path, method: str, level: str) -> None:
    from app.observability.logging import write_line
    from app.observability.redaction import forget_secrets, register_secrets

    secret = "Zq8Lm3Vx9Pw2Rt7Ky4Hb6Nc1"
    register_secrets(secret)
    try:
        configure_logging(log_file, level="WARNING" if method == "warning" else "INFO", max_bytes=0, backups=0)
        fields = {"request_id": "req-1", "status": 200, "note": f"key {secret}", "api_key": "x",
                  "usage": {"input": 1, "refresh_token": 2}, "latency_ms": 1429.37}
        getattr(log, method)("request", **fields)
        write_line(method, "request", dict(fields))
        write_line("debug", "request", dict(fields))  # below the level: dropped, as the logger drops it
        shutdown_logging()
    finally:
        forget_secrets()
    by_logger, by_write_line = log_file.read_text().splitlines()
    assert by_write_line.split('"ts":')[0] == by_logger.split('"ts":')[0]
    assert json.loads(by_write_line)["level"] == level and secret not in by_write_line


def test_each_logger_method_writes_its_level_in_capitals_as_the_runbooks_greps_expect(log_file: Path) -> None:
    configure_logging(log_file, level="DEBUG", max_bytes=0, backups=0)
    methods = ("debug", "info", "warning", "warn", "error", "exception", "critical")
    for method in methods:
        getattr(log, method)("levels", method=method)
    shutdown_logging()
    lines = [json.loads(text) for text in log_file.read_text().splitlines()]
    assert [(x["method"], x["level"]) for x in lines] == [
        ("debug", "DEBUG"), ("info", "INFO"), ("warning", "WARNING"), ("warn", "WARNING"), ("error", "ERROR"),
        ("exception", "ERROR"), ("critical", "CRITICAL")]
