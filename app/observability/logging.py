"""Structured JSON logs to `logs/ai_router.log` and the console.

The runbook greps this file (`grep WARN`, `grep ERROR`, `grep "429"`, `grep circuit_breaker`,
`grep model_provider`, `grep "p95\\|p99"`), so level names are capitals and every event is
one JSON line. Lines are rendered on the caller's thread (cheap) and written by a background
listener thread, so a slow disk never stalls the event loop.
"""

from __future__ import annotations

import logging
import logging.handlers
import queue
import re
import sys
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Any

import orjson
import structlog
from structlog.typing import FilteringBoundLogger

LOGGER_NAME = "ivy"

# Whatever a caller passes, these never reach a log line.
_SECRET_KEYS = re.compile(r"(api[_-]?key|authorization|token|secret|password|x-goog-api-key)", re.I)
_SECRET_VALUES = re.compile(r"(sk-[A-Za-z0-9_\-]{8,}|AIza[0-9A-Za-z_\-]{20,}|Bearer\s+[A-Za-z0-9._\-]+)")


_SECRET_HINTS = ("sk-", "AIza", "Bearer")


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        # The regex only when a value could hold a key: most log values are short ids and numbers.
        return _SECRET_VALUES.sub("[REDACTED]", value) if any(h in value for h in _SECRET_HINTS) else value
    if isinstance(value, Mapping):
        return {k: "[REDACTED]" if _SECRET_KEYS.search(str(k)) else _redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(v) for v in value]
    return value


def redact_secrets(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in list(event_dict):
        if _SECRET_KEYS.search(key):
            event_dict[key] = "[REDACTED]"
        else:
            event_dict[key] = _redact_value(event_dict[key])
    return event_dict


def _dumps(obj: Any, **_: Any) -> str:
    return orjson.dumps(obj, default=str).decode()


_LEVELS = {"debug": 10, "info": 20, "warning": 30, "warn": 30, "error": 40, "exception": 40, "critical": 50}
_LEVEL_NAMES = {"warn": "WARNING", "exception": "ERROR"}


class _LineSink:
    """Where rendered lines go: a queue drained by a writer thread (file and console).

    structlog caches loggers that point here, so reconfiguring swaps the queue and level inside
    this one object instead of creating a new sink the cached loggers would never see.
    """

    def __init__(self) -> None:
        self.queue: queue.SimpleQueue[str] | None = None
        self.level = logging.INFO
        self.listener: logging.handlers.QueueListener | None = None

    def msg(self, line: str) -> None:
        if self.queue is not None:
            self.queue.put_nowait(line)

    debug = info = warning = warn = error = exception = critical = msg


_sink = _LineSink()


def _drop_below_level(_: Any, method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    if _LEVELS.get(method, 20) < _sink.level:
        raise structlog.DropEvent
    event_dict["level"] = _LEVEL_NAMES.get(method, method.upper())
    return event_dict


class _LineListener(logging.handlers.QueueListener):
    """Turns queued lines into LogRecords on the writer thread, so the event loop never builds one."""

    def prepare(self, record: Any) -> logging.LogRecord:
        return logging.makeLogRecord({"msg": record, "levelno": logging.INFO, "levelname": "INFO"})


def configure_logging(log_file: Path, *, level: str = "INFO", max_bytes: int, backups: int) -> None:
    shutdown_logging()
    log_file.parent.mkdir(parents=True, exist_ok=True)
    file_handler: logging.Handler
    if max_bytes > 0:
        file_handler = logging.handlers.RotatingFileHandler(
            log_file, maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
        )
    else:
        # Several workers must not each rotate the same file: leave rotation to logrotate, and
        # reopen the file when logrotate moves it.
        file_handler = logging.handlers.WatchedFileHandler(log_file, encoding="utf-8")
    console = logging.StreamHandler(sys.stderr)
    for handler in (file_handler, console):
        handler.setFormatter(logging.Formatter("%(message)s"))
    lines: queue.SimpleQueue[str] = queue.SimpleQueue()
    listener = _LineListener(lines, file_handler, console, respect_handler_level=False)
    listener.start()
    _sink.queue, _sink.listener, _sink.level = lines, listener, logging.getLevelName(level)
    # Our JSON `request` line carries everything uvicorn's access line does, and more.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)

    structlog.configure(
        processors=[
            _drop_below_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
            structlog.processors.format_exc_info,
            redact_secrets,
            structlog.processors.JSONRenderer(serializer=_dumps),
        ],
        logger_factory=lambda *_: _sink,
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        cache_logger_on_first_use=True,
    )


def shutdown_logging() -> None:
    """Flush what is queued and stop the writer thread."""
    if _sink.listener is not None:
        _sink.listener.stop()
        _sink.listener = None
        _sink.queue = None


def get_logger(**bound: Any) -> FilteringBoundLogger:
    logger: FilteringBoundLogger = structlog.get_logger(LOGGER_NAME, **bound)
    return logger
