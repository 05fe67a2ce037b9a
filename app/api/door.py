"""The door: the first thing a router request meets (RequestContextMiddleware). A worker that is
full (app/resilience/load.py `Admission`) refuses it here with a fast 503 `overloaded` and
``Retry-After`` (the load balancer tries another host), before a request id is drawn for a context,
a span started, the body read or the rate limiter asked: a shed request spends no limiter token
and only a few µs of the CPU that is short. The answer is the one error shape
(`errors.error_payload`), built once with the request id spliced in; its counters are bound once;
one warning per 10 s carries the counts instead of a line per shed request.
/health, /ai/router/health and /metrics never come to the door."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping

import orjson
from starlette.types import Scope, Send

from app.api.errors import Overloaded, error_payload
from app.observability.greppable import REFUSAL
from app.observability.logging import get_logger
from app.observability.metrics import Metrics
from app.observability.throttle import STORM_WARNING_SECONDS, Throttle
from app.resilience.load import Admission

log = get_logger()

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")  # also what keeps a spliced id valid JSON
_MARK = "\x00request-id\x00"


def new_request_id() -> str:
    """128 random bits as hex (like uuid4().hex, without building a UUID object: measurably cheaper),
    never holding "429", so `grep "429"` cannot match a line through an id we made (0.7% redrawn)."""
    while REFUSAL in (request_id := os.urandom(16).hex()):
        pass
    return request_id


def header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def request_id_of(scope: Scope) -> str:
    """The caller's X-Request-ID when it is a sane one, else a new id."""
    supplied = header(scope, b"x-request-id")
    return supplied if supplied and _REQUEST_ID.match(supplied) else new_request_id()


class Door:
    def __init__(self, admission: Admission, metrics: Metrics, endpoints: Mapping[str, str]) -> None:
        """``endpoints``: the router's paths and their version (router_endpoints.ENDPOINTS), counted apart."""
        self.admission = admission
        retry = admission.retry_after
        error = Overloaded(f"this worker is full; retry in {retry}s (another host may answer)", retry_after=retry)
        self._head, self._tail = orjson.dumps(error_payload(error, _MARK)).split(orjson.dumps(_MARK))
        self._headers = [(b"content-type", b"application/json"), (b"retry-after", str(retry).encode())]
        self._in_flight = metrics.in_flight
        self._counts = {path: metrics.for_shed(version) for path, version in endpoints.items()}
        self._warnings = Throttle(STORM_WARNING_SECONDS)
        self._shed_at_warning = 0

    def enter(self) -> bool:
        """A place for this request (`leave` when it is done), or False: shed it (`shed`)."""
        if not self.admission.try_enter():
            return False
        self._in_flight.inc()
        return True

    def leave(self) -> None:
        self.admission.leave()
        self._in_flight.dec()

    async def shed(self, scope: Scope, send: Send) -> None:
        request_id = request_id_of(scope).encode()
        body = b"".join((self._head, b'"', request_id, b'"', self._tail))
        await send({"type": "http.response.start", "status": Overloaded.status_code,
                    "headers": [*self._headers, (b"content-length", str(len(body)).encode()),
                                (b"x-request-id", request_id)]})
        await send({"type": "http.response.body", "body": body})
        self._counts[scope["path"]].count()
        admission = self.admission
        if self._warnings.ready(time.monotonic()):
            log.warning("admission_shed", code=Overloaded.code, shed_total=admission.shed,
                        shed_since_last_warning=admission.shed - self._shed_at_warning,
                        in_flight=admission.in_flight, **admission.reading())
            self._shed_at_warning = admission.shed
