"""Slow clients and a bounded shutdown, for the server the runbook starts (`python -m uvicorn app.main:app`).

uvicorn (0.30-0.x) has no header or body read timeout and, unless started with
`--timeout-graceful-shutdown`, waits forever on SIGTERM for a client that sent its headers and
part of a body. The runbook restarts with `pkill -TERM -f uvicorn && sleep 5 && python -m uvicorn
...`, with no flag to add, so the app bounds both itself:

- ``find_server()`` finds the running ``uvicorn.Server`` through the SIGTERM handler it installs
  (its bound ``handle_exit``); with another server nothing here runs, and the log says so.
- ``ServerWatch`` looks at uvicorn's connections twice a second: one still sending its request
  headers after IVY_HEADER_TIMEOUT_SECONDS, or its body after IVY_BODY_TIMEOUT_SECONDS, is closed
  (a 499 in the request's log line). Nothing of this runs per request.
- On SIGTERM (uvicorn's ``should_exit``), within IVY_SHUTDOWN_TIMEOUT_SECONDS (T) in all: requests
  in flight go on; clients still sending a request are dropped after 0.5 s; streams still open at
  T - 1.5 s end with ``event: error`` (``code: shutting_down``); at T - 0.5 s every connection left
  is aborted, and uvicorn's own graceful-shutdown timeout (set to T - 0.3 s) cancels what still
  runs. uvicorn closes its listening socket first, so the port is free as soon as it exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator, Callable
from ipaddress import ip_address
from typing import Any

from app.config import Settings
from app.domain import Delta, Event, Failed
from app.observability.logging import get_logger
from app.providers.clock import Alarm

log = get_logger()

TICK_SECONDS = 0.1
SCAN_SECONDS = 0.5
SHUTDOWN_DROP_SENDERS_AFTER = 0.5
STREAM_CUT_BEFORE_END = 1.5
HARD_CUT_BEFORE_END = 0.5
UVICORN_CUT_BEFORE_END = 0.3


def find_server() -> Any | None:
    """The running uvicorn.Server, or None (another server, a test client, no signal handler)."""
    handler = signal.getsignal(signal.SIGTERM)
    server = getattr(handler, "__self__", None)
    try:
        import uvicorn
    except ImportError:  # pragma: no cover - uvicorn is a dependency
        return None
    return server if isinstance(server, uvicorn.Server) else None


def bind_is_loopback(server: Any) -> bool | None:
    """Whether uvicorn listens on loopback only; None when it cannot be told (fd, socket passed in)."""
    config = server.config
    if config.uds:
        return True  # a unix socket: only this host reaches it
    if config.fd is not None:
        return None
    host = str(config.host)
    if host == "localhost":
        return True
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return None


class Drain:
    """What the shutdown tells open streams: ``cut()`` ends each with a `Failed` event
    (``shutting_down``; `event: error` on the wire)."""

    def __init__(self) -> None:
        self.cutting = False
        self._open: set[Alarm] = set()  # one per open stream

    @property
    def open_streams(self) -> int:
        return len(self._open)

    def cut(self) -> None:
        self.cutting = True
        for alarm in list(self._open):
            alarm.ring()

    def guard(self, events: AsyncIterator[Event], request_id: str) -> Guarded:
        """``events`` under the drain: ended with a `Failed` (``shutting_down``) when it cuts."""
        alarm = Alarm()  # rung by `cut` or `Guarded.leave`: one per stream, not a timeout context per event
        self._open.add(alarm)
        if self.cutting:
            alarm.ring()
        return Guarded(self, alarm, events, request_id)

    def closed(self, alarm: Alarm) -> None:
        self._open.discard(alarm)


class Guarded:
    """One stream under the drain, pulled by its response: `first` (before the response starts, so a
    refusal is still an HTTP error), then `frames`, each event recorded and encoded in the same loop
    that waits for it (one generator layer per chunk, not a guard's, an encoder's and a response's).
    `leave` (the client went) ends the stream at once, without a last event. `last`: the frame just
    given is the stream's last word (`done` or `error`), so the response can end with it."""

    __slots__ = ("_alarm", "_drain", "_ended", "_iterator", "_request_id", "gone", "last")

    def __init__(self, drain: Drain, alarm: Alarm, events: AsyncIterator[Event], request_id: str) -> None:
        self._drain, self._alarm, self._request_id = drain, alarm, request_id
        self._iterator = aiter(events)
        self._ended = False
        self.gone = False
        self.last = False

    def leave(self) -> None:
        """The client disconnected: the wait in progress is cancelled (the provider call with it)."""
        self.gone = True
        self._alarm.ring()

    async def first(self) -> Event:
        """The first event (the meta, or a refusal raised as the pipeline raises it)."""
        try:
            try:
                return await self._alarm.wait(anext(self._iterator))
            except TimeoutError:
                if (event := await self._cut()) is not None:
                    return event
            raise RuntimeError("an answer stream ended before its first event")  # the pipeline starts with its meta
        except BaseException:
            self._drain.closed(self._alarm)
            raise

    async def frames(self, encode: Callable[[Event], bytes], record: Callable[[Event], None]) -> AsyncIterator[bytes]:
        """The events after `first`, each passed to ``record`` (the log line) and ``encode``d."""
        iterator, alarm = self._iterator, self._alarm
        try:
            while not self._ended:
                try:
                    event = await alarm.wait(anext(iterator))
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    if (cut := await self._cut()) is None:
                        return
                    event = cut
                record(event)
                self.last = not isinstance(event, Delta)
                yield encode(event)
        finally:
            self._drain.closed(alarm)

    async def _cut(self) -> Event | None:
        """Rung: the events closed (the provider call cancelled with them); a `Failed` to end the
        stream with when the drain cut it, None when the client left."""
        if not (self.gone or self._drain.cutting):
            raise TimeoutError  # not ours: a wait inside timed out
        self._ended = True
        with contextlib.suppress(Exception):
            await self._iterator.aclose()  # type: ignore[attr-defined]
        if self.gone:
            return None
        return Failed("shutting_down", self._request_id, message="the server is restarting; ask again")


class ServerWatch:
    """The watchdog task over one uvicorn.Server's connections (see the module's docstring)."""

    def __init__(self, server: Any, drain: Drain, *, header_timeout: float, body_timeout: float,
                 shutdown_timeout: float) -> None:
        self.server, self.drain = server, drain
        self.header_timeout, self.body_timeout = header_timeout, body_timeout
        self.shutdown_timeout = shutdown_timeout
        self._since: dict[Any, tuple[str, Any, float]] = {}
        configured = server.config.timeout_graceful_shutdown
        backstop = max(shutdown_timeout - UVICORN_CUT_BEFORE_END, 0.1)
        server.config.timeout_graceful_shutdown = backstop if configured is None else min(configured, backstop)

    @staticmethod
    def _stage(conn: Any) -> tuple[str, Any] | None:
        """("headers", cycle) while a request's headers are arriving, ("body", cycle) while its body
        is, None otherwise (idle keep-alive has uvicorn's own timer; responses are not ours to time)."""
        cycle = getattr(conn, "cycle", None)
        if cycle is None or cycle.response_complete:
            if getattr(conn, "timeout_keep_alive_task", None) is None:
                return "headers", cycle
            return None
        if cycle.more_body and not cycle.disconnected:
            return "body", cycle
        return None

    def scan(self, now: float, *, shutting_down: bool = False) -> dict[str, int]:
        """Close the connections over their read timeout; returns the count per stage."""
        dropped = {"headers": 0, "body": 0}
        seen: dict[Any, tuple[str, Any, float]] = {}
        for conn in list(self.server.server_state.connections):
            stage = self._stage(conn)
            if stage is None:
                continue
            name, cycle = stage
            before = self._since.get(conn)
            since = before[2] if before is not None and before[:2] == (name, cycle) else now
            limit = self.header_timeout if name == "headers" else self.body_timeout
            if shutting_down or now - since >= limit:
                conn.transport.close()
                dropped[name] += 1
            else:
                seen[conn] = (name, cycle, since)
        self._since = seen
        return dropped

    async def run(self) -> None:
        next_scan = time.monotonic() + SCAN_SECONDS
        while not self.server.should_exit:
            await asyncio.sleep(TICK_SECONDS)
            now = time.monotonic()
            if now >= next_scan:
                next_scan = now + SCAN_SECONDS
                self._report("slow_clients_dropped", self.scan(now))
        await self._shutdown()

    async def _shutdown(self) -> None:
        started = time.monotonic()
        bound = self.shutdown_timeout
        log.info("shutdown_started", bound_seconds=bound,
                 connections=len(self.server.server_state.connections))
        await asyncio.sleep(SHUTDOWN_DROP_SENDERS_AFTER)
        self._report("slow_clients_dropped", self.scan(time.monotonic(), shutting_down=True), shutting_down=True)
        await self._sleep_until(started + max(bound - STREAM_CUT_BEFORE_END, SHUTDOWN_DROP_SENDERS_AFTER))
        streams = self.drain.open_streams
        self.drain.cut()
        if streams:
            log.warning("shutdown_streams_cut", streams=streams, code="shutting_down")
        await self._sleep_until(started + max(bound - HARD_CUT_BEFORE_END, SHUTDOWN_DROP_SENDERS_AFTER))
        left = list(self.server.server_state.connections)
        for conn in left:
            conn.transport.abort()
        if left:
            log.warning("shutdown_connections_cut", connections=len(left), bound_seconds=bound)

    @staticmethod
    async def _sleep_until(when: float) -> None:
        delay = when - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)

    @staticmethod
    def _report(event: str, dropped: dict[str, int], *, shutting_down: bool = False) -> None:
        if dropped["headers"] or dropped["body"]:
            log.warning(event, sending_headers=dropped["headers"], sending_body=dropped["body"],
                        shutting_down=shutting_down)


def watch_server(s: Settings, drain: Drain) -> ServerWatch | None:
    """The slow-client and shutdown watchdog over uvicorn's connections, and the start-up warning
    when anyone who reaches the port may name themselves (IVY_AUTH_MODE=off on a public address)."""
    server = find_server()
    if server is None:
        log.info("server_watch_unavailable", auth_mode=s.ivy_auth_mode,
                 message="not under uvicorn's own Server: read timeouts, the bounded shutdown and the "
                         "bind-address check are left to the server")
        return None
    loopback = bind_is_loopback(server)
    if s.ivy_auth_mode == "off" and loopback is not True:
        log.warning("auth_off_on_public_address", host=str(server.config.host), auth_mode="off",
                    message="IVY_AUTH_MODE=off and listening beyond loopback: any client can name any "
                            "user with X-User-ID; set IVY_AUTH_MODE=jwt (README: Identity)")
    return ServerWatch(server, drain, header_timeout=s.ivy_header_timeout_seconds,
                       body_timeout=s.ivy_body_timeout_seconds, shutdown_timeout=s.ivy_shutdown_timeout_seconds)
