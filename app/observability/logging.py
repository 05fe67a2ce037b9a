"""Structured JSON logs to `logs/ai_router.log` and the console.

The runbook greps this file (`grep WARN`, `grep ERROR`, `grep "429"`, `grep circuit_breaker`,
`grep model_provider`, `grep "p95\\|p99"`), so level names are capitals and every event is
one JSON line. Lines are rendered on the caller's thread (cheap) and written by a background
listener thread, so a slow disk never stalls the event loop.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import logging
import logging.handlers
import os
import queue
import re
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping, MutableMapping
from enum import Enum
from pathlib import Path
from typing import Any, TextIO

import orjson
import structlog
from structlog.typing import FilteringBoundLogger, Processor

from app.observability import greppable
from app.observability.redaction import FRAGMENT, has_secrets, redact, redact_fragments, redacts_nothing
from app.observability.tracing import add_trace_ids

LOGGER_NAME = "ivy"

# Whatever a caller passes, these never reach a log line.
_SECRET_KEYS = re.compile(r"(api[_-]?key|authorization|token|secret|password|x-goog-api-key)", re.I)
_SHAPE_MARKERS = ("sk-", "AIza", "Bearer")


@functools.lru_cache(maxsize=4096)
def _is_secret_key(key: str) -> bool:
    # Log lines reuse a few dozen field names: the regex runs once per name, not per line.
    return _SECRET_KEYS.search(key) is not None


_KEY_SHAPES_KEPT = 512  # a line's fields in order; the app's log calls make a few dozen
_secret_keys_by_shape: dict[tuple[str, ...], tuple[str, ...]] = {}


def _secret_keys(keys: tuple[str, ...]) -> tuple[str, ...]:
    """Which of a line's field names are secret, looked up once per set of names (one tuple
    lookup, not one cached call per field); past _KEY_SHAPES_KEPT shapes, computed each time."""
    found = _secret_keys_by_shape.get(keys)
    if found is None:
        found = tuple(k for k in keys if _is_secret_key(str(k)))
        if len(_secret_keys_by_shape) < _KEY_SHAPES_KEPT:
            _secret_keys_by_shape[keys] = found
    return found


# Values no secret can be in: numbers, flags, None, and the enums' own names (checked apart).
_PLAIN = frozenset({int, float, bool, type(None)})


def _redact_value(value: Any, scrub: Callable[[str], str]) -> Any:
    # Per request line this runs a dozen times on the event loop: the common cases (numbers,
    # None, short strings) return before any regex or recursion. No secret is under 8 characters.
    if isinstance(value, str):
        if len(value) < FRAGMENT or (not has_secrets() and not any(m in value for m in _SHAPE_MARKERS)):
            return value
        return scrub(value)
    if type(value) in _PLAIN:
        return value
    if type(value) is dict:  # before the Mapping ABC's slower isinstance: a line's usage, its headers
        secret = _secret_keys(tuple(value))
        return {k: "[REDACTED]" if secret and k in secret else v if type(v) in _PLAIN else _redact_value(v, scrub)
                for k, v in value.items()}
    if isinstance(value, int | float):
        return value
    if isinstance(value, Mapping):
        return {k: "[REDACTED]" if _is_secret_key(str(k)) else _redact_value(v, scrub) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(v, scrub) for v in value]
    return value


def redact_secrets(_: Any, method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Every configured secret out of every value; on WARNING and ERROR lines (error texts, tracebacks)
    also any 8+ character run of one, in case something upstream cut or masked it."""
    secret = _secret_keys(tuple(event_dict))
    if _LEVELS.get(method, 20) >= 30:  # fragments (WARNING and up) are looked for value by value
        for key, value in event_dict.items():  # values replaced in place: no key is added or removed
            if not (type(value) in _PLAIN or isinstance(value, Enum) or (secret and key in secret)):
                event_dict[key] = _redact_value(value, redact_fragments)
    else:
        # An INFO line's top-level strings are asked at once whether `redact` would change any of
        # them (one RE2 pass, not one substitution each); one walk finds them and what else to walk.
        texts, text_keys, others = [], [], []
        for key, value in event_dict.items():
            kind = type(value)
            if kind is str:
                if len(value) >= FRAGMENT:
                    texts.append(value)
                    text_keys.append(key)
            elif not (kind in _PLAIN or isinstance(value, Enum)):
                others.append(key)
        if texts and not redacts_nothing("\n".join(texts)):
            others.extend(text_keys)
        for key in others:
            if not (secret and key in secret):
                event_dict[key] = _redact_value(event_dict[key], redact)
    for key in secret:
        event_dict[key] = "[REDACTED]"
    return event_dict


class _RedactingFilter(logging.Filter):
    """For the stdlib loggers we do not format (uvicorn's, asyncio's): the rendered message and
    traceback, with every secret removed, replace the record's own."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()
            record.exc_info, record.exc_text = None, None
        # A traceback keeps its own lines; what came from outside cannot add Unicode ones.
        record.msg, record.args = _escape_line_breaks(redact_fragments(message)), ()
        return True


_REDACTING_FILTER = _RedactingFilter()


def _filter_stdlib_handlers() -> None:
    handlers = [logging.lastResort] if logging.lastResort is not None else []
    for name in ("", "uvicorn", "uvicorn.error", "uvicorn.access", "asyncio"):
        handlers.extend(logging.getLogger(name).handlers)
    for handler in handlers:
        if _REDACTING_FILTER not in handler.filters:
            handler.addFilter(_REDACTING_FILTER)


# JSON escapes every control character (\n, \r, \v, \f, \x1c-\x1e among them) but not these three,
# which str.splitlines() and many log tools also read as line breaks: escaped here, in the one
# place every line is rendered, so no field of any line can split it.
_LINE_BREAKS = (("\x85", "\\u0085"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029"))


def _escape_line_breaks(text: str) -> str:
    """``text`` with U+0085, U+2028 and U+2029 written as JSON escapes (a fast path for ASCII)."""
    if text.isascii():
        return text
    for raw, escaped in _LINE_BREAKS:
        if raw in text:
            text = text.replace(raw, escaped)
    return text


def _render(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> str:
    """The line as JSON (the chain's last step, as JSONRenderer(serializer=...) was, one call fewer).
    greppable.guard: `grep "429"` and `grep -i error` match only the lines they are for.
    Escaped after the guard: a line it re-renders (a "429" in a timestamp) is escaped too."""
    return _escape_line_breaks(greppable.guard(event_dict, orjson.dumps(event_dict, default=str).decode()))


class _Stamp:
    """`ts` as structlog's TimeStamper(fmt="iso", utc=True) writes it (`2026-12-07T23:06:09.732832Z`,
    no fraction at .000000), the date and time of day formatted once a second, not per line."""

    def __init__(self, clock_ns: Callable[[], int] = time.time_ns) -> None:
        self.clock_ns = clock_ns
        self.second: tuple[int, str] = (-1, "")  # replaced whole: a thread reads one or the other

    def __call__(self, _: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        # Floored to the microsecond, as datetime.now() is.
        second, micro = divmod(self.clock_ns() // 1000, 1_000_000)
        cached = self.second
        if cached[0] != second:
            text = datetime.datetime.fromtimestamp(second, datetime.UTC).replace(tzinfo=None).isoformat()
            cached = self.second = (second, text)
        event_dict["ts"] = f"{cached[1]}.{micro:06d}Z" if micro else f"{cached[1]}Z"
        return event_dict


_LEVELS = {"debug": 10, "info": 20, "warning": 30, "warn": 30, "error": 40, "exception": 40, "critical": 50}
_LEVEL_NAMES = {"debug": "DEBUG", "info": "INFO", "warning": "WARNING", "warn": "WARNING", "error": "ERROR",
                "exception": "ERROR", "critical": "CRITICAL"}


class _LineSink:
    """Where rendered lines go: a queue drained by a writer thread (file and console).

    structlog caches loggers that point here, so reconfiguring swaps the queue and level inside
    this one object instead of creating a new sink the cached loggers would never see.
    """

    def __init__(self) -> None:
        self.queue: queue.SimpleQueue[str | None] | None = None
        self.level = logging.INFO
        self.writer: _Writer | None = None
        self.processors: list[Processor] | None = None  # configure_logging's chain, for `write_line`

    def msg(self, line: str) -> None:
        if self.queue is not None:
            self.queue.put_nowait(line)

    debug = info = warning = warn = error = exception = critical = msg


_sink = _LineSink()


def _drop_below_level(_: Any, method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    if _LEVELS.get(method, 20) < _sink.level:
        raise structlog.DropEvent
    event_dict["level"] = _LEVEL_NAMES.get(method) or method.upper()
    return event_dict


class _Writer(threading.Thread):
    """Writes queued lines to the file and the console, a batch at a time.

    It shares the GIL with the event loop, so the per-line work is a list append: the size and
    logrotate checks, the write and the flush happen once per batch and destination, using the
    stdlib handlers' own rollover and reopen. After a batch it rests ``rest_seconds``: a line put
    while it rests wakes no thread (a put to a blocked reader is a futex wake and a GIL hand-over,
    per request), and the next batch takes them all. A line after a quiet spell is written at once,
    one close behind another at most ``rest_seconds`` late. The busier the loop, the bigger (and
    cheaper per line) the batches. `None` on the queue means: write what came before it, then stop.
    """

    max_batch = 1000  # bounds what one batch holds in memory (~250 KB of request lines)
    rest_seconds = 0.02

    def __init__(self, lines: queue.SimpleQueue[str | None], file: logging.FileHandler,
                 console: logging.StreamHandler[TextIO]) -> None:
        super().__init__(name="ivy-log-writer", daemon=True)
        self.lines, self.file, self.console = lines, file, console
        self.failing: set[logging.Handler] = set()

    def run(self) -> None:
        while True:
            batch: list[str] = []
            line = self.lines.get()
            with contextlib.suppress(queue.Empty):
                while line is not None:
                    batch.append(line)
                    if len(batch) == self.max_batch:
                        break
                    line = self.lines.get_nowait()
            if batch:
                batch.append("")  # so the joined text ends with a newline too
                text = "\n".join(batch)
                self._emit(self.file, self._write_file, text)
                self._emit(self.console, self._write_console, text)
            if line is None:
                with contextlib.suppress(OSError):  # a failing disk was reported already
                    self.file.close()
                return
            time.sleep(self.rest_seconds)

    def _emit(self, handler: logging.Handler, write: Callable[[str], None], text: str) -> None:
        handler.acquire()  # logging.shutdown() at exit flushes and closes handlers under this lock
        try:
            write(text)
        except Exception as exc:
            # A full disk or a vanished directory loses this batch, not the thread. Said once per
            # outage rather than per batch (as Handler.handleError would), not to flood stderr.
            if handler not in self.failing:
                self.failing.add(handler)
                with contextlib.suppress(Exception):
                    print(f"--- Logging error in {handler!r}, reported once until it recovers ---", file=sys.stderr)
                    traceback.print_exception(exc, file=sys.stderr)
        else:
            self.failing.discard(handler)
        finally:
            handler.release()

    def _write_console(self, text: str) -> None:
        self.console.stream.write(text)
        self.console.stream.flush()

    def _write_file(self, text: str) -> None:
        handler = self.file
        if isinstance(handler, logging.handlers.WatchedFileHandler):
            handler.reopenIfNeeded()  # logrotate moved the file: write to the new one
        if handler.stream is None:  # a reopen or a rollover failed last time: try again, as FileHandler.emit does
            handler.stream = handler._open()
        if isinstance(handler, logging.handlers.RotatingFileHandler) and handler.backupCount > 0:
            # Roll over where RotatingFileHandler would, line by line: before the line that would
            # take the file to maxBytes; a deleted file too, but never /dev/null and the like
            # (bpo-45401). seek, not tell: the file may have been truncated behind our back.
            name = handler.baseFilename
            while (pos := handler.stream.seek(0, 2)) + len(text) >= handler.maxBytes and (
                os.path.isfile(name) or not os.path.exists(name)
            ):
                # The lines that keep the file under maxBytes (none if it is there already).
                fits = text.rfind("\n", 0, max(handler.maxBytes - pos - 1, 0)) + 1
                if fits == 0 and pos == 0:  # one line alone reaches maxBytes: it gets a file to itself
                    fits = text.index("\n") + 1
                handler.stream.write(text[:fits])
                handler.doRollover()
                text = text[fits:]
        handler.stream.write(text)
        handler.stream.flush()


def configure_logging(log_file: Path, *, level: str = "INFO", max_bytes: int, backups: int) -> None:
    shutdown_logging()
    log_file.parent.mkdir(parents=True, exist_ok=True)
    file_handler: logging.FileHandler
    if max_bytes > 0:
        file_handler = logging.handlers.RotatingFileHandler(
            log_file, maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
        )
    else:
        # Several workers must not each rotate the same file: leave rotation to logrotate, and
        # reopen the file when logrotate moves it.
        file_handler = logging.handlers.WatchedFileHandler(log_file, encoding="utf-8")
    lines: queue.SimpleQueue[str | None] = queue.SimpleQueue()
    writer = _Writer(lines, file_handler, logging.StreamHandler(sys.stderr))
    writer.start()
    _sink.queue, _sink.writer, _sink.level = lines, writer, logging.getLevelName(level)
    # Our JSON `request` line carries everything uvicorn's access line does, and more.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    _filter_stdlib_handlers()

    processors: list[Processor] = [
        _drop_below_level,
        _Stamp(),
        structlog.processors.format_exc_info,
        redact_secrets,
        add_trace_ids,  # after redaction: ids are hex of ours or a validated traceparent's, never a secret
        _render,
    ]
    _sink.processors = processors
    structlog.configure(
        processors=processors,
        logger_factory=lambda *_: _sink,
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        cache_logger_on_first_use=True,
    )


def shutdown_logging() -> None:
    """Write everything queued, close the file and stop the writer thread."""
    lines, writer = _sink.queue, _sink.writer
    if lines is not None and writer is not None:
        _sink.queue = _sink.writer = None  # lines logged from here on are dropped, not left queued
        lines.put(None)
        writer.join()


def write_line(method: str, event: str, fields: dict[str, Any]) -> None:
    """The line `get_logger().<method>(event, **fields)` writes, from a dict the caller hands over:
    for the line every request writes, without structlog's wrapper calls and their copies of it."""
    processors = _sink.processors  # the chain structlog runs too: configure_logging is its one configurer
    if processors is None:
        getattr(get_logger(), method)(event, **fields)  # not configured yet: structlog's defaults
        return
    event_dict: Any = fields
    event_dict["event"] = event
    try:
        for processor in processors:
            event_dict = processor(_sink, method, event_dict)
    except structlog.DropEvent:
        return
    _sink.msg(event_dict)


def get_logger(**bound: Any) -> FilteringBoundLogger:
    logger: FilteringBoundLogger = structlog.get_logger(LOGGER_NAME, **bound)
    return logger
