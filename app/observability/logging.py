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

LOGGER_NAME = "ivy"

# Whatever a caller passes, these never reach a log line.
_SECRET_KEYS = re.compile(r"(api[_-]?key|authorization|token|secret|password|x-goog-api-key)", re.I)
_SECRET_VALUES = re.compile(r"(sk-[A-Za-z0-9_\-]{8,}|AIza[0-9A-Za-z_\-]{20,}|Bearer\s+[A-Za-z0-9._\-]+)")


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return _SECRET_VALUES.sub("[REDACTED]", value)
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


def upper_level(_: Any, method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    event_dict["level"] = "WARNING" if method == "warn" else method.upper()
    return event_dict


def _dumps(obj: Any, **_: Any) -> str:
    return orjson.dumps(obj, default=str).decode()


class _Logging:
    """Owns the queue listener so shutdown (and tests re-configuring) can flush and stop it."""

    listener: logging.handlers.QueueListener | None = None


_state = _Logging()


def configure_logging(log_file: Path, *, level: str = "INFO", max_bytes: int, backups: int) -> None:
    shutdown_logging()
    log_file.parent.mkdir(parents=True, exist_ok=True)
    file_handler = logging.handlers.RotatingFileHandler(
        log_file, maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
    )
    console = logging.StreamHandler(sys.stderr)
    for handler in (file_handler, console):
        handler.setFormatter(logging.Formatter("%(message)s"))
    q: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    listener = logging.handlers.QueueListener(q, file_handler, console, respect_handler_level=False)
    listener.start()
    _state.listener = listener

    std = logging.getLogger(LOGGER_NAME)
    std.handlers.clear()
    std.addHandler(_PassThroughQueueHandler(q))
    std.setLevel(level)
    std.propagate = False

    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.filter_by_level,
            upper_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
            structlog.processors.format_exc_info,
            redact_secrets,
            structlog.processors.JSONRenderer(serializer=_dumps),
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


class _PassThroughQueueHandler(logging.handlers.QueueHandler):
    """The message is already a rendered JSON line: enqueue it as is (no re-formatting, no copy)."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record


def shutdown_logging() -> None:
    if _state.listener is not None:
        _state.listener.stop()
        _state.listener = None


def get_logger(**bound: Any) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(LOGGER_NAME, **bound)
    return logger
